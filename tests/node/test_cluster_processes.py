"""Real ``rota agent`` processes on loopback: elections, failover, restart, membership,
graceful and frozen leaders. Each test starts its own cluster on free ports."""

from __future__ import annotations

import random
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.devcluster import LocalCluster, free_http_base

pytestmark = pytest.mark.slow


def free_base(span: int = 10) -> int:
    return free_http_base(span)


def start(tmp_path: Path, n: int, voters: int = 0) -> LocalCluster:
    c = LocalCluster(tmp_path / "cluster", n, free_base(), voters=voters)
    c.start()
    return c


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[LocalCluster]:
    c = start(tmp_path, 3)
    try:
        yield c
    finally:
        c.stop()


def view(c: LocalCluster, name: str) -> dict[str, object]:
    v = c.cluster_view(name)
    assert v is not None, f"{name} does not answer"
    return v


def leaders_seen(c: LocalCluster) -> set[str]:
    out = set()
    for name, node in c.nodes.items():
        if node.alive():
            v = c.cluster_view(name)
            if v and v.get("leader"):
                out.add(str(v["leader"]))
    return out


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_nodes_elect_exactly_one_leader_and_survive_a_killed_leader(
    cluster3: LocalCluster,
) -> None:
    c = cluster3
    leader = c.wait_leader()
    assert leaders_seen(c) == {leader}
    before = view(c, leader)
    c.kill(leader)
    others = [n for n in c.nodes if n != leader]
    new_leader = c.wait_leader(others, timeout_s=15)
    assert new_leader != leader
    after = view(c, new_leader)
    assert int(after["term"]) > int(before["term"])  # type: ignore[call-overload]
    # The new leader commits its own no-op: the commit index moves past the old one.
    assert int(after["commit_index"]) > int(before["commit_index"])  # type: ignore[call-overload]
    # The killed node restarts from its LMDB data and catches up.
    c.start_node(leader)
    target = int(after["commit_index"])  # type: ignore[call-overload]

    def caught_up() -> bool:
        v = c.cluster_view(leader)
        if v is None:
            return False
        me = next(m for m in v["members"] if m["id"] == leader)  # type: ignore[attr-defined]
        return v["leader"] == new_leader and int(me["applied_index"]) >= target

    wait_for(caught_up, 20, "the restarted node to catch up")


def test_five_nodes_elect_one_leader(tmp_path: Path) -> None:
    c = start(tmp_path, 5)
    try:
        leader = c.wait_leader()
        assert leaders_seen(c) == {leader}
        members = view(c, leader)["members"]
        assert [m["role"] for m in members].count("leader") == 1  # type: ignore[attr-defined]
        assert len(members) == 5  # type: ignore[arg-type]
    finally:
        c.stop()


def test_sigterm_on_the_leader_hands_over_before_exit(cluster3: LocalCluster) -> None:
    c = cluster3
    leader = c.wait_leader()
    term = int(view(c, leader)["term"])  # type: ignore[call-overload]
    assert c.stop_node(leader) == 0
    others = [n for n in c.nodes if n != leader]
    new_leader = c.wait_leader(others, timeout_s=10)
    log = (c.nodes[leader].log_path or Path()).read_text()
    assert f"leadership handed to {new_leader}" in log
    # A transfer is one clean election: exactly one term later.
    assert int(view(c, new_leader)["term"]) == term + 1  # type: ignore[call-overload]


def test_frozen_leader_is_replaced_and_steps_down_without_disruption(
    cluster3: LocalCluster,
) -> None:
    c = cluster3
    leader = c.wait_leader()
    c.signal(leader, signal.SIGSTOP)
    others = [n for n in c.nodes if n != leader]
    new_leader = c.wait_leader(others, timeout_s=15)
    term = int(view(c, new_leader)["term"])  # type: ignore[call-overload]
    c.signal(leader, signal.SIGCONT)

    def old_leader_follows() -> bool:
        v = c.cluster_view(leader)
        return v is not None and v["leader"] == new_leader

    wait_for(old_leader_follows, 10, "the resumed leader to follow the new one")
    time.sleep(2.0)  # a disruptive resumed node would force a new election by now
    assert view(c, new_leader)["leader"] == new_leader
    assert int(view(c, new_leader)["term"]) == term  # type: ignore[call-overload]


def test_late_node_joins_as_learner_and_is_promoted_when_a_voter_goes(
    cluster3: LocalCluster,
) -> None:
    c = cluster3
    leader = c.wait_leader()
    n4 = c.add_node().name

    def role_of(node: str) -> str | None:
        v = c.cluster_view(leader)
        if v is None:
            return None
        roles = {m["id"]: m["role"] for m in v["members"]}  # type: ignore[attr-defined]
        return roles.get(node)

    wait_for(lambda: role_of(n4) == "learner", 45, f"{n4} to join as a learner")
    victim = next(n for n in ("n1", "n2", "n3") if n != leader)
    req = urllib.request.Request(
        c.nodes[leader].api + f"/api/v1/cluster/members/{victim}",
        method="DELETE",
        headers={"Authorization": f"Bearer {c.admin_token}"},
    )

    def remove() -> bool:
        # The learner shows in the leader's configuration as soon as it is appended;
        # until that change commits, another one is refused with 409: try again.
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as e:
            detail = e.read().decode()
            assert e.code == 409 and "pending" in detail, (e.code, detail)
            return False

    wait_for(remove, 15, f"the removal of {victim} to be accepted")
    wait_for(lambda: role_of(n4) == "follower", 45, f"{n4} to be promoted to voter")
    assert role_of(victim) is None


def test_garbage_on_peer_and_gossip_ports_leaves_the_node_serving(
    cluster3: LocalCluster,
) -> None:
    c = cluster3
    leader = c.wait_leader()
    term = int(view(c, leader)["term"])  # type: ignore[call-overload]
    node = c.nodes[leader]
    rng = random.Random(7)
    payloads = [
        b"",
        b"\xff\xff\xff\xff" + b"x" * 64,  # a 4 GiB length prefix
        b"\x00\x00\x00\x10\x93",  # truncated frame
        *(rng.randbytes(rng.randrange(1, 512)) for _ in range(40)),
    ]
    for data in payloads:
        with socket.create_connection(("127.0.0.1", node.raft_port), timeout=2) as s:
            s.sendall(data)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(data or b"\x00", ("127.0.0.1", node.gossip_port))
    time.sleep(1.0)
    assert node.alive()
    assert view(c, leader)["leader"] == leader
    assert int(view(c, leader)["term"]) == term  # type: ignore[call-overload]
    assert leaders_seen(c) == {leader}
