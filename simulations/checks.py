"""Safety invariants of a simulated Raft cluster, checked incrementally after every event.

The simulator reports what happens (a node became leader, persisted entries, applied
an entry, restarted with some durable state, answered a read); ``Checker`` keeps just
enough global history to decide, at each report, whether a Raft guarantee broke:

- Election Safety: at most one leader per term, ever.
- Leader Append-Only: a leader only appends to its log within its term.
- Log Matching: two logs holding an entry with the same index and term hold the same
  entries up to it (each persisted entry gets a chain hash over its predecessors;
  one (index, term) must always have one chain hash).
- Leader Completeness / committed never lost: a new leader's log holds every entry
  known committed (same chain hash at the highest committed index it still has).
- State Machine Safety: no two nodes apply different entries at one index.
- Durable state: term never decreases, a vote within a term never changes, and the
  applied index never goes backwards, across restarts too.
- Reads: a ReadIndex answer is at least the highest commit index any node knew
  when the read was asked.

A violation raises ``Violation`` with a one-line description; the simulator adds the
seed and the replay command.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from consensus.types import Entry, HardState, NodeId


class Violation(AssertionError):
    """A broken invariant."""


def chain_hash(prev: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(prev, digest_size=12)
    h.update(f"{e.index}:{e.term}:{int(e.type)}:".encode())
    h.update(e.data)
    return h.digest()


@dataclass
class NodeHistory:
    chain: dict[int, bytes] = field(default_factory=dict)  # index -> chain hash of its log
    last_index: int = 0
    hard: HardState = field(default_factory=HardState)
    applied: int = 0
    leader_term: int = 0  # term in which it is leader (0: not leader)


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.chains: dict[tuple[int, int], bytes] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.committed_max = 0
        self.nodes: dict[NodeId, NodeHistory] = {}
        self.checks = 0

    def node(self, n: NodeId) -> NodeHistory:
        return self.nodes.setdefault(n, NodeHistory())

    # ------------------------------------------------------------------ reports
    def became_leader(self, n: NodeId, term: int) -> None:
        self.checks += 1
        other = self.leaders.setdefault(term, n)
        if other != n:
            raise Violation(f"election safety: {other} and {n} both lead term {term}")
        h = self.node(n)
        h.leader_term = term
        top = self.committed_max
        while top > 0 and top not in h.chain:
            top -= 1  # compacted below: the snapshot covered it
        if top and self._chain_at(top) is not None and h.chain[top] != self._chain_at(top):
            raise Violation(f"leader completeness: {n} (term {term}) lacks committed entry {top}")
        if self.committed_max > h.last_index:
            raise Violation(
                f"leader completeness: {n} (term {term}) log ends at {h.last_index}, "
                f"below committed {self.committed_max}"
            )

    def stepped_down(self, n: NodeId) -> None:
        self.node(n).leader_term = 0

    def persisted(self, n: NodeId, entries: tuple[Entry, ...], hard: HardState | None) -> None:
        """Entries and hard state a node made durable (one Ready)."""
        self.checks += 1
        h = self.node(n)
        if hard is not None:
            self._check_hard(n, h.hard, hard)
            h.hard = hard
        if not entries:
            return
        first = entries[0].index
        if h.leader_term and first != h.last_index + 1:
            raise Violation(
                f"leader append-only: leader {n} of term {h.leader_term} rewrote from {first}"
            )
        for i in [i for i in h.chain if i >= first]:
            del h.chain[i]
        prev = h.chain.get(first - 1, b"")
        for e in entries:
            prev = chain_hash(prev, e)
            known = self.chains.setdefault((e.index, e.term), prev)
            if known != prev:
                raise Violation(
                    f"log matching: {n} holds entry {e.index}/{e.term} with a different history"
                )
            h.chain[e.index] = prev
        h.last_index = entries[-1].index

    def installed_snapshot(self, n: NodeId, index: int, term: int) -> None:
        h = self.node(n)
        h.chain = {index: self.chains.get((index, term), b"")} if index else {}
        h.last_index = index
        h.applied = max(h.applied, index)
        self.committed_max = max(self.committed_max, index)

    def compacted(self, n: NodeId, index: int) -> None:
        h = self.node(n)
        for i in [i for i in h.chain if i < index]:
            del h.chain[i]

    def applied_entry(self, n: NodeId, e: Entry) -> None:
        self.checks += 1
        h = self.node(n)
        if e.index <= h.applied:
            raise Violation(f"applied index regressed on {n}: {e.index} after {h.applied}")
        h.applied = e.index
        seen = self.applied.setdefault(e.index, (e.term, e.data))
        if seen != (e.term, e.data):
            raise Violation(
                f"state machine safety: {n} applied {e.index}/{e.term} but another node "
                f"applied {e.index}/{seen[0]}"
            )
        self.committed_max = max(self.committed_max, e.index)

    def restarted(self, n: NodeId, hard: HardState, applied: int) -> None:
        """A node came back with this durable hard state and applied index."""
        self.checks += 1
        h = self.node(n)
        self._check_hard(n, h.hard, hard)
        h.hard = hard
        if applied < h.applied:
            raise Violation(f"applied index regressed on {n} across restart: {applied}")
        h.leader_term = 0

    def read_answered(self, n: NodeId, index: int, commit_known_at_request: int) -> None:
        self.checks += 1
        if index < commit_known_at_request:
            raise Violation(
                f"read index: {n} answered {index}, below commit {commit_known_at_request} "
                "known when the read was asked"
            )

    # ----------------------------------------------------------------- helpers
    def _chain_at(self, index: int) -> bytes | None:
        seen = self.applied.get(index)
        return None if seen is None else self.chains.get((index, seen[0]))

    @staticmethod
    def _check_hard(n: NodeId, old: HardState, new: HardState) -> None:
        if new.term < old.term:
            raise Violation(f"term regressed on {n}: {new.term} after {old.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            raise Violation(f"vote changed on {n} in term {new.term}: {old.vote} -> {new.vote}")
