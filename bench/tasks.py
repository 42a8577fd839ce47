"""Ad-hoc task throughput on a real 3-node cluster, beside the HTTP ceiling of the
same server measured by the same client in the same run.

- ``tasks_committed_per_s``: ``POST /api/v1/tasks`` (one shell task each, operator
  token) from ``CONNECTIONS`` concurrent connections to the leader. Only 201
  answers count: each is a task committed through Raft (fsynced on a majority)
  before the answer.
- ``healthz_per_s`` (the limit): ``GET /healthz`` on the same server with the same
  client, connections and headers: what its HTTP stack serves when the request
  does nothing.
- ``tasks_vs_healthz_ratio``: median over ``ROUNDS`` of tasks/healthz from
  neighbouring slices (so a burst of machine noise hits both alike). Goal >= 0.5:
  the scheduler's own path costs no more than the HTTP around it.
- ``batch_tasks_committed_per_s``: ``POST /api/v1/tasks:batch`` with
  ``node.jobs.TASKS_PER_BATCH_MAX`` tasks per request (all committed in one entry),
  counted in tasks of 201 answers. Goal >= 20,000. Every task of that body is the
  same, as a fan-out of one command is; the server validates a repeated task body
  once (``node.memo``).
- ``batch_distinct_tasks_committed_per_s``: the same endpoint, each body sent once,
  every task in it different from every other task of the load (its own argument),
  so nothing is validated or decoded only once: the general path, beside the goal's.

The load comes from ``bench.load`` (wrk when installed; else Python processes, and
the context says so). The cluster runs with ``worker_slots = 0`` so the committed
tasks stay queued: executing them would load the machine being measured. Sizes:
``ROTA_BENCH_TASKS_ROUNDS`` (default 3), ``ROTA_BENCH_TASKS_SLICE_S`` (default 5).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import agents, load
from bench.core import Metric, SectionResult, env_int, median
from node.devcluster import LocalCluster
from node.jobs import TASKS_PER_BATCH_MAX

HTTP_BASE_PORT = 27_200
CONNECTIONS = 64
BATCH_CONNECTIONS = 4  # a 1000-task batch is ~100 kB of JSON: a few in flight suffice
DISTINCT_BATCHES = env_int("ROTA_BENCH_TASKS_DISTINCT_BATCHES", 60)
ROUNDS = env_int("ROTA_BENCH_TASKS_ROUNDS", 3)
SLICE_S = env_int("ROTA_BENCH_TASKS_SLICE_S", 5)
TASK = {"executor": {"type": "shell", "command": ["/bin/true"]}}
KINDS = ("healthz", "tasks", "batch")


def measure_rounds(
    c: LocalCluster,
    workdir: Path,
    kinds: tuple[str, ...] = KINDS,
    rounds: int = ROUNDS,
    slice_s: float = SLICE_S,
) -> list[dict[str, load.LoadResult]]:
    """``rounds`` rounds of ``slice_s`` slices of each of ``kinds`` (``healthz``,
    ``tasks``, ``batch``) against the leader of the started cluster ``c``, in that
    order within a round; any node count (the 1-, 3- and 5-node scaling uses it)."""
    leader = c.wait_leader()
    loads = {
        "healthz": (agents.request(c, leader, "GET", "/healthz", "operator"), None, CONNECTIONS),
        "tasks": (
            agents.request(c, leader, "POST", "/api/v1/tasks", "operator"),
            json.dumps(TASK),
            CONNECTIONS,
        ),
        "batch": (
            agents.request(c, leader, "POST", "/api/v1/tasks:batch", "operator"),
            json.dumps({"tasks": [TASK] * TASKS_PER_BATCH_MAX}),
            BATCH_CONNECTIONS,
        ),
    }
    out: list[dict[str, load.LoadResult]] = []
    for i in range(rounds):
        slice_dir = workdir / f"round{i}"
        out.append(
            {
                kind: load.for_duration(
                    loads[kind][0], loads[kind][1], loads[kind][2], slice_s, slice_dir / kind
                )
                for kind in kinds
            }
        )
    return out


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    c = agents.start_cluster(workdir / "cluster", HTTP_BASE_PORT, {"worker_slots": 0})
    try:
        rounds = measure_rounds(c, workdir)
        distinct = batch_distinct(c, workdir / "distinct")
    finally:
        c.stop()
    return _result(rounds, distinct, time.perf_counter() - started)


def distinct_bodies(batches: int) -> list[str]:
    """``batches`` full batch bodies in which no two tasks are the same."""
    return [
        json.dumps(
            {
                "tasks": [
                    {"executor": {"type": "shell", "command": ["/bin/echo", f"{b}-{i}"]}}
                    for i in range(TASKS_PER_BATCH_MAX)
                ]
            }
        )
        for b in range(batches)
    ]


def batch_distinct(c: LocalCluster, workdir: Path) -> load.LoadResult:
    """Every one of ``DISTINCT_BATCHES`` distinct bodies once, to the leader."""
    req = agents.request(c, c.wait_leader(), "POST", "/api/v1/tasks:batch", "operator")
    return load.each_once(req, distinct_bodies(DISTINCT_BATCHES), BATCH_CONNECTIONS, workdir)


def _result(
    rounds: list[dict[str, load.LoadResult]], distinct: load.LoadResult, runtime_s: float
) -> SectionResult:
    def rates(kind: str, per_answer: int = 1) -> list[float]:
        return [r[kind].ok_per_s() * per_answer for r in rounds]

    ratio = median([r["tasks"].ok_per_s() / r["healthz"].ok_per_s() for r in rounds])
    not_ok = {kind: sum(r[kind].not_ok for r in rounds) for kind in rounds[0]}
    socket_errors = {kind: sum(r[kind].socket_errors for r in rounds) for kind in rounds[0]}
    metrics = [
        Metric("healthz_per_s", median(rates("healthz")), "req/s"),
        Metric("tasks_committed_per_s", median(rates("tasks")), "tasks/s"),
        Metric("tasks_vs_healthz_ratio", ratio, "ratio", goal_min=0.5),
        Metric(
            "batch_tasks_committed_per_s",
            median(rates("batch", TASKS_PER_BATCH_MAX)),
            "tasks/s",
            goal_min=20_000,
        ),
        Metric(
            "batch_distinct_tasks_committed_per_s",
            distinct.ok_per_s() * TASKS_PER_BATCH_MAX,
            "tasks/s",
        ),
        Metric(
            "tasks_non_2xx_answers",
            float(not_ok["tasks"] + not_ok["batch"] + distinct.not_ok),
            "answers",
        ),
    ]
    context: dict[str, object] = {
        "engine": rounds[0]["tasks"].engine,
        "target": "the leader (a follower would forward each write to it)",
        "connections": CONNECTIONS,
        "batch_connections": BATCH_CONNECTIONS,
        "tasks_per_batch": TASKS_PER_BATCH_MAX,
        "rounds": ROUNDS,
        "slice_s": SLICE_S,
        "worker_slots": 0,
        "per_round_per_s": {
            "healthz": [round(x, 1) for x in rates("healthz")],
            "tasks": [round(x, 1) for x in rates("tasks")],
            "batch_tasks": [round(x, 1) for x in rates("batch", TASKS_PER_BATCH_MAX)],
        },
        "non_2xx_answers": not_ok,
        "socket_errors": socket_errors,
        "slices": [{k: v.to_json() for k, v in r.items()} for r in rounds],
        "batch_distinct": {"batches": DISTINCT_BATCHES, **distinct.to_json()},
        "runtime_s": round(runtime_s, 1),
    }
    return SectionResult(metrics, context)
