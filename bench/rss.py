"""Memory per registered job: the resident set of each agent before and after N jobs
are registered, divided by N (the cluster of ``bench.fires``' experiment, which this
section runs itself when ``fires`` has not run in the same process).

- ``rss_per_job_bytes_<N>``: the largest, over the 3 agents, of (VmRSS after - VmRSS
  before) / N, from ``/proc/PID/status``, read once every node has applied the
  registrations and then been idle for one heap-trim interval (``node/heaptrim.py``
  returns freed heap every 5 s; the reading before is taken the same way), and
  before any of the jobs fires. Goal <= 2 KiB: a node holds the
  replicated state of every job (the state machine's tables in memory, LMDB pages
  in its map) and 100k jobs should cost a node no more than ~200 MiB.
- the limit beside it: the agents' RSS before registering (``rss_idle_kib_max``),
  what a node costs with no jobs.

VmRSS counts LMDB's mapped pages once touched (``RssFile``) as well as the heap
(``RssAnon``); the context gives both parts per node. CPython rarely returns freed
heap to the system; glibc's ``malloc_trim`` gives back whole free pages, but a
page that still holds one live object stays, so the figure includes some of what
the registration path allocated and freed, which a running node keeps too.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.core import Metric, SectionResult
from bench.fires import SIZES, Experiment, experiment, size_tag

RSS_PER_JOB_BYTES_MAX = 2048.0


def per_job_bytes(before_kib: int, after_kib: int, jobs: int) -> float:
    """Bytes of resident memory per job between two VmRSS readings (KiB)."""
    assert jobs > 0, jobs
    return (after_kib - before_kib) * 1024 / jobs


def _per_node(x: Experiment, part: str) -> dict[str, float]:
    return {
        node: per_job_bytes(x.rss_before[node][part], after[part], max(1, x.registered))
        for node, after in x.rss_after.items()
        if node in x.rss_before
    }


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    metrics: list[Metric] = []
    context: dict[str, object] = {}
    idle = 0
    for i, n in enumerate(SIZES):
        x = experiment(n, i, workdir)
        tag = size_tag(n)
        per_node = _per_node(x, "VmRSS")
        metrics.append(
            Metric(
                f"rss_per_job_bytes_{tag}",
                max(per_node.values()),
                "bytes",
                goal_max=RSS_PER_JOB_BYTES_MAX,
            )
        )
        idle = max([idle, *(r["VmRSS"] for r in x.rss_before.values())])
        context[tag] = {
            "jobs_registered": x.registered,
            "rss_before_kib": x.rss_before,
            "rss_after_kib": x.rss_after,
            "per_job_bytes": {k: round(v) for k, v in per_node.items()},
            "anon_per_job_bytes": {k: round(v) for k, v in _per_node(x, "RssAnon").items()},
            "notes": x.notes,
        }
    metrics.append(Metric("rss_idle_kib_max", float(idle), "KiB"))
    context["runtime_s"] = round(time.perf_counter() - started, 1)
    return SectionResult(metrics, context)
