"""Cluster benchmarks on real local agents: failover time and leader stability.

- ``failover_ms_p50/p99``: SIGKILL the leader of a 3-node cluster, then time until a
  surviving node reports a new leader whose commit index has moved past the old
  leader's (the new leader's first committed entry: its term's no-op). Each trial
  restarts the killed node and waits for it to catch up before the next one.
- ``leader_changes_steady``: leader changes seen by every node (the
  ``rota_raft_leader_changes_total`` counter, minus the initial election) over a
  fault-free window while a client keeps the API busy.

The limit beside them: the configured election timeout (``election_ticks_min`` x
``tick_ms``), below which no failover can complete.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

from bench import agents
from bench.core import Metric, SectionResult, percentile
from node.devcluster import LocalCluster

TRIALS = int(os.environ.get("ROTA_BENCH_FAILOVER_TRIALS", "10"))
STEADY_S = float(os.environ.get("ROTA_BENCH_STEADY_S", "60"))
HTTP_BASE_PORT = 27_100
POLL_S = 0.005


def _commit_and_leader(c: LocalCluster, names: list[str]) -> tuple[str | None, int]:
    for name in names:
        v = c.cluster_view(name)
        if v and v.get("leader") in names:
            return str(v["leader"]), int(v["commit_index"])  # type: ignore[call-overload]
    return None, 0


def failover_trial(c: LocalCluster) -> float:
    leader = c.wait_leader()
    view = c.cluster_view(leader)
    assert view is not None
    old_commit = int(view["commit_index"])  # type: ignore[call-overload]
    survivors = [n for n in c.nodes if n != leader]
    start = time.perf_counter()
    c.kill(leader)
    while True:
        new_leader, commit = _commit_and_leader(c, survivors)
        if new_leader is not None and commit > old_commit:
            elapsed_ms = (time.perf_counter() - start) * 1000
            break
        if time.perf_counter() - start > 30:
            raise TimeoutError("no failover within 30 s")
        time.sleep(POLL_S)
    c.start_node(leader)
    c.wait_leader()
    agents.wait_caught_up(c, [leader], timeout_s=30)
    return elapsed_ms


def _leader_changes(c: LocalCluster, name: str) -> float:
    return sum(v for _, v in agents.metric_samples_of(c, name, "rota_raft_leader_changes_total"))


def steady_leader_changes(c: LocalCluster, duration_s: float) -> tuple[float, int]:
    c.wait_leader()
    before = {n: _leader_changes(c, n) for n in c.nodes}
    stop = threading.Event()
    requests = [0]

    def load() -> None:
        while not stop.is_set():
            for name in c.nodes:
                if c.cluster_view(name) is not None:
                    requests[0] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    after = {n: _leader_changes(c, n) for n in c.nodes}
    return sum(after[n] - before[n] for n in c.nodes), requests[0]


def run(workdir: Path) -> SectionResult:
    c = LocalCluster(workdir / "cluster", 3, HTTP_BASE_PORT)
    c.start()
    try:
        trials = [failover_trial(c) for _ in range(TRIALS)]
        changes, requests = steady_leader_changes(c, STEADY_S)
    finally:
        c.stop()
    trials.sort()
    p99 = percentile(trials, 99)
    election_ms = 10 * c.tick_ms
    return SectionResult(
        [
            Metric("failover_ms_p50", statistics.median(trials), "ms"),
            Metric("failover_ms_p99", p99, "ms", goal_max=1000.0),
            Metric("failover_election_timeout_min_ms", float(election_ms), "ms"),
            Metric("leader_changes_steady", changes, "changes", goal_max=0.0),
        ],
        {
            "failover_trials_ms": [round(t, 1) for t in trials],
            "steady_window_s": STEADY_S,
            "steady_load": f"{requests} GET /api/v1/cluster requests from 4 client threads",
        },
    )
