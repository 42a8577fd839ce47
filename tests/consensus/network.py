"""An in-memory network of Raft cores for tests: deliver, drop, cut, isolate, restart.

Theory of operation: every node is a ``Raft`` over a ``MemoryStorage``, driven the
way ``node/driver.py`` drives it: ``process(i)`` handles each ``Ready`` in the
required order (persist, send, apply, advance). Sent messages wait in one FIFO
``inbox``; ``settle()`` delivers them in rounds until nothing is left to do.

Rules:
- Deterministic: nodes are processed in sorted order, the inbox is FIFO, and each
  node's RNG is seeded from ``(seed, id)``, also across restarts.
- Links are cut one way (``cut_link``) or all around a node (``isolate``). A message
  crossing a cut link is dropped when it is delivered, so cutting a link also loses
  what was in flight on it; ``heal`` restores every link.
- A node's state machine is the list of ``(index, data)`` of the non-empty normal
  entries it applied. Its snapshot image is that list, encoded (``encode_image``), so
  a node that installs a snapshot holds the same data as the node that took it.
- Persistence: by default every write is synced, as the real driver does. With
  ``sync_policy="ready"`` a write is synced only when ``Ready.must_sync`` asks, so a
  restart loses the unsynced hard-state changes (see ``test_raft_core_bugs.py``).
- ``restart`` keeps the state machine (it is durable in the real node) and passes
  its applied index to the new core, as the driver does.
- ``check_invariants()`` checks Raft's safety properties (Figure 3 of the paper) over
  everything observed so far: election safety, log matching, leader completeness
  and state machine safety. Tests call it after each step of a scenario.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from consensus.raft import Config, Raft
from consensus.storage import MemoryStorage
from consensus.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

Applied = list[tuple[int, bytes]]
DeliverHook = Callable[[Message, bool], None]
SETTLE_ROUNDS_MAX = 10_000


def encode_image(items: Applied) -> bytes:
    """The snapshot image of a state machine: ``index=data`` items joined by ``;``."""
    return b";".join(b"%d=%s" % (i, d) for i, d in items)


def decode_image(image: bytes) -> Applied:
    out: Applied = []
    for item in image.split(b";") if image else []:
        index, _, data = item.partition(b"=")
        out.append((int(index), data))
    return out


class Network:
    def __init__(
        self,
        ids: list[NodeId],
        seed: int = 1,
        learners: list[NodeId] | None = None,
        sync_policy: str = "always",
        **overrides: object,
    ) -> None:
        assert sync_policy in ("always", "ready")
        self.conf = ConfState(voters=frozenset(ids), learners=frozenset(learners or ()))
        self.overrides = overrides
        self.sync_policy = sync_policy
        self.configs: dict[NodeId, Config] = {}
        self.storages: dict[NodeId, MemoryStorage] = {}
        self.nodes: dict[NodeId, Raft] = {}
        self.state: dict[NodeId, Applied] = {}
        self.applied_index: dict[NodeId, int] = {}
        self.read_states: dict[NodeId, list[ReadState]] = {}
        # Every entry any node applied, by index, and the leader seen in each term.
        self.applied_entries: dict[NodeId, dict[int, Entry]] = {}
        self.leader_of_term: dict[int, NodeId] = {}
        self.violations: list[str] = []
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.drop_types: set[type] = set()
        self.inbox: list[Message] = []
        self.held: list[Message] = []  # taken off the wire, to arrive late (``hold``)
        self.seed = seed
        for i in sorted(self.conf.members()):
            self.add(i, self.config(i), MemoryStorage(self.conf))

    def config(self, i: NodeId) -> Config:
        return Config(id=i, **self.overrides)  # type: ignore[arg-type]

    def add(self, i: NodeId, cfg: Config, storage: MemoryStorage) -> Raft:
        self.configs[i] = cfg
        self.storages[i] = storage
        self.nodes[i] = Raft(cfg, storage, random.Random(f"{self.seed}:{i}"))
        self.state.setdefault(i, [])
        self.applied_index.setdefault(i, 0)
        self.read_states.setdefault(i, [])
        self.applied_entries.setdefault(i, {})
        return self.nodes[i]

    def add_blank(self, i: NodeId, conf: ConfState | None = None) -> Raft:
        """A new machine with an empty log, started with configuration ``conf``.

        Configuration entries in the log are changes relative to the bootstrap
        configuration (the one at index 0), so a machine that will be caught up from
        index 1 must start with it; ``conf=ConfState()`` gives a truly blank machine
        (see ``test_raft_core_bugs.test_a_blank_joining_node_learns_the_bootstrap_voters``).
        """
        assert i not in self.nodes, f"{i} already exists"
        return self.add(i, self.config(i), MemoryStorage(self.conf if conf is None else conf))

    def restart(self, i: NodeId) -> Raft:
        """Crash ``i`` and start it again from its durable state.

        Lost: unsynced writes, the output of ``i`` not yet handed to the driver (call
        ``process_all`` first to crash just after a Ready), and the messages on their
        way to ``i``. Kept: the state machine, whose applied index the new core gets.
        """
        self.inbox = [m for m in self.inbox if m.dst != i]
        cfg = replace(self.configs[i], applied=self.applied_index[i])
        return self.add(i, cfg, self.storages[i].crashed())

    # ------------------------------------------------------------------ links
    def isolate(self, i: NodeId) -> None:
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def cut_link(self, src: NodeId, dst: NodeId) -> None:
        self.cut.add((src, dst))

    def heal(self) -> None:
        self.cut.clear()

    def drop(self, src: NodeId, dst: NodeId, limit: int | None = None) -> list[Message]:
        """Lose pending messages ``src -> dst`` (the oldest ``limit`` of them, or all)."""
        doomed = self.pending(src, dst)[:limit]
        dropped = [self.inbox[k] for k in doomed]
        for k in reversed(doomed):
            del self.inbox[k]
        return dropped

    # -------------------------------------------------------------- the driver
    def process(self, i: NodeId) -> None:
        """Handle every Ready of ``i``: persist, send (into the inbox), apply, advance."""
        r = self.nodes[i]
        while r.has_ready():
            rd = r.ready()
            sync = self.sync_policy == "always" or rd.must_sync
            self.storages[i].save(rd.hard_state, rd.entries, rd.snapshot, sync=sync)
            self.inbox.extend(m for m in rd.messages if type(m) not in self.drop_types)
            self._apply(i, rd)
            self.read_states[i].extend(rd.read_states)
            r.advance(rd)

    def _apply(self, i: NodeId, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.state[i] = decode_image(rd.snapshot.data)
            self.applied_index[i] = rd.snapshot.meta.index
        for e in rd.committed_entries:
            assert e.index == self.applied_index[i] + 1, f"{i} applies {e.index} out of order"
            if e.type is EntryType.NORMAL and e.data:
                self.state[i].append((e.index, e.data))
            self.applied_index[i] = e.index
            self.applied_entries[i][e.index] = e

    def process_all(self) -> None:
        for i in sorted(self.nodes):
            self.process(i)

    def deliver(self, m: Message, hook: DeliverHook | None = None) -> None:
        """Step one message into its destination, unless its link is cut."""
        dropped = (m.src, m.dst) in self.cut or m.dst not in self.nodes
        if hook is not None:
            hook(m, dropped)
        if not dropped:
            self.nodes[m.dst].step(m)
            self.observe()

    def pending(self, src: NodeId, dst: NodeId) -> list[int]:
        """Positions in the inbox of the messages waiting on ``src -> dst``, oldest first."""
        self.process_all()
        return [k for k, m in enumerate(self.inbox) if m.src == src and m.dst == dst]

    def deliver_one(
        self, src: NodeId, dst: NodeId, nth: int = 0, hook: DeliverHook | None = None
    ) -> bool:
        """Deliver the ``nth`` oldest pending message ``src -> dst`` (reordering it ahead
        of older ones when ``nth > 0``); False when there is no such message."""
        waiting = self.pending(src, dst)
        if nth >= len(waiting):
            return False
        self.deliver(self.inbox.pop(waiting[nth]), hook)
        return True

    def hold(self, src: NodeId, dst: NodeId) -> list[Message]:
        """Delay every pending message ``src -> dst`` until ``release``."""
        taken = self.drop(src, dst)
        self.held.extend(taken)
        return taken

    def release(self, src: NodeId, dst: NodeId) -> list[Message]:
        """Put the held messages ``src -> dst`` back on the wire, behind everything else."""
        back = [m for m in self.held if m.src == src and m.dst == dst]
        self.held = [m for m in self.held if not (m.src == src and m.dst == dst)]
        self.inbox.extend(back)
        return back

    def duplicate(self, src: NodeId, dst: NodeId) -> list[Message]:
        """Send every pending message ``src -> dst`` a second time (copies go last)."""
        copies = [self.inbox[k] for k in self.pending(src, dst)]
        self.inbox.extend(copies)
        return copies

    def settle(self, max_rounds: int = SETTLE_ROUNDS_MAX, hook: DeliverHook | None = None) -> None:
        """Process and deliver in rounds until nothing is left to do."""
        for _ in range(max_rounds):
            self.process_all()
            if not self.inbox:
                return
            batch, self.inbox = self.inbox, []
            for m in batch:
                self.deliver(m, hook)
        raise AssertionError("network did not settle")

    def tick(self, n: int = 1, only: list[NodeId] | None = None) -> None:
        """Let ``n`` ticks pass with the network working (settle after each tick)."""
        for _ in range(n):
            for i in sorted(self.nodes):
                if only is None or i in only:
                    self.nodes[i].tick()
            self.observe()
            self.settle()

    # ---------------------------------------------------------------- queries
    def elect(self, i: NodeId) -> None:
        self.nodes[i].campaign()
        self.settle()
        assert self.nodes[i].role is Role.LEADER, f"{i} is {self.nodes[i].role}"

    def leaders(self) -> list[NodeId]:
        return sorted(i for i, r in self.nodes.items() if r.role is Role.LEADER)

    def data_applied(self, i: NodeId) -> list[bytes]:
        return [d for _, d in self.state[i]]

    def take_snapshot(self, i: NodeId, index: int) -> Snapshot:
        """Snapshot ``i``'s state machine at ``index`` (applied) and compact its log there."""
        r, storage = self.nodes[i], self.storages[i]
        assert index <= self.applied_index[i], f"{i} has applied only {self.applied_index[i]}"
        image = encode_image([(k, d) for k, d in self.state[i] if k <= index])
        snap = Snapshot(SnapshotMeta(index, storage.term(index), r.conf_at(index)), image)
        storage.set_snapshot(snap)
        storage.compact(index)
        return snap

    # ------------------------------------------------------------- invariants
    def observe(self) -> None:
        """Record who leads each term; two leaders in one term break election safety."""
        for i, r in sorted(self.nodes.items()):
            if r.role is Role.LEADER:
                seen = self.leader_of_term.setdefault(r.term, i)
                if seen != i:
                    self.violations.append(f"election safety: {seen} and {i} lead term {r.term}")

    def log_of(self, i: NodeId) -> dict[int, Entry]:
        """The entries ``i``'s core holds (stable and unstable), by index."""
        log = self.nodes[i].log
        return {e.index: e for e in log.slice(log.first_index(), log.last_index() + 1)}

    def check_invariants(self) -> list[str]:
        """Every safety violation observed so far (empty when all is well)."""
        self.observe()
        found = list(self.violations)
        logs = {i: self.log_of(i) for i in sorted(self.nodes)}
        ids = sorted(logs)
        for k, a in enumerate(ids):
            for b in ids[k + 1 :]:
                found += _log_matching(a, logs[a], b, logs[b])
                found += _same_applied(a, self.applied_entries[a], b, self.applied_entries[b])
        found += self._leader_completeness(logs)
        return found

    def _leader_completeness(self, logs: dict[NodeId, dict[int, Entry]]) -> list[str]:
        """The leader of the newest term holds every entry any node applied."""
        if not self.leader_of_term:
            return []
        term = max(self.leader_of_term)
        lead = self.leader_of_term[term]
        r = self.nodes[lead]
        if r.role is not Role.LEADER or r.term != term:
            return []
        first = r.log.first_index()
        found = []
        for i in sorted(self.applied_entries):
            for index, e in sorted(self.applied_entries[i].items()):
                if index >= first and logs[lead].get(index) != e:
                    found.append(
                        f"leader completeness: {lead} (term {term}) lacks {e} applied by {i}"
                    )
        return found


def _log_matching(
    a: NodeId, log_a: dict[int, Entry], b: NodeId, log_b: dict[int, Entry]
) -> list[str]:
    """If two logs hold an entry with the same index and term, they agree up to it."""
    common = sorted(set(log_a) & set(log_b), reverse=True)
    for n, index in enumerate(common):
        if log_a[index].term == log_b[index].term:
            for lower in common[n:]:
                if log_a[lower] != log_b[lower]:
                    return [f"log matching: {a} and {b} agree at {index} but differ at {lower}"]
            return []
    return []


def _same_applied(
    a: NodeId, applied_a: dict[int, Entry], b: NodeId, applied_b: dict[int, Entry]
) -> list[str]:
    """No two nodes apply different entries at the same index."""
    for index in sorted(set(applied_a) & set(applied_b)):
        if applied_a[index] != applied_b[index]:
            return [
                f"state machine safety: {a} applied {applied_a[index]}, "
                f"{b} applied {applied_b[index]} at {index}"
            ]
    return []
