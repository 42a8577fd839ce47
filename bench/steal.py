"""Work stealing: the makespan of a skewed load with stealing on and off, beside the
ideal makespan, on real 3-node clusters.

The skew: unequal nodes. ``n1`` has ``SLOW_SLOTS`` worker slot, ``n2`` and ``n3``
``FAST_SLOTS`` each; every node accepts ``QUEUE_MAX`` runs queued ahead of its free
slots (``worker_queue_max``), whatever its slots, so the leader's placement fills
the slow node's queue as deep as the others' and it drains three times slower. When
nothing is left to place, the fast nodes idle while ``n1`` still holds a queue: that
tail is what stealing (``steal_*`` keys, node/config.py) should take over.

The load: ``RUNS`` shell tasks of ``sleep RUN_S`` (no CPU; the machine is shared),
submitted in one ``POST /api/v1/tasks:batch``.

- ``steal_makespan_s`` / ``nosteal_makespan_s``: from just before the submission
  (the client's clock; the agents share it) to the last run's ``finished_at``, with
  ``steal_batch_max = STEAL_BATCH_MAX`` and with ``steal_batch_max = 0`` (off), each on
  a fresh cluster;
- ``steal_ideal_makespan_s`` (the limit): total work / total slots plus one longest
  run (``ideal_makespan_s``), with the work measured from the same runs' records
  (``finished_at - started_at``, so process start-up counts as work);
- ``steal_makespan_vs_ideal``: goal <= 1.15; ``nosteal_makespan_vs_ideal`` beside it;
- ``steals_total``: runs moved (``rota_steals_total{direction="in"}`` over the nodes).

Sizes: ``ROTA_BENCH_STEAL_RUNS`` (default 84), ``ROTA_BENCH_STEAL_RUN_S`` (default 1).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import agents
from bench.core import Metric, SectionResult, env_int
from bench.fires import parse_instant_ms
from node.devcluster import LocalCluster

HTTP_BASE_PORT = 27_400  # stealing on; off is HTTP_BASE_PORT + 10
SLOW_SLOTS, FAST_SLOTS = 1, 3
QUEUE_MAX = 8
STEAL_BATCH_MAX = 32
STEAL_INTERVAL_MS = 200
RUNS = env_int("ROTA_BENCH_STEAL_RUNS", 84)
RUN_S = env_int("ROTA_BENCH_STEAL_RUN_S", 1)
TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})
WAIT_FACTOR = 10  # give up after this many ideal makespans
GOSSIP_TIMEOUT_S = 30.0


def ideal_makespan_s(durations_s: list[float], slots: int) -> float:
    """Total work spread over every slot, plus one longest run (Graham's bound for
    list scheduling, rounded up: no schedule of these runs is much shorter)."""
    assert durations_s and slots > 0, (len(durations_s), slots)
    return sum(durations_s) / slots + max(durations_s)


def makespan_s(submitted_ms: int, finished_ms: list[int]) -> float:
    """From the submission to the last run finished."""
    assert finished_ms, "no finished runs"
    return (max(finished_ms) - submitted_ms) / 1000


def _slots(name: str) -> int:
    return SLOW_SLOTS if name == "n1" else FAST_SLOTS


def _wait_slots_gossiped(c: LocalCluster, total: int) -> None:
    """Until the leader's view shows every node's free slots: placement reads them."""
    deadline = time.monotonic() + GOSSIP_TIMEOUT_S
    while time.monotonic() < deadline:
        view = c.cluster_view(c.wait_leader())
        members = view.get("members") if view else None
        if isinstance(members, list) and sum(int(m["free_slots"]) for m in members) == total:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the leader did not see {total} free slots in {GOSSIP_TIMEOUT_S:.0f} s")


def measure(workdir: Path, port: int, steal_batch_max: int) -> Outcome:
    """One cluster, one load: makespan, work, steals, per-node runs, outcomes."""
    settings = {
        "worker_slots": FAST_SLOTS,
        "worker_queue_max": QUEUE_MAX,
        "steal_threshold": 0,
        "steal_batch_max": steal_batch_max,
        "steal_interval_ms": STEAL_INTERVAL_MS,
    }
    per_node = {"n1": {"worker_slots": SLOW_SLOTS}}
    c = agents.start_cluster(workdir, port, settings, per_node=per_node)
    total_slots = sum(_slots(n) for n in c.nodes)
    try:
        _wait_slots_gossiped(c, total_slots)
        leader = c.wait_leader()
        task = {"executor": {"type": "shell", "command": ["/bin/sleep", str(RUN_S)]}}
        submitted_ms = int(time.time() * 1000)
        c.post(leader, "/api/v1/tasks:batch", {"tasks": [task] * RUNS}, timeout_s=30)
        deadline = time.monotonic() + WAIT_FACTOR * (RUNS * RUN_S / total_slots + RUN_S) + 30
        runs: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            runs = list(agents.all_runs(c, leader, {"consistency": "linearizable"}))
            if len(runs) >= RUNS and all(r.get("state") in TERMINAL for r in runs):
                break
            time.sleep(0.5)
        steals = sum(
            v
            for n in c.nodes
            for labels, v in agents.metric_samples_of(c, n, "rota_steals_total")
            if labels.get("direction") == "in"
        )
    finally:
        c.stop()
    return _outcome(runs, submitted_ms, total_slots, steals)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one load on one cluster came to."""

    complete: bool  # every run reached a terminal state
    makespan_s: float | None
    ideal_s: float | None
    work_s: float
    steals: float
    runs_per_node: dict[str, int]
    states: dict[str, int]

    def ratio(self) -> float | None:
        if not self.complete or self.makespan_s is None or not self.ideal_s:
            return None
        return self.makespan_s / self.ideal_s


def _outcome(
    runs: list[dict[str, object]], submitted_ms: int, slots: int, steals: float
) -> Outcome:
    finished_ms: list[int] = []
    work_s: list[float] = []
    for r in runs:
        started, finished = r.get("started_at"), r.get("finished_at")
        if isinstance(finished, str):
            finished_ms.append(parse_instant_ms(finished))
            if isinstance(started, str):
                work_s.append((finished_ms[-1] - parse_instant_ms(started)) / 1000)
    return Outcome(
        complete=len(runs) == RUNS and all(r.get("state") in TERMINAL for r in runs),
        makespan_s=makespan_s(submitted_ms, finished_ms) if finished_ms else None,
        ideal_s=ideal_makespan_s(work_s, slots) if work_s else None,
        work_s=sum(work_s),
        steals=steals,
        runs_per_node=dict(sorted(Counter(str(r.get("node")) for r in runs).items())),
        states=dict(Counter(str(r.get("state")) for r in runs)),
    )


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    on = measure(workdir / "steal-on", HTTP_BASE_PORT, STEAL_BATCH_MAX)
    off = measure(workdir / "steal-off", HTTP_BASE_PORT + 10, 0)
    metrics: list[Metric] = []
    on_ratio, off_ratio = on.ratio(), off.ratio()
    if on_ratio is not None and on.makespan_s is not None and on.ideal_s is not None:
        metrics += [
            Metric("steal_makespan_s", on.makespan_s, "s"),
            Metric("steal_ideal_makespan_s", on.ideal_s, "s"),
            Metric("steal_makespan_vs_ideal", on_ratio, "ratio", goal_max=1.15),
        ]
    if off_ratio is not None and off.makespan_s is not None:
        metrics += [
            Metric("nosteal_makespan_s", off.makespan_s, "s"),
            Metric("nosteal_makespan_vs_ideal", off_ratio, "ratio"),
        ]
    metrics.append(Metric("steals_total", on.steals, "runs"))
    context: dict[str, object] = {
        "slots": {"n1": SLOW_SLOTS, "n2": FAST_SLOTS, "n3": FAST_SLOTS},
        "worker_queue_max": QUEUE_MAX,
        "steal_batch_max": STEAL_BATCH_MAX,
        "steal_interval_ms": STEAL_INTERVAL_MS,
        "runs": RUNS,
        "run_s": RUN_S,
        "steal_on": dataclasses.asdict(on),
        "steal_off": dataclasses.asdict(off),
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return SectionResult(metrics, context)
