"""A whole Raft cluster in one thread: a seeded event loop with injected faults.

Rules:
- No trio, no threads, no wall clock: time is an integer of simulated milliseconds
  and events run from a heap of (time, sequence, action). One root seed derives
  every other RNG (per node, for the network, for the workload, for faults) by
  name, so a seed replays exactly; ``trace_hash`` fingerprints the run.
- Nodes follow the driver's contract: persist (MemoryStorage, synced) -> send ->
  apply -> advance. The state machine is durable with its applied index, as the
  LMDB store makes it; installing a snapshot replaces both atomically.
- Faults are drawn per seed ("swarm"): loss, duplication, delay and reordering,
  partitions (symmetric and one-way), clogged links, crashes and restarts from
  durable state (a crash may hit while a Ready is being written: that write is
  lost and nothing after it happens), pauses, and clock drift and jumps.
- After the fault phase a liveness phase heals everything for the current voters
  and requires a leader and new commits on every voter within a bound.

Reuse: ``World`` is also the base of other simulations over the same Raft cluster
(``simulations.sched_world``). What they change goes through the hooks below, each
with a default that is this Raft-only simulation: ``_apply_entry`` (the state
machine), ``_snapshot_data``/``_restore_data`` (its image), ``_on_tick`` (per-node
work on its own clock), ``_propose_client`` (what a client asks the leader),
``_live_progress``/``_liveness_failure`` (when a seed is done), ``describe_faults``.
The defaults draw from the RNGs exactly as before, so raft seeds keep their hashes.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from consensus.raft import ConfChangeRefused, Config, NotLeader, ProposalDropped, Raft
from consensus.storage import MemoryStorage
from consensus.types import (
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    NodeId,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from simulations.checks import Checker, Violation

TICK_MS = 10
FAULT_PHASE_MS = 8_000
LIVENESS_MS = 12_000
LIVENESS_PROPOSALS = 3
SIM_BUGS = frozenset({"forget_vote"})


def derive(seed: int, name: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class FaultMix:
    loss: float
    duplicate: float
    delay_ms_max: int
    partitions: bool
    one_way: bool
    clog: bool
    crashes: bool
    torn_writes: bool
    pauses: bool
    drift: float
    clock_jumps: bool
    membership: bool
    transfers: bool
    snapshots: bool

    @classmethod
    def draw(cls, rng: random.Random) -> FaultMix:
        def on() -> bool:
            return rng.random() < 0.5

        return cls(
            loss=rng.choice([0.0, 0.01, 0.05, 0.2]) if on() else 0.0,
            duplicate=rng.choice([0.01, 0.05]) if on() else 0.0,
            delay_ms_max=rng.choice([2, 10, 40, 120]),
            partitions=on(),
            one_way=on(),
            clog=on(),
            crashes=on(),
            torn_writes=on(),
            pauses=on(),
            drift=rng.choice([0.0, 0.02, 0.1]),
            clock_jumps=on(),
            membership=on(),
            transfers=on(),
            snapshots=on(),
        )

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.__dict__.items() if v not in (False, 0, 0.0)]
        return " ".join(parts) or "none"


class ForgetVoteStorage(MemoryStorage):
    """Planted bug: a restarted node forgets whom it voted for."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        hard, conf = super().initial_state()
        return HardState(hard.term, None, hard.commit), conf


@dataclass
class SimNode:
    id: NodeId
    raft: Raft
    storage: MemoryStorage
    rng: random.Random
    applied: list[tuple[int, int, bytes]] = field(default_factory=list)  # durable SM
    applied_index: int = 0
    up: bool = True
    paused_until: int = 0
    held: list[Message] = field(default_factory=list)
    tick_ms: float = TICK_MS
    leader_term: int = 0


class World:
    sim_bugs: frozenset[str] = SIM_BUGS  # planted bugs of the simulation, not of Raft
    fault_phase_ms: int = FAULT_PHASE_MS
    liveness_ms: int = LIVENESS_MS

    def __init__(self, seed: int, bugs: frozenset[str] = frozenset(), trace: bool = False) -> None:
        self.seed = seed
        self.rng = derive(seed, "world")
        self.net_rng = derive(seed, "net")
        self.load_rng = derive(seed, "load")
        self.mix = FaultMix.draw(derive(seed, "faults"))
        self.drawn_mix = self.mix  # ``mix`` is calmed when healing; reports name this one
        self.core_bugs = frozenset(bugs) - self.sim_bugs
        self.bugs = frozenset(bugs)
        self.trace_on = trace
        self.digest = hashlib.blake2b(digest_size=16)
        self.now = 0
        self.seq = 0
        self.heap: list[tuple[int, int, Callable[[], None]]] = []
        self.checker = Checker()
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.clogged: set[tuple[NodeId, NodeId]] = set()
        self.healed = False
        self.proposed = 0
        self.heal_proposed = 0
        voters = self.rng.choice([3, 3, 5])
        self.founders = [f"n{k}" for k in range(1, voters + 1)]
        self.spares = [f"n{k}" for k in range(voters + 1, voters + 3)]
        self.nodes: dict[NodeId, SimNode] = {}
        conf = ConfState(voters=frozenset(self.founders))
        for n in self.founders:
            self._create(n, conf)
        for n in self.spares:
            self._create(n, ConfState())  # blank: joins only if added as a learner
        self.chunk_bytes = self.rng.choice([64, 512, 64 << 10])

    # ------------------------------------------------------------------ setup
    def _config(self, n: NodeId, applied: int) -> Config:
        return Config(
            id=n,
            applied=applied,
            max_msg_bytes=self.rng.choice([1, 256, 4096, 1 << 20]),
            max_inflight_msgs=self.rng.choice([2, 8, 64]),
            max_snapshot_chunk_bytes=getattr(self, "chunk_bytes", 512),
            bugs=self.core_bugs,
        )

    def _create(self, n: NodeId, conf: ConfState) -> None:
        storage = ForgetVoteStorage(conf) if "forget_vote" in self.bugs else MemoryStorage(conf)
        rng = derive(self.seed, f"node/{n}")
        node = SimNode(n, Raft(self._config(n, 0), storage, rng), storage, rng)
        node.tick_ms = TICK_MS * (1 + rng.uniform(-self.mix.drift, self.mix.drift))
        self.nodes[n] = node
        self.at(int(rng.uniform(0, TICK_MS)), lambda: self._tick(node))

    # ------------------------------------------------------------- event loop
    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (int(t), self.seq, fn))

    def trace(self, text: str) -> None:
        self.digest.update(f"{self.now} {text}\n".encode())
        if self.trace_on:
            print(f"{self.now:>7} {text}")

    def describe_faults(self) -> str:
        return self.drawn_mix.describe()

    def run(self) -> str:
        """Run the seed; returns the trace hash or raises ``Violation``."""
        self._schedule_workload()
        end = self.fault_phase_ms + self.liveness_ms
        self.at(self.fault_phase_ms, self._heal)
        while self.heap:
            t, _, fn = heapq.heappop(self.heap)
            if t > end:
                break
            self.now = t
            fn()
            if self.healed and self._live_progress():
                return self.digest.hexdigest()
        raise Violation(self._liveness_failure())

    def _liveness_failure(self) -> str:
        return (
            f"liveness: no leader committing {LIVENESS_PROPOSALS} new entries on every "
            f"voter within {self.liveness_ms} ms after healing"
        )

    # ------------------------------------------------------------------ nodes
    def _tick(self, node: SimNode) -> None:
        if node.up and self.now >= node.paused_until:
            self._release_held(node)
            ticks = 1
            if self.mix.clock_jumps and node.rng.random() < 0.002:
                ticks = node.rng.randint(2, 30)  # the clock jumped forward
            for _ in range(ticks):
                node.raft.tick()
            self._process(node)
            self._maybe_snapshot(node)
            self._on_tick(node)
        self.at(self.now + node.tick_ms, lambda: self._tick(node))

    def _on_tick(self, node: SimNode) -> None:
        """Hook: work a node does on its own clock after each tick (up, not paused)."""

    def _release_held(self, node: SimNode) -> None:
        held, node.held = node.held, []
        for m in held:
            node.raft.step(m)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.dst]
        if not node.up:
            return
        if self.now < node.paused_until:
            node.held.append(m)
            return
        node.raft.step(m)
        self._process(node)

    def _process(self, node: SimNode) -> None:
        while node.up and node.raft.has_ready():
            rd = node.raft.ready()
            if self.mix.torn_writes and not self.healed and node.rng.random() < 0.001:
                self.trace(f"{node.id} crashes while writing a Ready")
                self._crash(node)
                return
            self._handle_ready(node, rd)

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        raft = node.raft
        if rd.soft_state is not None:
            if rd.soft_state.role is Role.LEADER:
                self.trace(f"{node.id} leads term {rd.soft_state.term}")
                self.checker.became_leader(node.id, rd.soft_state.term)
            elif node.leader_term:
                self.checker.stepped_down(node.id)
            node.leader_term = rd.soft_state.term if rd.soft_state.role is Role.LEADER else 0
        node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        if rd.snapshot is not None:
            self._restore(node, rd.snapshot)
        self.checker.persisted(node.id, rd.entries, rd.hard_state)
        for m in rd.messages:
            self._send(m)
        if self._crash_point(node, rd):
            return
        for e in rd.committed_entries:
            self.checker.applied_entry(node.id, e)
            self._apply_entry(node, e)
            node.applied_index = e.index
        for rs in rd.read_states:
            asked_at = int.from_bytes(rs.ctx[:8], "big")
            self.checker.read_answered(node.id, rs.index, asked_at)
        raft.advance(rd)

    def _apply_entry(self, node: SimNode, e: Entry) -> None:
        """Hook: the state machine applies one committed entry (durably, with the index)."""
        if e.type is EntryType.NORMAL and e.data:
            node.applied.append((e.index, e.term, e.data))

    def _crash_point(self, node: SimNode, rd: Ready) -> bool:
        """A crash right after voting (and answering), restarting quickly: where a
        forgotten vote would elect two leaders in one term."""
        if not self.mix.crashes or self.healed or rd.hard_state is None:
            return False
        if rd.hard_state.vote not in (None, node.id) and node.rng.random() < 0.1:
            self.trace(f"{node.id} crashes right after voting")
            self._crash(node, restart_ms=node.rng.randint(1, 30))
            return True
        return False

    def _restore(self, node: SimNode, snap: Snapshot) -> None:
        self._restore_data(node, snap.data)
        node.applied_index = snap.meta.index
        self.checker.installed_snapshot(node.id, snap.meta.index, snap.meta.term)
        self.trace(f"{node.id} installs snapshot {snap.meta.index}/{snap.meta.term}")

    def _restore_data(self, node: SimNode, data: bytes) -> None:
        """Hook: replace the state machine with a snapshot's image."""
        rows = json.loads(data) if data else []
        node.applied = [(i, t, bytes.fromhex(d)) for i, t, d in rows]

    def _snapshot_data(self, node: SimNode) -> bytes:
        """Hook: the state machine's image at its applied index."""
        return json.dumps([(i, t, d.hex()) for i, t, d in node.applied]).encode()

    def _maybe_snapshot(self, node: SimNode) -> None:
        if not self.mix.snapshots or node.rng.random() > 0.01:
            return
        index = node.applied_index
        if index - node.storage.snapshot().meta.index < 8:
            return
        term = node.storage.term(index)
        data = self._snapshot_data(node)
        node.storage.set_snapshot(
            Snapshot(SnapshotMeta(index, term, node.raft.conf_at(index)), data)
        )
        node.storage.compact(index)
        self.checker.compacted(node.id, index)
        self.trace(f"{node.id} snapshots at {index}")

    def _crash(self, node: SimNode, restart_ms: int | None = None) -> None:
        node.up = False
        node.held = []
        node.storage = node.storage.crashed()
        self.trace(f"{node.id} crashed")
        delay = restart_ms if restart_ms is not None else node.rng.randint(50, 1500)
        self.at(self.now + delay, lambda: self._restart(node))

    def _restart(self, node: SimNode) -> None:
        if node.up:
            return
        cfg = self._config(node.id, node.applied_index)
        node.raft = Raft(cfg, node.storage, node.rng)
        node.up, node.leader_term = True, 0
        hard, _ = node.storage.initial_state()
        self.checker.restarted(node.id, hard, node.applied_index)
        self.trace(f"{node.id} restarted at term {hard.term}")

    # ---------------------------------------------------------------- network
    def _send(self, m: Message) -> None:
        self._transmit(m.src, m.dst, lambda: self._deliver(m))

    def _transmit(self, src: NodeId, dst: NodeId, deliver: Callable[[], None]) -> None:
        """Carry something from ``src`` to ``dst`` through the faulty network: cut
        links drop it, loss drops it, duplication delivers it twice, clogs delay it."""
        link = (src, dst)
        if link in self.cut:
            return
        rng = self.net_rng
        if rng.random() < self.mix.loss:
            return
        copies = 2 if rng.random() < self.mix.duplicate else 1
        for _ in range(copies):
            delay = 1 + rng.uniform(0, self.mix.delay_ms_max)
            if link in self.clogged:
                delay += rng.uniform(200, 2000)
            self.at(self.now + delay, deliver)

    # --------------------------------------------------------------- workload
    def _schedule_workload(self) -> None:
        self.at(20, self._workload_step)
        self.at(300, self._fault_step)

    def leader(self) -> SimNode | None:
        live = [n for n in self.nodes.values() if n.up and n.raft.role is Role.LEADER]
        return max(live, key=lambda n: n.raft.term) if live else None

    def _workload_step(self) -> None:
        rng = self.load_rng
        leader = self.leader()
        if leader is not None:
            self._client_call(leader, rng)
        node = self.nodes[rng.choice(sorted(self.nodes))]
        if node.up and rng.random() < 0.2:
            ctx = max(n.raft.commit_index for n in self.nodes.values()).to_bytes(8, "big")
            try:
                node.raft.read_index(ctx + self.seq.to_bytes(8, "big"))
                self._process(node)
            except (NotLeader, ProposalDropped):
                pass
        self.at(self.now + rng.randint(10, 60), self._workload_step)

    def _client_call(self, leader: SimNode, rng: random.Random) -> None:
        raft = leader.raft
        roll = rng.random()
        try:
            if self.mix.membership and roll < 0.03 and not self.healed:
                cc = self._membership_change(raft, rng)
                if cc is not None:
                    raft.propose_conf_change(cc)
                    self.trace(f"{leader.id} proposes {cc.op.name} {cc.node}")
            elif self.mix.transfers and roll < 0.05 and not self.healed:
                target = rng.choice(sorted(raft.conf().voters))
                raft.transfer_leadership(target)
                self.trace(f"{leader.id} transfers to {target}")
            else:
                self._propose_client(leader, rng)
        except (NotLeader, ProposalDropped, ConfChangeRefused):
            return
        self._process(leader)

    def _propose_client(self, leader: SimNode, rng: random.Random) -> None:
        """Hook: one client command proposed to the leader (may raise ``NotLeader`` or
        ``ProposalDropped``)."""
        self.proposed += 1
        leader.raft.propose(f"p{self.proposed}".encode())

    def _membership_change(self, raft: Raft, rng: random.Random) -> ConfChange | None:
        conf = raft.conf()
        outside = sorted(set(self.nodes) - conf.members())
        learners = sorted(conf.learners)
        if learners and rng.random() < 0.6:
            return ConfChange(ConfChangeOp.PROMOTE, rng.choice(learners))
        if outside and rng.random() < 0.5:
            return ConfChange(ConfChangeOp.ADD_LEARNER, rng.choice(outside))
        if len(conf.voters) > 3:
            return ConfChange(ConfChangeOp.REMOVE, rng.choice(sorted(conf.voters)))
        return None

    def _fault_step(self) -> None:
        if self.healed:
            return
        rng = self.rng
        mix = self.mix
        ids = sorted(self.nodes)
        roll = rng.random()
        if mix.crashes and roll < 0.25:
            node = self.nodes[rng.choice(ids)]
            if node.up:
                self._crash(node)
        elif mix.partitions and roll < 0.45:
            self.cut.clear()
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
            for a in sorted(side):  # sorted: set order differs between processes
                for b in sorted(set(ids) - side):
                    self.cut.add((a, b))
                    if not (mix.one_way and rng.random() < 0.5):
                        self.cut.add((b, a))
            self.trace(f"partition {sorted(side)}")
        elif mix.partitions and roll < 0.6:
            self.cut.clear()
            self.trace("partition healed")
        elif mix.clog and roll < 0.7:
            a, b = rng.sample(ids, 2)
            self.clogged ^= {(a, b)}
        elif mix.pauses and roll < 0.8:
            node = self.nodes[rng.choice(ids)]
            node.paused_until = self.now + rng.randint(100, 2000)
            self.trace(f"{node.id} paused")
        self.at(self.now + rng.randint(100, 800), self._fault_step)

    # ---------------------------------------------------------------- liveness
    def _heal(self) -> None:
        self.healed = True
        self.cut.clear()
        self.clogged.clear()
        self.mix = replace(self.mix, loss=0.0, duplicate=0.0, delay_ms_max=5)
        for node in self.nodes.values():
            node.paused_until = 0
            if not node.up:
                self._restart(node)
        self.heal_proposed = self.proposed
        self.trace("healed")

    def _live_progress(self) -> bool:
        leader = self.leader()
        if leader is None or self.proposed - self.heal_proposed < LIVENESS_PROPOSALS:
            return False
        target = leader.raft.last_index()
        if leader.raft.commit_index < target:
            return False
        voters = leader.raft.conf().voters
        return all(self.nodes[v].applied_index >= target for v in voters if v in self.nodes)


def run_seed(seed: int, bugs: frozenset[str] = frozenset(), trace: bool = False) -> str:
    return World(seed, bugs, trace).run()
