"""Seeded random runs of small clusters, checking Raft's safety properties throughout.

Each case drives a ``Network`` through random ticks, proposals, reads, leadership
transfers, partitions, message loss, duplication and reordering, crashes, snapshots
and membership changes, and after every step checks ``Network.check_invariants``
(election safety, log matching, leader completeness, state machine safety) and that
every released read point is linearizable: at least the highest commit index any
node knew when the read was asked. Liveness is checked at the end: once the network
heals, a leader is elected and every voter applies the same entries.

A failure names its profile and seed; rerun one with ``-k "tight_seed_17"``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import pytest

from consensus.raft import RaftError
from consensus.types import ConfChange, ConfChangeOp
from tests.consensus.network import Network

STEPS = 250
IDS = ["a", "b", "c", "d", "e"]
PROFILES: dict[str, dict[str, Any]] = {
    # Roomy flow control: many entries per message, whole snapshots in one chunk.
    "roomy": {"max_msg_bytes": 200},
    # Tight flow control: tiny windows and snapshot chunks, so that every pause, probe
    # and chunk-resend path runs often.
    "tight": {
        "max_inflight_msgs": 2,
        "max_snapshot_chunk_bytes": 8,
        "max_snapshot_inflight_chunks": 1,
    },
}
CASES = [(p, s) for p, n in (("roomy", 40), ("tight", 30)) for s in range(n)]


class Run:
    """One random run: the network, its RNG, and the read points asked for."""

    def __init__(self, profile: str, seed: int) -> None:
        self.rng = random.Random(seed)
        # Four voters and a learner, so that membership changes have room to move.
        self.net = Network(IDS[:4], seed=seed, learners=IDS[4:], **PROFILES[profile])
        self.read_floor: dict[bytes, int] = {}
        self.step = 0
        self.actions: list[tuple[int, Callable[[], None]]] = [
            (35, lambda: self.net.tick(1)),
            (18, self.propose),
            (5, self.read),
            (2, self.transfer),
            (7, lambda: self.net.isolate(self.any_node())),
            (6, lambda: self.net.cut_link(*self.rng.sample(sorted(self.net.nodes), 2))),
            (8, self.net.heal),
            (4, self.lose),
            (3, self.duplicate),
            (4, self.reorder),
            (4, self.crash),
            (3, self.snapshot),
            (3, self.change_membership),
            (2, self.long_wait),
        ]

    def any_node(self) -> str:
        return self.rng.choice(sorted(self.net.nodes))

    def newest_leader(self) -> str | None:
        leaders = self.net.leaders()
        return max(leaders, key=lambda i: self.net.nodes[i].term) if leaders else None

    # ---------------------------------------------------------------- actions
    def propose(self) -> None:
        leader = self.newest_leader()
        if leader is not None:
            with contextlib.suppress(RaftError):
                self.net.nodes[leader].propose(b"v%d" % self.step)
        self.net.settle()

    def read(self) -> None:
        ctx = b"r%d" % self.step
        self.read_floor[ctx] = max(r.commit_index for r in self.net.nodes.values())
        with contextlib.suppress(RaftError):
            self.net.nodes[self.any_node()].read_index(ctx)
        self.net.settle()

    def transfer(self) -> None:
        leader = self.newest_leader()
        if leader is not None:
            with contextlib.suppress(RaftError):
                self.net.nodes[leader].transfer_leadership(self.rng.choice(IDS))
        self.net.settle()

    def lose(self) -> None:
        self.net.process_all()
        if self.net.inbox:
            del self.net.inbox[self.rng.randrange(len(self.net.inbox))]

    def duplicate(self) -> None:
        self.net.process_all()
        if self.net.inbox:
            self.net.inbox.append(self.rng.choice(self.net.inbox))

    def reorder(self) -> None:
        """Deliver a few pending messages picked at random, overtaking older ones."""
        for _ in range(self.rng.randint(1, 8)):
            self.net.process_all()
            if not self.net.inbox:
                return
            self.net.deliver(self.net.inbox.pop(self.rng.randrange(len(self.net.inbox))))

    def crash(self) -> None:
        self.net.restart(self.any_node())

    def snapshot(self) -> None:
        i = self.any_node()
        self.net.process_all()
        first, applied = self.net.storages[i].first_index(), self.net.applied_index[i]
        if applied > first:
            self.net.take_snapshot(i, self.rng.randint(first, applied))

    def change_membership(self) -> None:
        leader = self.newest_leader()
        if leader is None:
            return
        conf = self.net.nodes[leader].conf()
        node = self.rng.choice(IDS)
        op: ConfChangeOp | None = ConfChangeOp.ADD_LEARNER
        if node in conf.learners:
            op = ConfChangeOp.PROMOTE
        elif node in conf.voters:
            # Never the leader itself: that crashes the core (see test_raft_core_bugs.py).
            op = ConfChangeOp.REMOVE if len(conf.voters) > 3 and node != leader else None
        if op is not None:
            with contextlib.suppress(RaftError):
                self.net.nodes[leader].propose_conf_change(ConfChange(op, node))

    def long_wait(self) -> None:
        for _ in range(self.rng.randint(1, 20)):
            self.net.tick(1)

    # ----------------------------------------------------------------- checks
    def check(self) -> None:
        where = f"step {self.step}"
        violations = self.net.check_invariants()
        assert not violations, f"{where}: {violations}"
        self.net.process_all()
        for i, states in self.net.read_states.items():
            for rs in states:
                floor = self.read_floor[rs.ctx]
                assert rs.index >= floor, f"{where}: {i} read {rs.ctx!r} at {rs.index} < {floor}"
            states.clear()

    def everyone_applied(self, data: bytes) -> bool:
        """Whether a leader exists and every voter it knows applied ``data``."""
        leader = self.newest_leader()
        if leader is None:
            return False
        voters = self.net.nodes[leader].conf().voters
        return all(data in self.net.data_applied(i) for i in voters)

    def play(self, steps: int) -> None:
        weights = [w for w, _ in self.actions]
        for self.step in range(steps):
            (action,) = self.rng.choices([a for _, a in self.actions], weights)
            action()
            self.check()


@pytest.mark.parametrize(("profile", "seed"), CASES, ids=[f"{p}_seed_{s}" for p, s in CASES])
def test_random_cluster_stays_safe_and_recovers(profile: str, seed: int) -> None:
    run = Run(profile, seed)
    run.play(STEPS)
    net = run.net
    net.heal()
    # Liveness: a client retrying its proposal gets it applied by every voter.
    for _ in range(10):
        leader = run.newest_leader()
        if leader is not None:
            with contextlib.suppress(RaftError):  # e.g. a transfer is under way
                net.nodes[leader].propose(b"final")
        for _ in range(30):
            net.tick(1)
        if run.everyone_applied(b"final"):
            break
    run.check()
    assert run.everyone_applied(b"final"), "the cluster did not recover after healing"
