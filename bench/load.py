"""Load generation for the API benchmarks: ``wrk`` when it is installed, else Python
client processes.

Why wrk: one Python client process tops out near 2.5k requests/s on this kind of
machine (DESIGN.md, "Measured ceilings"), below what a Rota server takes, so a Python
client would measure itself. wrk (Debian package ``wrk``) drives the requests from a
Lua script written here (POST bodies, the ``Authorization`` header, a count of
answers by status). Without wrk the Python engine (``PY_PROCESSES`` processes of
threads with keep-alive connections) stands in, and every ``LoadResult`` names its
engine: its rates may be bound by the client, not the server.

Two shapes of load:
- ``for_duration``: one request repeated on ``connections`` connections for
  ``duration_s`` (throughput);
- ``each_once``: every body of a list sent exactly once, spread over the connections
  (registering N jobs). With wrk, a thread that has sent its share leaves its
  connections idle (an empty request) and writes a file when every answer is in;
  wrk is interrupted when all threads have.

Answers are counted by HTTP status; only 2xx count as done (``LoadResult.ok``).
Socket errors (connect, read, write, timeout) are counted apart; a request that
got none of them and no answer is not counted at all.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.core import percentile

WRK_THREADS = 2  # one per core of the machine: wrk is efficient, the servers need the rest
WRK_TIMEOUT_S = 60  # per request; also how long an idle connection may wait in each_once
WRK_MARK = "ROTA_WRK "
PY_PROCESSES = 4
EACH_ONCE_TIMEOUT_S = 1800.0  # bound on registering a list (100k jobs take minutes)
EACH_ONCE_GRACE_S = 15.0  # wait for the last answers once every request is sent
POLL_S = 0.05

# The latency quantiles wrk's ``done`` hook prints (its histogram, 1 us resolution):
# the per-request latency distribution the plots draw.
CDF_QUANTILES = (*range(1, 100), 99.5, 99.9, 99.99)  # wrk answers 0 for 100

LUA_SCRIPT = r"""
-- Written by bench/load.py. args: mode bodies_file done_dir threads method path token
-- (an empty token sends no Authorization header)
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  mode, done_dir = args[1], args[3]
  local nthreads = tonumber(args[4])
  method, path = args[5], args[6]
  if args[7] ~= "" then wrk.headers["Authorization"] = "Bearer " .. args[7] end
  wrk.headers["Content-Type"] = "application/json"
  statuses, bodies, sent, answered = {}, {}, 0, 0
  verifying = tid == 0
  if args[2] ~= "" then
    local i = 0
    for line in io.lines(args[2]) do
      if mode == "for" or i % nthreads == tid then bodies[#bodies + 1] = line end
      i = i + 1
    end
  end
  if mode == "for" then fixed = wrk.format(method, path, nil, bodies[1]) end
  if mode == "each" and #bodies == 0 then mark("sent") mark("done") end
end

function mark(what)
  local f = io.open(done_dir .. "/" .. what .. "." .. tid, "w")
  f:write(what)
  f:close()
end

function request()
  if mode == "for" then return fixed end
  if verifying then
    -- wrk calls thread 0's request() once before any connection, to count the
    -- requests one call makes (script_verify_request): answer it, send nothing.
    verifying = false
    return wrk.format(method, path, nil, bodies[1])
  end
  if sent >= #bodies then return "" end  -- this thread's share is sent: idle
  sent = sent + 1
  if sent == #bodies then mark("sent") end
  return wrk.format(method, path, nil, bodies[sent])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  if mode == "each" and answered == #bodies then mark("done") end
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', status, n) end
  local e = summary.errors
  local cdf = {}
  for _, q in ipairs(CDF_QUANTILES) do
    cdf[#cdf + 1] = string.format("[%s, %d]", q, latency:percentile(q))
  end
  io.write(string.format(
    'ROTA_WRK {"duration_us": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d, "statuses": {%s}, "cdf_us": [%s]}\n',
    summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", "),
    table.concat(cdf, ", ")))
end
"""


@dataclass(frozen=True, slots=True)
class Request:
    """What a load sends: ``method path`` with ``Authorization: Bearer token`` (no
    such header when ``token`` is empty: a peer without Rota's auth)."""

    base_url: str  # http://host:port
    method: str
    path: str
    token: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    engine: str  # "wrk" or "python"
    duration_s: float
    statuses: dict[int, int]
    socket_errors: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    # (quantile 0..100, latency ms) pairs: the distribution, when the engine gives it
    latency_cdf_ms: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        """Answers with a 2xx status: what was done."""
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def not_ok(self) -> int:
        """Answers with any other status."""
        return sum(self.statuses.values()) - self.ok

    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "duration_s": round(self.duration_s, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "socket_errors": self.socket_errors,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            **({"notes": self.notes} if self.notes else {}),
        }


def wrk_path() -> str | None:
    return shutil.which("wrk")


def engine_name() -> str:
    return "wrk" if wrk_path() else "python"


def parse_wrk_output(stdout: str) -> dict[str, object]:
    """The JSON object the Lua ``done`` hook printed after ``WRK_MARK``."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARK):
            parsed = json.loads(line[len(WRK_MARK) :])
            assert isinstance(parsed, dict), parsed
            return parsed
    raise ValueError(f"no {WRK_MARK.strip()} line in wrk output: {stdout[-500:]!r}")


def wrk_result(parsed: dict[str, object], duration_s: float) -> LoadResult:
    statuses = parsed["statuses"]
    assert isinstance(statuses, dict), statuses
    p50, p99 = parsed["p50_us"], parsed["p99_us"]
    assert isinstance(p50, int) and isinstance(p99, int), parsed
    errors = parsed["socket_errors"]
    assert isinstance(errors, int), parsed
    cdf = parsed.get("cdf_us", [])
    assert isinstance(cdf, list), parsed
    return LoadResult(
        "wrk",
        duration_s,
        {int(k): int(v) for k, v in statuses.items()},
        errors,
        p50 / 1000,
        p99 / 1000,
        latency_cdf_ms=[(float(q), us / 1000) for q, us in cdf],
    )


def _wrk_argv(
    req: Request,
    mode: str,
    bodies_file: Path | None,
    done_dir: Path,
    connections: int,
    duration_s: float,
) -> list[str]:
    done_dir.mkdir(parents=True, exist_ok=True)
    script = done_dir / "load.lua"
    quantiles = ", ".join(str(q) for q in CDF_QUANTILES)
    script.write_text(f"CDF_QUANTILES = {{{quantiles}}}\n" + LUA_SCRIPT)
    wrk = wrk_path()
    assert wrk is not None
    argv = [wrk, "-t", str(WRK_THREADS), "-c", str(max(connections, WRK_THREADS))]
    argv += ["-d", f"{max(1, round(duration_s))}s"]
    argv += ["--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(script), req.base_url, "--"]
    argv += [mode, str(bodies_file or ""), str(done_dir), str(WRK_THREADS)]
    argv += [req.method, req.path, req.token]
    return argv


def _write_bodies(path: Path, bodies: Sequence[str]) -> Path:
    for body in bodies:
        assert "\n" not in body, "one body per line"
    path.write_text("".join(b + "\n" for b in bodies))
    return path


def for_duration(
    req: Request, body: str | None, connections: int, duration_s: float, workdir: Path
) -> LoadResult:
    """``req`` (with ``body``) repeated on ``connections`` connections for ``duration_s``."""
    if wrk_path() is None:
        return _python_load(req, None, body, connections, duration_s)
    workdir.mkdir(parents=True, exist_ok=True)
    bodies_file = _write_bodies(workdir / "body.txt", [body]) if body is not None else None
    argv = _wrk_argv(req, "for", bodies_file, workdir, connections, duration_s)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    parsed = parse_wrk_output(out.stdout)
    duration_us = parsed["duration_us"]
    assert isinstance(duration_us, int), parsed
    return wrk_result(parsed, duration_us / 1e6)


def each_once(req: Request, bodies: Sequence[str], connections: int, workdir: Path) -> LoadResult:
    """Send every body in ``bodies`` once, over ``connections`` connections."""
    if wrk_path() is None:
        return _python_load(req, bodies, None, connections, EACH_ONCE_TIMEOUT_S)
    workdir.mkdir(parents=True, exist_ok=True)
    bodies_file = _write_bodies(workdir / "bodies.txt", bodies)
    done_dir = workdir / "done"
    argv = _wrk_argv(req, "each", bodies_file, done_dir, connections, EACH_ONCE_TIMEOUT_S)
    notes: list[str] = []
    start = time.perf_counter()
    all_sent_at: float | None = None
    end: float | None = None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while len(list(done_dir.glob("done.*"))) < WRK_THREADS:
            now = time.perf_counter()
            if all_sent_at is None and len(list(done_dir.glob("sent.*"))) == WRK_THREADS:
                all_sent_at = now
            if all_sent_at is not None and now - all_sent_at > EACH_ONCE_GRACE_S:
                # A request lost with its connection never gets an answer: time the
                # load to its last send, not to the end of the grace.
                end = all_sent_at
                break
            if proc.poll() is not None or now - start > EACH_ONCE_TIMEOUT_S:
                notes.append(f"not every answer was in after {now - start:.0f} s")
                break
            time.sleep(POLL_S)
        elapsed = (end if end is not None else time.perf_counter()) - start
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if WRK_MARK not in stdout:
        raise RuntimeError(f"wrk printed no summary ({proc.returncode}): {stderr[-500:]}")
    result = wrk_result(parse_wrk_output(stdout), elapsed)
    unanswered = len(bodies) - sum(result.statuses.values())
    if unanswered:
        notes.append(f"{unanswered} requests got no answer (lost with their connection)")
    result.notes.extend(notes)
    return result


# ---------------------------------------------------------------- the Python engine


@dataclass(frozen=True, slots=True)
class _Share:
    """One client process's part of a load."""

    host: str
    port: int
    method: str
    path: str
    headers: dict[str, str]
    bodies: list[str] | None  # each once; None: repeat ``body`` until the deadline
    body: str | None
    threads: int
    duration_s: float


def _client_thread(
    share: _Share, bodies: list[str] | None, statuses: Counter[int], out: list[float]
) -> None:
    deadline = time.perf_counter() + share.duration_s
    conn = http.client.HTTPConnection(share.host, share.port, timeout=WRK_TIMEOUT_S)
    todo = iter(bodies) if bodies is not None else None
    errors = 0
    while time.perf_counter() < deadline:
        body = share.body if todo is None else next(todo, None)
        if todo is not None and body is None:
            break
        sent = time.perf_counter()
        try:
            conn.request(share.method, share.path, body, share.headers)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(share.host, share.port, timeout=WRK_TIMEOUT_S)
            continue
        statuses[resp.status] += 1
        out.append(time.perf_counter() - sent)
    conn.close()
    statuses[-1] += errors  # -1: socket errors, split off by the caller


def _client_process(share: _Share) -> tuple[dict[int, int], list[float], float, float]:
    """Run ``share.threads`` client threads; their statuses, latencies (s), and when
    they started and ended (``perf_counter``: CLOCK_MONOTONIC, one clock for every
    process, so the load is timed without the processes' start-up)."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    parts = [
        share.bodies[t :: share.threads] if share.bodies is not None else None
        for t in range(share.threads)
    ]
    threads = [
        threading.Thread(target=_client_thread, args=(share, part, statuses, latencies))
        for part in parts
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(statuses), latencies, start, time.perf_counter()


def _python_load(
    req: Request,
    bodies: Sequence[str] | None,
    body: str | None,
    connections: int,
    duration_s: float,
) -> LoadResult:
    url = urlsplit(req.base_url)
    assert url.hostname is not None and url.port is not None, req.base_url
    headers = {"Content-Type": "application/json"}
    if req.token:
        headers["Authorization"] = f"Bearer {req.token}"
    processes = min(PY_PROCESSES, connections)
    shares = [
        _Share(
            url.hostname,
            url.port,
            req.method,
            req.path,
            headers,
            list(bodies[p::processes]) if bodies is not None else None,
            body,
            max(1, connections // processes),
            duration_s,
        )
        for p in range(processes)
    ]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_client_process, shares)
    elapsed = max(p[3] for p in parts) - min(p[2] for p in parts)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for counts, lat, _, _ in parts:
        statuses.update(counts)
        latencies += lat
    errors = statuses.pop(-1, 0)
    return LoadResult(
        "python",
        elapsed,
        dict(statuses),
        errors,
        percentile(latencies, 50) * 1000 if latencies else None,
        percentile(latencies, 99) * 1000 if latencies else None,
        [f"wrk not installed: {processes} Python client processes; rates may be client-bound"],
        [(q, percentile(latencies, q) * 1000) for q in CDF_QUANTILES] if latencies else [],
    )
