"""Plots (PNG, matplotlib) of what the other sections measure as single figures: the
latency distribution per request, and throughput over time across a leader kill.

- ``latency_cdf.png``: the per-request latency distribution (wrk's histogram, printed
  by the Lua ``done`` hook at ``bench.load.CDF_QUANTILES``) of ``GET /healthz`` and
  ``POST /api/v1/tasks`` on the leader of a 3-node Rota cluster, and of ``POST
  /v3/kv/put`` on the leader of a 3-member etcd cluster (``bench.etcd``), each from
  ``bench.tasks.CONNECTIONS`` connections for ``SLICE_S`` seconds.
- ``leader_kill_throughput.png``: committed requests per ``BUCKET_MS`` bucket while
  ``KILL_THREADS`` Python client threads submit one request at a time to the
  followers (which forward writes to the leader) and the leader is SIGKILLed
  ``KILL_AT_S`` into a ``KILL_RUN_S`` run: Rota ``POST /api/v1/tasks`` (201s) and,
  on the same axes, etcd puts (200s). One Python process drives it (timestamps need
  one clock), so etcd's rate there is bound by this client, not by etcd; the gap
  after the kill is what the plot shows. A request gets ``REQUEST_TIMEOUT_S`` to be
  answered, then the thread sends another: requests in flight at the kill wait that
  long, so a gap is rounded up to about a multiple of it (``bench.cluster`` and
  ``bench.etcd`` time failover exactly).

Figures beside the plots: p50/p99 of each latency distribution and, per system, the
longest run of empty buckets after the kill (``*_kill_gap_ms``: no request committed
for that long) with the committed rate before and after it.

Without matplotlib (a dev extra) the section measures but draws nothing and says
so. PNGs go to ``PLOTS_DIR`` (``bench-results/``; ``ROTA_BENCH_PLOTS_DIR``). Sizes:
``ROTA_BENCH_PLOTS_SLICE_S`` (default 5), ``ROTA_BENCH_KILL_RUN_S`` (default 12),
``ROTA_BENCH_KILL_AT_S`` (default 4), ``ROTA_BENCH_KILL_THREADS`` (default 16),
``ROTA_BENCH_KILL_CLIENT_TIMEOUT_S`` (default 0.5).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench import agents, etcd, load, tasks
from bench.core import Metric, SectionResult, env_int

ROOT = Path(__file__).resolve().parent.parent
PLOTS_DIR = Path(os.environ.get("ROTA_BENCH_PLOTS_DIR", str(ROOT / "bench-results")))
HTTP_BASE_PORT = 27_600
ETCD_CLIENT_BASE_PORT = 26_580
ETCD_PEER_BASE_PORT = 26_680
SLICE_S = env_int("ROTA_BENCH_PLOTS_SLICE_S", 5)
KILL_RUN_S = env_int("ROTA_BENCH_KILL_RUN_S", 12)
KILL_AT_S = env_int("ROTA_BENCH_KILL_AT_S", 4)
KILL_THREADS = env_int("ROTA_BENCH_KILL_THREADS", 16)
BUCKET_MS = 100
# The kill run's client gives up on a request after this long and sends the next one
# (a new connection): a request in flight to a Rota follower when the leader dies
# waits on its forward up to node.service's 10 s propose timeout, so without a
# client timeout the plot would show that wait rather than when commits resume.
REQUEST_TIMEOUT_S = float(os.environ.get("ROTA_BENCH_KILL_CLIENT_TIMEOUT_S", "0.5"))


# ---------------------------------------------------------------- pure helpers


def bucket_counts(
    times_s: Sequence[float], start_s: float, end_s: float, width_s: float
) -> list[int]:
    """How many of ``times_s`` fall in each ``width_s`` bucket of ``[start_s, end_s)``
    (the last bucket may be partial); times outside are dropped."""
    assert end_s > start_s and width_s > 0, (start_s, end_s, width_s)
    n = int((end_s - start_s) / width_s + 1 - 1e-9)
    counts = [0] * n
    for t in times_s:
        if start_s <= t < end_s:
            counts[min(n - 1, int((t - start_s) / width_s + 1e-9))] += 1  # 0.1/0.1 < 1
    return counts


def longest_zero_run(counts: Sequence[int], from_index: int) -> tuple[int, int]:
    """The longest run of empty buckets at or after ``from_index``: (its first index,
    its length); (from_index, 0) when none is empty."""
    best_start, best_len = from_index, 0
    run_start, run_len = from_index, 0
    for i in range(from_index, len(counts)):
        if counts[i] == 0:
            if run_len == 0:
                run_start = i
            run_len += 1
            if run_len > best_len:
                best_start, best_len = run_start, run_len
        else:
            run_len = 0
    return best_start, best_len


# ---------------------------------------------------------------- the kill run


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str
    path: str
    body: str
    headers: dict[str, str]
    ok_status: int


def timed_load(
    targets: Sequence[Target], threads: int, run_s: float, at_s: float, action: Callable[[], None]
) -> tuple[list[float], float, float, Counter[str]]:
    """``threads`` client threads (thread i on ``targets[i % len]``) send one request
    after another for ``run_s``; ``action`` runs ``at_s`` in. Returns the completion
    times (``perf_counter``) of the answers with the target's ``ok_status``, the start,
    when ``action`` was called, and a count of the other outcomes (by status, or
    ``client_timeout`` / ``socket_error``)."""
    done: list[float] = []
    others: Counter[str] = Counter()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + run_s

    def client(t: Target) -> None:
        url = urlsplit(t.base_url)
        assert url.hostname is not None and url.port is not None
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT_S)
        while time.perf_counter() < deadline:
            try:
                conn.request("POST", t.path, t.body, t.headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    others["client_timeout" if isinstance(e, TimeoutError) else "socket_error"] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT_S)
                time.sleep(0.01)
                continue
            now = time.perf_counter()
            with lock:
                if resp.status == t.ok_status:
                    done.append(now)
                else:
                    others[str(resp.status)] += 1
        conn.close()

    workers = [
        threading.Thread(target=client, args=(targets[i % len(targets)],), daemon=True)
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start + at_s - time.perf_counter()))
    acted = time.perf_counter()
    action()
    for w in workers:
        w.join(timeout=run_s + REQUEST_TIMEOUT_S + 5)
    return [t for t in done if t < deadline], start, acted, others


def kill_series(
    name: str, times: list[float], start: float, acted: float, others: Counter[str]
) -> dict[str, object]:
    width = BUCKET_MS / 1000
    counts = bucket_counts(times, start, start + KILL_RUN_S, width)
    kill_index = int((acted - start) / width)
    gap_start, gap_len = longest_zero_run(counts, kill_index)
    before = counts[:kill_index]
    after = counts[gap_start + gap_len :]
    return {
        "name": name,
        "bucket_ms": BUCKET_MS,
        "kill_at_s": round(acted - start, 3),
        "counts": counts,
        "gap_ms": gap_len * BUCKET_MS,
        "gap_starts_at_s": round(gap_start * width, 3),
        "before_per_s": round(sum(before) / (len(before) * width), 1) if before else 0.0,
        "after_per_s": round(sum(after) / (len(after) * width), 1) if after else 0.0,
        "not_ok": dict(sorted(others.items())),
        "client_timeout_s": REQUEST_TIMEOUT_S,
    }


def rota_kill_run(workdir: Path) -> dict[str, object]:
    c = agents.start_cluster(workdir / "kill-cluster", HTTP_BASE_PORT + 10, {"worker_slots": 0})
    try:
        leader = c.wait_leader()
        headers = {
            "Authorization": f"Bearer {agents.token(c, 'operator')}",
            "Content-Type": "application/json",
        }
        body = json.dumps(tasks.TASK)
        targets = [
            Target(node.api, "/api/v1/tasks", body, headers, 201)
            for name, node in c.nodes.items()
            if name != leader
        ]
        times, start, acted, others = timed_load(
            targets, KILL_THREADS, KILL_RUN_S, KILL_AT_S, lambda: c.kill(leader)
        )
    finally:
        c.stop()
    return kill_series("Rota POST /api/v1/tasks", times, start, acted, others)


def etcd_kill_run(workdir: Path) -> dict[str, object]:
    c = etcd.EtcdCluster(
        workdir / "kill-etcd", 3, ETCD_CLIENT_BASE_PORT + 10, ETCD_PEER_BASE_PORT + 10
    )
    c.start()
    try:
        leader = c.wait_leader()
        body = etcd.put_body(etcd.PUT_KEY, etcd.task_sized_value())
        headers = {"Content-Type": "application/json"}
        targets = [
            Target(m.client_url, "/v3/kv/put", body, headers, 200)
            for name, m in c.members.items()
            if name != leader
        ]
        times, start, acted, others = timed_load(
            targets, KILL_THREADS, KILL_RUN_S, KILL_AT_S, lambda: c.kill(leader)
        )
    finally:
        c.stop()
    return kill_series("etcd POST /v3/kv/put", times, start, acted, others)


# ---------------------------------------------------------------- latency


def latency_runs(workdir: Path) -> dict[str, load.LoadResult]:
    out: dict[str, load.LoadResult] = {}
    c = agents.start_cluster(workdir / "cluster", HTTP_BASE_PORT, {"worker_slots": 0})
    try:
        rounds = tasks.measure_rounds(
            c, workdir / "rota", kinds=("healthz", "tasks"), rounds=1, slice_s=SLICE_S
        )
        out["Rota GET /healthz"] = rounds[0]["healthz"]
        out["Rota POST /api/v1/tasks"] = rounds[0]["tasks"]
    finally:
        c.stop()
    if etcd.etcd_path() is not None:
        e = etcd.EtcdCluster(workdir / "etcd", 3, ETCD_CLIENT_BASE_PORT, ETCD_PEER_BASE_PORT)
        e.start()
        try:
            leader = e.wait_leader()
            body = etcd.put_body(etcd.PUT_KEY, etcd.task_sized_value())
            out["etcd POST /v3/kv/put"] = load.for_duration(
                etcd.put_request(e, leader), body, tasks.CONNECTIONS, SLICE_S, workdir / "etcd-put"
            )
        finally:
            e.stop()
    return out


# ---------------------------------------------------------------- drawing


def draw_latency(path: Path, runs: dict[str, load.LoadResult]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.add_subplot()
    for name, r in runs.items():
        qs = [q for q, _ in r.latency_cdf_ms]
        ms = [v for _, v in r.latency_cdf_ms]
        ax.plot(ms, qs, label=f"{name} ({r.ok_per_s():,.0f}/s)")
    ax.set_xscale("log")
    ax.set_xlabel("latency per request, ms (log)")
    ax.set_ylabel("percentile")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Per-request latency, {tasks.CONNECTIONS} connections (wrk), 3 nodes each")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def draw_kill(path: Path, series: list[dict[str, object]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.add_subplot()
    for s in series:
        counts = s["counts"]
        assert isinstance(counts, list)
        width = BUCKET_MS / 1000
        xs = [i * width for i in range(len(counts))]
        ax.step(xs, [n / width for n in counts], where="post", label=str(s["name"]))
        kill_at = s["kill_at_s"]
        assert isinstance(kill_at, float)
        ax.axvline(kill_at, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"seconds into the run (dashed: leader SIGKILLed); {BUCKET_MS} ms buckets")
    ax.set_ylabel("committed requests/s (symlog)")
    ax.set_title(
        f"Throughput across a leader kill: {KILL_THREADS} Python client threads to the "
        f"followers, {REQUEST_TIMEOUT_S:g} s client timeout",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    runs = latency_runs(workdir)
    series = [rota_kill_run(workdir)]
    if etcd.etcd_path() is not None:
        series.append(etcd_kill_run(workdir))
    notes: list[str] = []
    if etcd.etcd_path() is None:
        notes.append("etcd not installed: the plots show Rota only")
    pngs: list[str] = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("matplotlib not installed (pip install -e '.[dev]'): no plots drawn")
    else:
        PLOTS_DIR.mkdir(parents=True, exist_ok=True)
        draw_latency(PLOTS_DIR / "latency_cdf.png", runs)
        draw_kill(PLOTS_DIR / "leader_kill_throughput.png", series)
        pngs = [str(PLOTS_DIR / "latency_cdf.png"), str(PLOTS_DIR / "leader_kill_throughput.png")]
    metrics: list[Metric] = []
    slug = {
        "Rota GET /healthz": "rota_healthz",
        "Rota POST /api/v1/tasks": "rota_tasks",
        "etcd POST /v3/kv/put": "etcd_put",
    }
    for name, r in runs.items():
        metrics += [
            Metric(f"{slug[name]}_latency_ms_p50", r.latency_p50_ms or 0.0, "ms"),
            Metric(f"{slug[name]}_latency_ms_p99", r.latency_p99_ms or 0.0, "ms"),
        ]
    for s, key in zip(series, ("rota", "etcd"), strict=False):
        gap, before, after = s["gap_ms"], s["before_per_s"], s["after_per_s"]
        assert isinstance(gap, int) and isinstance(before, float) and isinstance(after, float)
        metrics += [
            Metric(f"{key}_kill_gap_ms", float(gap), "ms"),
            Metric(f"{key}_kill_before_per_s", before, "req/s"),
            Metric(f"{key}_kill_after_per_s", after, "req/s"),
        ]
    return SectionResult(
        metrics,
        {
            "pngs": pngs,
            "notes": notes,
            "latency": {
                name: {
                    **r.to_json(),
                    "ok_per_s": round(r.ok_per_s(), 1),
                    "cdf_ms": r.latency_cdf_ms,
                }
                for name, r in runs.items()
            },
            "kill_runs": series,
            "kill_threads": KILL_THREADS,
            "slice_s": SLICE_S,
            "runtime_s": round(time.perf_counter() - started, 1),
        },
    )
