"""How committed task throughput changes with the cluster's size: Rota clusters of 1, 3
and 5 nodes, each measured with ``bench.tasks.measure_rounds`` (the same client,
connections, bodies and slices as the ``tasks`` section), one fresh cluster per size.

- ``nodes{N}_tasks_committed_per_s``: ``POST /api/v1/tasks`` to the leader, 201s/s;
- ``nodes{N}_batch_tasks_committed_per_s``: ``POST /api/v1/tasks:batch``, tasks/s;
- ``nodes{N}_healthz_per_s``: the same server's HTTP ceiling in the same rounds.

Every node of a size runs on this one machine, so a larger cluster also means more
processes sharing its cores: the figures show what replication to more voters costs
here, not what more machines would add. Sizes: ``ROTA_BENCH_SCALING_NODES`` (default
``1,3,5``), ``ROTA_BENCH_SCALING_ROUNDS`` (default ``bench.tasks.ROUNDS``),
``ROTA_BENCH_SCALING_SLICE_S`` (default ``bench.tasks.SLICE_S``).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import agents, load, tasks
from bench.core import Metric, SectionResult, env_int, env_ints, median
from node.jobs import TASKS_PER_BATCH_MAX

HTTP_BASE_PORT = 27_500  # size i uses HTTP_BASE_PORT + 10 * i
NODES = env_ints("ROTA_BENCH_SCALING_NODES", (1, 3, 5))
ROUNDS = env_int("ROTA_BENCH_SCALING_ROUNDS", tasks.ROUNDS)
SLICE_S = env_int("ROTA_BENCH_SCALING_SLICE_S", tasks.SLICE_S)


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    metrics: list[Metric] = []
    per_size: dict[str, object] = {}
    for i, n in enumerate(NODES):
        c = agents.start_cluster(
            workdir / f"nodes{n}", HTTP_BASE_PORT + 10 * i, {"worker_slots": 0}, nodes=n
        )
        try:
            rounds = tasks.measure_rounds(
                c, workdir / f"nodes{n}-load", rounds=ROUNDS, slice_s=SLICE_S
            )
        finally:
            c.stop()
        rates = {
            "healthz": [r["healthz"].ok_per_s() for r in rounds],
            "tasks": [r["tasks"].ok_per_s() for r in rounds],
            "batch_tasks": [r["batch"].ok_per_s() * TASKS_PER_BATCH_MAX for r in rounds],
        }
        metrics += [
            Metric(f"nodes{n}_tasks_committed_per_s", median(rates["tasks"]), "tasks/s"),
            Metric(
                f"nodes{n}_batch_tasks_committed_per_s", median(rates["batch_tasks"]), "tasks/s"
            ),
            Metric(f"nodes{n}_healthz_per_s", median(rates["healthz"]), "req/s"),
        ]
        per_size[str(n)] = {
            "per_round_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "non_2xx_answers": sum(r[k].not_ok for r in rounds for k in r),
            "socket_errors": sum(r[k].socket_errors for r in rounds for k in r),
        }
    context: dict[str, object] = {
        "nodes": list(NODES),
        "engine": load.engine_name(),
        "connections": tasks.CONNECTIONS,
        "batch_connections": tasks.BATCH_CONNECTIONS,
        "rounds": ROUNDS,
        "slice_s": SLICE_S,
        "worker_slots": 0,
        "per_size": per_size,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return SectionResult(metrics, context)
