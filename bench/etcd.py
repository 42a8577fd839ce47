"""etcd beside Rota: a 3-member etcd cluster (Debian's ``etcd-server``) started here on
loopback, measured with the same client and concurrency as ``bench.tasks`` and with
the same failover trial count as ``bench.cluster``.

- ``etcd_puts_committed_per_s``: ``POST /v3/kv/put`` through etcd's JSON gateway
  (etcd 3.4 serves it at ``/v3/...``; base64 key and value) to the leader from
  ``bench.tasks.CONNECTIONS`` connections for ``SLICE_S`` seconds, ``ROUNDS`` times
  (``bench.load.for_duration``: wrk when installed). Only 200 answers count: each is a
  put committed by a majority (etcd fsyncs its WAL before answering, its default).
  The value is the same JSON a Rota task submission carries, so the bytes match.
- ``etcd_failover_ms_p50/p99``: SIGKILL the etcd leader, then time until a surviving
  member reports a new leader (``POST /v3/maintenance/status``) and a put to a
  survivor commits. Each trial restarts the killed member (same data directory) and
  waits for it to catch up. ``bench.cluster.TRIALS`` trials.
- ``etcd_election_timeout_ms`` beside them: etcd's configured election timeout
  (its default, 1,000 ms; Rota's is 500 ms), the floor for its failover.

Without an ``etcd`` binary the section is skipped: it returns no metrics and a
context note saying so (``make bench`` installs ``etcd-server`` when root).

Sizes: ``ROTA_BENCH_ETCD_ROUNDS`` (default ``bench.tasks.ROUNDS``),
``ROTA_BENCH_ETCD_SLICE_S`` (default ``bench.tasks.SLICE_S``),
``ROTA_BENCH_FAILOVER_TRIALS`` (``bench.cluster``'s, default 10).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import cluster, load, tasks
from bench.core import Metric, SectionResult, env_int, percentile

CLIENT_BASE_PORT = 26_380  # member k: client CLIENT_BASE_PORT + k, peer PEER_BASE_PORT + k
PEER_BASE_PORT = 26_480
MEMBERS = 3
HEARTBEAT_MS = 100  # etcd's defaults, passed explicitly so the context states them
ELECTION_MS = 1000
ROUNDS = env_int("ROTA_BENCH_ETCD_ROUNDS", tasks.ROUNDS)
SLICE_S = env_int("ROTA_BENCH_ETCD_SLICE_S", tasks.SLICE_S)
READY_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.005
PUT_KEY = b"rota-bench/key"


def etcd_path() -> str | None:
    return shutil.which("etcd")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def put_body(key: bytes, value: bytes) -> str:
    """The gateway's ``PutRequest`` JSON: bytes fields are base64."""
    return json.dumps({"key": b64(key), "value": b64(value)})


@dataclass(frozen=True, slots=True)
class Status:
    """What ``/v3/maintenance/status`` says of one member (ids are uint64, which the
    gateway writes as JSON strings; a leader of 0 is none)."""

    member_id: int
    leader_id: int
    raft_index: int
    raft_term: int

    @property
    def is_leader(self) -> bool:
        return self.leader_id != 0 and self.leader_id == self.member_id


def parse_status(body: Mapping[str, object]) -> Status:
    header = body.get("header")
    assert isinstance(header, dict), body

    def u64(value: object) -> int:
        return int(str(value)) if value is not None else 0

    return Status(
        u64(header.get("member_id")),
        u64(body.get("leader")),
        u64(body.get("raftIndex")),
        u64(body.get("raftTerm")),
    )


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    """``members`` etcd processes on loopback under ``workdir``, each in its own process
    group; ``stop`` sends SIGTERM, waits a bounded time, then SIGKILL."""

    workdir: Path
    members_total: int = MEMBERS
    client_base_port: int = CLIENT_BASE_PORT
    peer_base_port: int = PEER_BASE_PORT
    members: dict[str, EtcdMember] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in range(1, self.members_total + 1):
            name = f"e{k}"
            self.members[name] = EtcdMember(
                name,
                f"http://127.0.0.1:{self.client_base_port + k}",
                f"http://127.0.0.1:{self.peer_base_port + k}",
                self.workdir / name,
            )

    def argv(self, m: EtcdMember) -> list[str]:
        etcd = etcd_path()
        assert etcd is not None
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members.values())
        return [
            etcd,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            "rota-bench",
            "--initial-cluster-state",
            "new",  # ignored once the data directory exists (a restart)
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
            "--election-timeout",
            str(ELECTION_MS),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]

    def start_member(self, name: str) -> None:
        m = self.members[name]
        assert not m.alive(), f"{name} is already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"{name}.log").open("ab") as log:
            m.proc = subprocess.Popen(
                self.argv(m),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self) -> None:
        for name in self.members:
            self.start_member(name)
        self.wait_leader()

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        for m in self.members.values():
            if m.proc is None or m.proc.poll() is not None:
                continue
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=STOP_TIMEOUT_S)

    # ------------------------------------------------------------------ gateway
    def post(self, name: str, path: str, body: str, timeout_s: float = 2.0) -> dict[str, object]:
        req = urllib.request.Request(
            self.members[name].client_url + path,
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            parsed = json.loads(resp.read())
            assert isinstance(parsed, dict), parsed
            return parsed

    def status(self, name: str, timeout_s: float = 1.0) -> Status | None:
        try:
            return parse_status(self.post(name, "/v3/maintenance/status", "{}", timeout_s))
        except (OSError, urllib.error.URLError, ValueError, AssertionError):
            return None

    def put(self, name: str, key: bytes, value: bytes, timeout_s: float = 2.0) -> bool:
        try:
            self.post(name, "/v3/kv/put", put_body(key, value), timeout_s)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def wait_leader(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Wait until every running member names the same leader, itself running and
        saying so; return its name."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = {n: self.status(n) for n, m in self.members.items() if m.alive()}
            leaders = {s.leader_id if s else None for s in statuses.values()}
            if len(leaders) == 1 and None not in leaders and 0 not in leaders:
                for name, s in statuses.items():
                    if s is not None and s.is_leader:
                        return name
            time.sleep(0.05)
        raise TimeoutError(f"no agreed etcd leader within {timeout_s} s (see {self.workdir})")

    def wait_caught_up(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        leader = self.wait_leader(timeout_s)
        target = self.status(leader)
        assert target is not None
        deadline = time.monotonic() + timeout_s
        while (s := self.status(name)) is None or s.raft_index < target.raft_index:
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd {name} did not catch up in {timeout_s:.0f} s")
            time.sleep(0.05)


def failover_trial(c: EtcdCluster) -> float:
    """SIGKILL the leader; ms until a survivor reports a new leader and a put commits."""
    leader = c.wait_leader()
    old = c.status(leader)
    assert old is not None
    survivors = [n for n in c.members if n != leader]
    start = time.perf_counter()
    c.kill(leader)
    elapsed_ms: float | None = None
    while elapsed_ms is None:
        if time.perf_counter() - start > FAILOVER_TIMEOUT_S:
            raise TimeoutError(f"no etcd failover within {FAILOVER_TIMEOUT_S} s")
        for name in survivors:
            s = c.status(name, timeout_s=0.5)
            if s is None or s.leader_id in (0, old.member_id):
                continue
            if c.put(name, PUT_KEY + b"/failover", b"1", timeout_s=2.0):
                elapsed_ms = (time.perf_counter() - start) * 1000
                break
        else:
            time.sleep(POLL_S)
    c.start_member(leader)
    c.wait_caught_up(leader)
    return elapsed_ms


def put_request(c: EtcdCluster, name: str) -> load.Request:
    """The load's request: a put on member ``name``, no auth (etcd's is off here)."""
    return load.Request(c.members[name].client_url, "POST", "/v3/kv/put", "")


def task_sized_value() -> bytes:
    """The value each put writes: the JSON body of one Rota task submission."""
    return json.dumps(tasks.TASK).encode()


def skipped() -> SectionResult:
    return SectionResult(
        [],
        {
            "skipped": "etcd not installed (Debian package etcd-server; `make bench` "
            "installs it when root): no etcd figures in this run"
        },
    )


def run(workdir: Path) -> SectionResult:
    if etcd_path() is None:
        return skipped()
    started = time.perf_counter()
    c = EtcdCluster(workdir / "etcd")
    c.start()
    try:
        leader = c.wait_leader()
        body = put_body(PUT_KEY, task_sized_value())
        rounds = [
            load.for_duration(
                put_request(c, leader),
                body,
                tasks.CONNECTIONS,
                SLICE_S,
                workdir / f"round{i}" / "put",
            )
            for i in range(ROUNDS)
        ]
        trials = sorted(failover_trial(c) for _ in range(cluster.TRIALS))
    finally:
        c.stop()
    version = subprocess.run(
        [str(etcd_path()), "--version"], capture_output=True, text=True, timeout=10
    ).stdout.splitlines()
    rates = [r.ok_per_s() for r in rounds]
    return SectionResult(
        [
            Metric("etcd_puts_committed_per_s", statistics.median(rates), "puts/s"),
            Metric("etcd_put_non_2xx_answers", float(sum(r.not_ok for r in rounds)), "answers"),
            Metric("etcd_failover_ms_p50", statistics.median(trials), "ms"),
            Metric("etcd_failover_ms_p99", percentile(trials, 99), "ms"),
            Metric("etcd_election_timeout_ms", float(ELECTION_MS), "ms"),
        ],
        {
            "etcd_version": version[0] if version else "unknown",
            "members": MEMBERS,
            "engine": rounds[0].engine,
            "target": "the leader's client URL, JSON gateway /v3/kv/put",
            "connections": tasks.CONNECTIONS,
            "rounds": ROUNDS,
            "slice_s": SLICE_S,
            "value_bytes": len(task_sized_value()),
            "heartbeat_ms": HEARTBEAT_MS,
            "per_round_per_s": [round(x, 1) for x in rates],
            "socket_errors": sum(r.socket_errors for r in rounds),
            "slices": [r.to_json() for r in rounds],
            "failover_trials_ms": [round(t, 1) for t in trials],
            "failover_end": "a survivor reports a new leader and a put to it commits",
            "runtime_s": round(time.perf_counter() - started, 1),
        },
    )
