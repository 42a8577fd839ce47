"""contrib/: the Grafana dashboard and the Prometheus alert rules name only metrics the
node exports; promtool accepts the rules (and their unit tests) and a live /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trio
import yaml

from node.metrics import Metrics
from tests.web.apphelpers import Harness, live_server
from web.security import Role

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "rota.json"
ALERTS = CONTRIB / "prometheus" / "rota-alerts.yml"
ALERT_TESTS = CONTRIB / "prometheus" / "rota-alerts.test.yml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)


def exported_series() -> set[str]:
    """Every series name a node's /metrics can carry (by metric type)."""
    names = set()
    for family in Metrics(version="test").registry.collect():
        if family.name.startswith("rota_"):
            names |= {family.name + s for s in SUFFIXES[family.type]}
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\brota_[a-z_]+\b", expr))


def _panels(dashboard: dict[str, object]) -> list[dict[str, object]]:
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_takes_a_datasource_input_and_instance_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"instance", "job"} <= set(variables)
    assert variables["instance"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels) >= 15
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_dashboard_names_only_exported_metrics_and_shows_each_spec_metric() -> None:
    exported = exported_series()
    used: set[str] = set()
    for panel in _panels(json.loads(DASHBOARD.read_text())):
        for target in panel["targets"]:
            names = named_metrics(target["expr"])
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    spec = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    assert spec <= families, f"metrics with no panel: {sorted(spec - families)}"


def test_alert_rules_name_only_exported_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {
        "RotaNoLeader",
        "RotaFrequentLeaderChanges",
        "RotaSlowFsync",
        "RotaMissedFires",
        "RotaStuckRuns",
    } <= alerts
    for rule in rules:
        names = named_metrics(rule["expr"])
        assert names and names <= exported_series(), (rule["alert"], names)
        assert rule["labels"]["severity"] in ("warning", "critical")


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", ALERTS.name], ["test", "rules", ALERT_TESTS.name]):
        result = subprocess.run(
            ["promtool", *args],
            cwd=ALERTS.parent,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@needs_promtool
async def test_promtool_accepts_a_live_metrics_endpoint() -> None:
    h = Harness()
    await h.call("GET", "/api/v1/cluster", role=Role.VIEWER)  # some HTTP series too
    with trio.fail_after(20):
        async with live_server(h.app) as url:
            request = urllib.request.Request(url + "/metrics", headers=h.auth(Role.VIEWER))
            body = await trio.to_thread.run_sync(_read, request)
        result = await trio.run_process(
            ["promtool", "check", "metrics"], stdin=body, capture_stdout=True, check=False
        )
    assert b"rota_raft_term" in body and b"rota_http_requests_total" in body
    assert result.returncode == 0 and result.stdout.strip() == b"", result.stdout


def _read(request: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())
