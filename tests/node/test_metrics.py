"""Every metric of SPEC.md exists with its type and labels; the exposition passes promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

from node.metrics import HTTP_ROUTES_MAX, OTHER, Metrics

# name -> (type, label names); the SPEC "Metrics" list.
SPEC_METRICS: dict[str, tuple[str, set[str]]] = {
    "rota_raft_term": ("gauge", set()),
    "rota_raft_is_leader": ("gauge", set()),
    "rota_raft_has_leader": ("gauge", set()),
    "rota_raft_leader_changes_total": ("counter", set()),
    "rota_raft_commit_index": ("gauge", set()),
    "rota_raft_applied_index": ("gauge", set()),
    "rota_raft_proposals_total": ("counter", {"outcome"}),
    "rota_raft_append_batch_entries": ("histogram", set()),
    "rota_storage_fsync_duration_seconds": ("histogram", set()),
    "rota_fires_total": ("counter", set()),
    "rota_fire_lateness_seconds": ("histogram", set()),
    "rota_fire_applied_lateness_seconds": ("histogram", set()),
    "rota_misfires_total": ("counter", {"policy"}),
    "rota_runs_total": ("counter", {"outcome"}),
    "rota_run_start_delay_seconds": ("histogram", set()),
    "rota_queue_depth": ("gauge", {"priority"}),
    "rota_runs_running": ("gauge", set()),
    "rota_steals_total": ("counter", {"direction"}),
    "rota_members": ("gauge", {"state"}),
    "rota_http_requests_total": ("counter", {"route", "method", "code"}),
    "rota_http_request_duration_seconds": ("histogram", {"route"}),
    "rota_build_info": ("gauge", {"version"}),
}
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def exercised() -> str:
    m = Metrics(version="1.2.3")
    m.observe_leader("n1", self_id="n1")
    m.proposal("committed")
    m.raft_append_batch_entries.observe(64)
    m.storage_fsync_duration.observe(0.002)
    m.fires.inc()
    m.fire_lateness.observe(0.05)
    m.misfire("run_all", slots=3)
    m.run_finished("timed_out")
    m.run_start_delay.observe(0.2)
    m.set_queue_depth(9, 4)
    m.runs_running.set(2)
    m.steal("in", 5)
    m.set_members({"alive": 3, "suspect": 1})
    m.observe_http("/api/v1/cluster", "GET", 200, 0.003)
    return m.render()[0].decode()


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names seen on its samples)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    found: dict[str, tuple[str, set[str]]] = {}
    for name, kind in types.items():
        labels: set[str] = set()
        for sample in re.findall(rf"^{name}(?:{'|'.join(SUFFIXES)})?(?:{{(.*?)}})? ", text, re.M):
            labels |= set(re.findall(r'(\w+)="', sample)) - {"le"}
        found[name] = (kind, labels)
    return found


def test_every_spec_metric_has_its_type_help_and_labels() -> None:
    text = exercised()
    found = families(text)
    for name, (kind, labels) in SPEC_METRICS.items():
        assert found.get(name) == (kind, labels), (name, found.get(name))
        assert re.search(rf"^# HELP {name} \S", text, re.M), name
    assert "_created" not in text
    assert 'rota_build_info{version="1.2.3"} 1.0' in text
    assert 'rota_misfires_total{policy="run_all"} 3.0' in text
    assert 'rota_queue_depth{priority="9"} 4.0' in text
    assert 'rota_members{state="dead"} 0.0' in text


def test_labelled_series_exist_before_first_use() -> None:
    text = Metrics().render()[0].decode()
    assert 'rota_raft_proposals_total{outcome="not_leader"} 0.0' in text
    assert len(re.findall(r"^rota_queue_depth\{", text, re.M)) == 10
    assert 'rota_steals_total{direction="out"} 0.0' in text


def test_unknown_label_values_are_bugs() -> None:
    m = Metrics()
    calls: list[Callable[[], None]] = [
        lambda: m.proposal("maybe"),
        lambda: m.misfire("sometimes"),
        lambda: m.run_finished("exploded"),
        lambda: m.set_queue_depth(10, 1),
        lambda: m.steal("sideways", 1),
        lambda: m.set_members({"zombie": 1}),
    ]
    for call in calls:
        with pytest.raises(AssertionError):
            call()


def test_leader_changes_count_new_leaders_only() -> None:
    m = Metrics()
    for leader in ("n1", "n1", None, "n1", "n2", "n2"):
        m.observe_leader(leader, self_id="n2")
    text = m.render()[0].decode()
    assert "rota_raft_leader_changes_total 3.0" in text  # None->n1, None->n1, n1->n2
    assert "rota_raft_is_leader 1.0" in text and "rota_raft_has_leader 1.0" in text


def test_http_labels_stay_bounded_whatever_the_caller_sends() -> None:
    m = Metrics()
    for i in range(HTTP_ROUTES_MAX + 20):
        m.observe_http(f"/route/{i}", "BREW" if i % 2 else "GET", 999 if i == 0 else 200, 0.001)
    text = m.render()[0].decode()
    routes = set(re.findall(r'^rota_http_requests_total\{.*?route="([^"]*)"', text, re.M))
    assert len(routes) == HTTP_ROUTES_MAX + 1 and OTHER in routes
    methods = set(re.findall(r'^rota_http_requests_total\{.*?method="([^"]*)"', text, re.M))
    assert methods == {"GET", "OTHER"}
    assert 'code="other"' in text


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.fires.inc()
    assert "rota_fires_total 1.0" in a.render()[0].decode()
    assert "rota_fires_total 0.0" in b.render()[0].decode()


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus)",
)
def test_promtool_accepts_the_exposition() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exercised().encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "", result.stdout.decode()
