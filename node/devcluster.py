"""A local cluster of real ``rota agent`` processes: what ``rota dev`` runs, and what the
real-process tests and fault scenarios drive.

Layout (the contract scripts rely on, SPEC "Getting started"): node ``nK`` keeps its
data in ``DIR/nK/`` and its process id in ``DIR/nK/agent.pid``; its API listens on
``127.0.0.1:(http_port + K - 1)``; its Raft transport on ``raft_port_base + K - 1`` and
its gossip on ``gossip_port_base + K - 1``. Shared secrets live in ``DIR/secrets/``
(the cluster key and the JWT signing key pair); an admin token is written to
``DIR/admin.token``.

Rules: every child is started with its own process group so a signal reaches only
it; ``stop`` sends SIGTERM, waits a bounded time, then SIGKILL; nothing here waits
without a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from node import auth

STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0


@dataclass
class DevNode:
    name: str
    index: int
    data_dir: Path
    http_port: int
    raft_port: int
    gossip_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    data_dir: Path
    nodes_total: int = 3
    http_port: int = 8080
    raft_port_base: int = 0
    gossip_port_base: int = 0
    voters: int = 0
    tick_ms: int = 50
    extra_args: list[str] = field(default_factory=list)  # flags for every agent
    node_args: dict[str, list[str]] = field(default_factory=dict)  # and for one, by name
    nodes: dict[str, DevNode] = field(default_factory=dict)
    admin_token: str = ""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.raft_port_base = self.raft_port_base or self.http_port + 1000
        self.gossip_port_base = self.gossip_port_base or self.http_port + 2000
        self.voters = self.voters or min(self.nodes_total, 5)
        for k in range(1, self.nodes_total + 1):
            self._describe(k)

    def _describe(self, k: int) -> DevNode:
        name = f"n{k}"
        node = DevNode(
            name,
            k,
            self.data_dir / name,
            self.http_port + k - 1,
            self.raft_port_base + k - 1,
            self.gossip_port_base + k - 1,
        )
        self.nodes[name] = node
        return node

    # ------------------------------------------------------------------ secrets
    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def prepare(self) -> str:
        """Create the data layout and secrets once; mint and write an admin token."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        paths = auth.ensure_dev_secrets(self.secrets_dir)
        self.admin_token = auth.mint_token_from_files(paths, role="admin", ttl_s=7 * 86400)
        token_file = self.data_dir / "admin.token"
        token_file.write_text(self.admin_token + "\n")
        token_file.chmod(0o600)
        return self.admin_token

    # ---------------------------------------------------------------- processes
    def agent_argv(self, node: DevNode) -> list[str]:
        voters = [f"n{k}" for k in range(1, self.voters + 1)]
        peers = ",".join(
            f"{n.name}=127.0.0.1:{n.raft_port}" for n in self.nodes.values() if n.name in voters
        )
        seeds = ",".join(
            f"127.0.0.1:{n.gossip_port}" for n in self.nodes.values() if n.name in voters
        )
        return [
            sys.executable,
            "-m",
            "node",
            "agent",
            "--node-id",
            node.name,
            "--data-dir",
            str(node.data_dir),
            "--bind-host",
            "127.0.0.1",
            "--http-port",
            str(node.http_port),
            "--raft-port",
            str(node.raft_port),
            "--gossip-port",
            str(node.gossip_port),
            "--peers",
            peers,
            "--join",
            seeds,
            "--bootstrap-expect",
            str(self.voters),
            "--tick-ms",
            str(self.tick_ms),
            "--secrets-dir",
            str(self.secrets_dir),
            *self.extra_args,
            *self.node_args.get(node.name, []),
        ]

    def start_node(self, name: str) -> DevNode:
        node = self.nodes[name]
        assert not node.alive(), f"{name} is already running"
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.log_path = node.data_dir / "agent.log"
        log = node.log_path.open("ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        node.proc = subprocess.Popen(
            self.agent_argv(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        log.close()
        return node

    def start(self) -> None:
        if not self.admin_token:
            self.prepare()
        for name in self.nodes:
            self.start_node(name)

    def add_node(self) -> DevNode:
        """Describe and start one more node that joins by gossip as a learner."""
        node = self._describe(len(self.nodes) + 1)
        return self.start_node(node.name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        proc = self.nodes[name].proc
        if proc is not None:
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop_node(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        node = self.nodes[name]
        if node.proc is None:
            return None
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGCONT)
            os.kill(node.proc.pid, signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=timeout_s)
        return node.proc.returncode

    def stop(self) -> None:
        for name in self.nodes:
            self.stop_node(name)

    # --------------------------------------------------------------------- API
    def get(self, name: str, path: str, timeout_s: float = 2.0) -> dict[str, object]:
        req = urllib.request.Request(
            self.nodes[name].api + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body

    def post(self, name: str, path: str, body: object, timeout_s: float = 5.0) -> object:
        req = urllib.request.Request(
            self.nodes[name].api + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read() or b"null")

    def cluster_view(self, name: str) -> dict[str, object] | None:
        try:
            return self.get(name, "/api/v1/cluster", timeout_s=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_leader(
        self, among: list[str] | None = None, timeout_s: float = READY_TIMEOUT_S
    ) -> str:
        """Wait until every node in ``among`` reports the same leader, one of ``among``
        (by default every running node); return it."""
        deadline = time.monotonic() + timeout_s
        names = among or [n for n, node in self.nodes.items() if node.alive()]
        while time.monotonic() < deadline:
            seen = set()
            for name in names:
                view = self.cluster_view(name)
                seen.add(view.get("leader") if view else None)
            if len(seen) == 1 and None not in seen:
                leader = seen.pop()
                assert isinstance(leader, str)
                if leader in names:
                    return leader
            time.sleep(0.1)
        raise TimeoutError(f"no agreed leader among {names} within {timeout_s} s")


def free_http_base(nodes: int) -> int:
    """An HTTP base port for ``nodes`` local agents whose API, Raft (+1000) and gossip
    (+2000) ports are all free (TCP and UDP): for tests and benchmarks that run
    clusters side by side."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        ports = [base + offset + k for offset in (0, 1000, 2000) for k in range(nodes)]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range for a local cluster")


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def run_dev(data_dir: Path, nodes_total: int, http_port: int) -> int:
    """``rota dev``: start the cluster, print how to reach it, stop it all on Ctrl-C."""
    cluster = LocalCluster(data_dir, nodes_total, http_port)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # stop the children on SIGTERM too
    token = cluster.prepare()
    cluster.start()
    for node in cluster.nodes.values():
        (node.data_dir / "agent.pid").parent.mkdir(parents=True, exist_ok=True)
    print(f"rota dev: starting {nodes_total} nodes under {cluster.data_dir}", flush=True)
    try:
        leader = cluster.wait_leader()
        print(f"rota dev: leader is {leader}", flush=True)
        for node in cluster.nodes.values():
            print(f"  {node.name}: {node.api}  (data {node.data_dir})", flush=True)
        print(f"dashboard: {cluster.nodes['n1'].api}/", flush=True)
        print(f"admin token (also in {cluster.data_dir / 'admin.token'}):\n{token}", flush=True)
        print("Ctrl-C stops the cluster.", flush=True)
        while any(n.alive() for n in cluster.nodes.values()):
            time.sleep(0.5)
        print("rota dev: every node has exited", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nrota dev: stopping", flush=True)
        return 0
    except TimeoutError as e:
        print(f"rota dev: {e}; see the agent.log files", flush=True)
        return 1
    finally:
        cluster.stop()
