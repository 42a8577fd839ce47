"""Helpers for the sections that drive real local clusters (``node.devcluster``):
start one with extra agent flags, mint tokens, scrape metrics, wait for replicas,
read an agent's memory, page through runs.

Rules: every wait has a deadline; nothing here measures, the sections do.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from bench.core import Labels, metric_samples
from bench.load import Request
from node import auth
from node.devcluster import LocalCluster

# An agent's own API limits would measure the limiter, not the path: a bench cluster
# turns the per-token rate limit off (0 disables it, node/config.py).
BENCH_FLAGS: Mapping[str, str] = {"rate_limit_per_s": "0"}
CATCH_UP_TIMEOUT_S = 120.0
PAGE_LIMIT = 500  # node.queries.PAGE_SIZE_MAX


def agent_flags(settings: Mapping[str, object]) -> list[str]:
    """``{"worker_slots": 0}`` -> ``["--worker-slots", "0"]`` (every config key is a flag)."""
    argv: list[str] = []
    for key, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        argv += ["--" + key.replace("_", "-"), text]
    return argv


def start_cluster(
    workdir: Path,
    http_port: int,
    settings: Mapping[str, object],
    nodes: int = 3,
    per_node: Mapping[str, Mapping[str, object]] | None = None,
) -> LocalCluster:
    """A started cluster of ``nodes`` agents with config ``settings`` (over
    ``BENCH_FLAGS``; ``per_node`` over both, by node name), with a leader that every
    node agrees on. The caller stops it."""
    c = LocalCluster(
        workdir,
        nodes,
        http_port,
        extra_args=agent_flags({**BENCH_FLAGS, **settings}),
        node_args={name: agent_flags(s) for name, s in (per_node or {}).items()},
    )
    c.start()
    try:
        c.wait_leader()
    except BaseException:
        c.stop()
        raise
    return c


def token(c: LocalCluster, role: str) -> str:
    """A token of ``role`` signed with the cluster's dev signing key, valid a day."""
    return auth.mint_token_from_files(auth.ensure_dev_secrets(c.secrets_dir), role, 86_400)


def request(c: LocalCluster, name: str, method: str, path: str, role: str) -> Request:
    return Request(c.nodes[name].api, method, path, token(c, role))


def metrics_text(c: LocalCluster, name: str) -> str:
    req = urllib.request.Request(
        c.nodes[name].api + "/metrics", headers={"Authorization": f"Bearer {c.admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def metric_samples_of(c: LocalCluster, name: str, metric: str) -> list[tuple[Labels, float]]:
    """The samples of ``metric`` on node ``name``, with their labels."""
    return metric_samples(metrics_text(c, name), metric)


def applied_index(c: LocalCluster, name: str) -> int:
    v = c.cluster_view(name)
    if not v:
        return -1
    me = [m for m in v["members"] if m["id"] == name]  # type: ignore[attr-defined]
    return int(me[0]["applied_index"]) if me else -1


def wait_caught_up(
    c: LocalCluster, names: list[str] | None = None, timeout_s: float = CATCH_UP_TIMEOUT_S
) -> None:
    """Wait until each node in ``names`` (default: all) has applied the leader's commit
    index as it was when the wait began."""
    leader = c.wait_leader()
    view = c.cluster_view(leader)
    assert view is not None
    target = int(view["commit_index"])  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout_s
    for name in names or list(c.nodes):
        while applied_index(c, name) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not apply index {target} in {timeout_s:.0f} s")
            time.sleep(0.05)


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and its parts (``RssAnon``, ``RssFile``) of process ``pid``, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0])
    return out


def agent_rss_kib(c: LocalCluster) -> dict[str, dict[str, int]]:
    """``rss_kib`` of every running agent, by node name."""
    return {
        name: rss_kib(node.proc.pid)
        for name, node in c.nodes.items()
        if node.proc is not None and node.alive()
    }


def all_runs(
    c: LocalCluster, name: str, query: Mapping[str, str] | None = None
) -> Iterator[dict[str, object]]:
    """Every run ``GET /api/v1/runs`` lists on node ``name`` (stale reads: the local
    copy, so a wait for catch-up comes first), a page at a time."""
    params = {"limit": str(PAGE_LIMIT), "consistency": "stale", **(query or {})}
    while True:
        page = c.get(name, "/api/v1/runs?" + urllib.parse.urlencode(params), timeout_s=30)
        items = page["items"]
        assert isinstance(items, list)
        yield from items
        cursor = page.get("next_cursor")
        if not cursor:
            return
        params["cursor"] = str(cursor)
