"""Regression tests for bugs found in the Raft core (each failed before its fix):
a removed leader stepping down, a blank joiner learning the membership, restart
after an unsynced commit, a probe acknowledged at the match index, and the
snapshot window after a follower restarts mid-transfer."""

from __future__ import annotations

from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    HeartbeatResponse,
    InstallSnapshot,
    Role,
)
from tests.consensus.cores import drain, make_leader
from tests.consensus.network import Network


def test_a_leader_removing_itself_steps_down_once_the_removal_commits() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.nodes["a"].propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "a"))
    net.settle()
    assert net.nodes["a"].role is Role.FOLLOWER
    assert net.nodes["b"].commit_index == net.nodes["c"].commit_index == 2
    net.tick(40)
    assert len(net.leaders()) == 1 and net.leaders()[0] in "bc"


def test_a_blank_joining_node_learns_the_bootstrap_voters() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.add_blank("d", ConfState())
    net.nodes["a"].propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    net.settle()
    assert net.nodes["d"].conf() == net.nodes["a"].conf()
    net.nodes["a"].propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))
    net.settle()
    net.isolate("a")
    for _ in range(30):
        net.nodes["d"].tick()
    assert net.nodes["d"].role is not Role.LEADER  # d alone is not a quorum of four


def test_a_driver_that_syncs_only_when_asked_can_restart_after_applying() -> None:
    net = Network(["a", "b", "c"], sync_policy="ready")
    net.elect("a")
    net.nodes["a"].propose(b"x")
    net.settle()
    assert net.applied_index["c"] == 2
    r = net.restart("c")
    assert r.commit_index >= r.applied_index == 2


def test_an_accepted_probe_resumes_replication_at_once() -> None:
    r = make_leader()
    r.report_unreachable("b")
    r.step(HeartbeatResponse(1, "b", "a"))
    (probe,) = drain(r)
    assert probe == AppendEntries(1, "a", "b", 1, 1, (), 1)
    r.step(AppendEntriesResponse(1, "b", "a", 1))
    r.propose(b"x")
    assert AppendEntries(1, "a", "b", 1, 1, (Entry(2, 1, data=b"x"),), 1) in drain(r)


def test_snapshot_window_holds_when_the_follower_restarts_mid_transfer() -> None:
    net = Network(["a", "b", "c"], max_snapshot_chunk_bytes=4, max_snapshot_inflight_chunks=2)
    net.elect("a")
    net.isolate("c")
    for k in range(6):
        net.nodes["a"].propose(b"x%d" % k)
    net.settle()
    net.take_snapshot("a", 6)
    net.heal()
    chunks_sent = 0
    window = 0
    for _ in range(20):
        net.nodes["a"].tick()
        for _ in range(10):
            net.process_all()
            if not net.inbox:
                break
            batch, net.inbox = net.inbox, []
            in_flight = [m for m in batch if isinstance(m, InstallSnapshot)]
            chunks_sent += len(in_flight)
            window = max(window, len(in_flight))
            for m in batch:
                net.deliver(m)
            if chunks_sent == 2 and net.nodes["c"].receiver.meta is not None:
                net.process_all()  # c's acknowledgements of both chunks go out
                net.restart("c")  # then c crashes, losing its half-received snapshot
    assert net.applied_index["c"] == 7
    assert window <= 2
    assert chunks_sent <= 12  # 2 before the crash, 2 lost, the image once more, slack


def test_a_leader_whose_own_removal_is_uncommitted_may_still_campaign() -> None:
    """Thesis §4.2.2: while the change removing it is uncommitted, a server that stepped
    down (here on CheckQuorum) keeps campaigning; it may hold the only complete log
    (simulator seed 4911 found the cluster without a leader otherwise)."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.isolate("a")
    net.nodes["a"].propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "a"))
    a = net.nodes["a"]
    roles = set()
    for _ in range(80):  # CheckQuorum steps it down, then its election timer runs out
        net.tick(1, only=["a"])
        roles.add(a.role)
    assert "a" not in a.conf().voters
    assert Role.FOLLOWER in roles and Role.PRE_CANDIDATE in roles
