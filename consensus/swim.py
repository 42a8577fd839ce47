"""SWIM gossip membership: a deterministic state machine with no I/O.

Rules:
- Time is ``tick()``; one protocol period is ``probe_ticks`` ticks and the driver
  decides how long a tick is. Input is ``step(src_addr, message)`` and the calls
  ``join``, ``leave``, ``update_meta``, ``update_addr``; output is ``ready()`` (the
  datagrams to send) and ``events()`` (membership changes). The core never reads a
  clock or a socket; randomness comes only from the ``random.Random`` it is given.
- Values on the wire are frozen, slotted dataclasses in closed unions (``Update``,
  ``Message``), validated when built and dispatched with ``match``. Their wire shape
  (positional arrays, see ``swim_types``) is exact: every datagram is proven to fit
  ``max_datagram_bytes`` less the driver's trailer before it leaves ``ready()``.
- Everything is bounded: members, the broadcast queue, updates per datagram, relays
  of indirect pings, sync replies per period, pending events and outbound datagrams.

Precedence. A member's record is ordered by (incarnation, rank), rank alive <
suspect < dead < left; an update replaces the record iff its key is greater:

    Alive(i)    overrides any record of incarnation j < i
    Suspect(i)  overrides Alive(j) for j <= i, Suspect/Dead/Left(j) for j < i
    Dead(i)     overrides Alive/Suspect(j) for j <= i, Dead/Left(j) for j < i
    Left(i)     overrides Alive/Suspect/Dead(j) for j <= i, Left(j) for j < i

For alive and suspect this is SWIM's table. The paper lets a Confirm (dead) win at
any incarnation; here it must be at least the record's, so a stale Dead cannot kill
a member that has already refuted, and a restarted member rejoins by incarnating
past its tombstone. Left is a graceful dead. Records only grow in this order (the
one exception is forgetting a tombstone), so merging is a join: members that keep
exchanging state converge whatever the order of delivery or the losses.
Updates about this member are never stored: Suspect, Dead or Left at our
incarnation or above, or an Alive newer than or different from ours, are refuted by
incarnating past them (unless we are leaving).

Theory of operation: every period the member probes the next member of a shuffled
round-robin list with a Ping. Without an Ack after ``ack_timeout_ticks`` it asks
``indirect_probes`` others to ping on its behalf (PingReq; they relay the Ack). With
nothing by the end of the period it suspects the target. A suspicion turns into
Dead after a timeout that grows with log(n) and shrinks as other members confirm it
(Lifeguard). Updates ride on every datagram from a bounded queue (least-sent and
newest first, about ``retransmit_mult * log10(n + 1)`` times each); a ping or ack to
a member we suspect or hold dead carries that news first, so it can refute at once.
Every ``sync_ticks`` a member pushes its whole state to one other member (a live one
or a tombstone, so partitions heal) and gets the other's back: anti-entropy for
whatever piggybacking lost. Joining is such an exchange with the seeds, retried
while no other member is known alive.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar, assert_never

from consensus.swim_types import (
    MAX_UPDATES_PER_MESSAGE,
    Ack,
    Addr,
    Alive,
    Dead,
    EventKind,
    Left,
    Member,
    MemberEvent,
    MemberState,
    Message,
    NodeMeta,
    Ping,
    PingReq,
    Suspect,
    SwimConfig,
    SwimCounters,
    SwimStatistics,
    Sync,
    Update,
    array_header_bytes,
    message_bytes,
    update_bytes,
    validate_addr,
    validate_id,
)
from consensus.types import NodeId

__all__ = [
    "Addr",
    "EventKind",
    "Member",
    "MemberEvent",
    "MemberState",
    "NodeMeta",
    "Swim",
    "SwimConfig",
    "SwimCounters",
    "SwimStatistics",
]

MAX_SEEDS = 16
_SEQ_MODULUS = 1 << 32


_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_DOWN = (MemberState.DEAD, MemberState.LEFT)
_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
_STATE_OF: dict[type, MemberState] = {
    Alive: MemberState.ALIVE,
    Suspect: MemberState.SUSPECT,
    Dead: MemberState.DEAD,
    Left: MemberState.LEFT,
}


@dataclass(slots=True)
class _Probe:
    target: NodeId
    seq: int
    started_tick: int
    acked: bool = False
    indirect_sent: bool = False


@dataclass(frozen=True, slots=True)
class _Relay:
    requester: Addr
    requester_seq: int
    expires_tick: int


@dataclass(slots=True)
class _Suspicion:
    """Lifeguard's timer: starts at ``max_ticks`` and falls towards ``min_ticks`` as
    independent confirmations arrive (log-scaled, ``k`` of them reach the minimum)."""

    accuser: NodeId
    since_tick: int
    min_ticks: int
    max_ticks: int
    k: int
    confirmations: set[NodeId] = field(default_factory=set)

    def timeout_ticks(self) -> int:
        if self.k < 1:
            return self.min_ticks
        frac = math.log(len(self.confirmations) + 1) / math.log(self.k + 1)
        return max(
            self.min_ticks, math.floor(self.max_ticks - frac * (self.max_ticks - self.min_ticks))
        )

    def confirm(self, by: NodeId) -> bool:
        """Count ``by`` once; True when it is a new confirmation worth gossiping."""
        if by == self.accuser or by in self.confirmations or len(self.confirmations) >= self.k:
            return False
        self.confirmations.add(by)
        return True


@dataclass(slots=True)
class _Broadcast:
    update: Update
    size_bytes: int
    seq: int  # enqueue order: larger is newer
    transmits: int = 0


_M = TypeVar("_M", Ping, Ack, PingReq, Sync)


class Swim:
    """One member's view of the cluster. See the module docstring for the protocol."""

    def __init__(
        self,
        self_id: NodeId,
        self_addr: Addr,
        meta: NodeMeta,
        rng: random.Random,
        config: SwimConfig | None = None,
    ) -> None:
        self.id = self_id
        self.config = config or SwimConfig()
        self._rng = rng
        self._addr = self_addr
        self._meta = meta
        self._incarnation = 0
        self._leaving = False
        self._now = 0
        self._members: dict[NodeId, Member] = {}  # everyone but this member
        self._down_since: dict[NodeId, int] = {}  # tick each tombstone was laid
        self._suspicions: dict[NodeId, _Suspicion] = {}
        self._probe_order: list[NodeId] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._next_period_tick = 1
        self._next_sync_tick = rng.randint(1, self.config.sync_ticks)
        self._relays: dict[int, _Relay] = {}
        self._broadcasts: dict[NodeId, _Broadcast] = {}
        self._broadcast_seq = 0
        self._seq = rng.randrange(_SEQ_MODULUS)
        self._seeds: list[Addr] = []
        self._sync_replies_left = self.config.max_sync_replies_per_period
        self._outbox: list[tuple[Addr, Message]] = []
        self._events: list[MemberEvent] = []
        self._counts = SwimCounters()
        validate_id(self_id)
        validate_addr(self_addr, port_zero_ok=True)
        if self_addr[1] != 0:
            self._enqueue(self._self_update())

    # ================================================================ observers
    @property
    def self_addr(self) -> Addr:
        return self._addr

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def meta(self) -> NodeMeta:
        return self._meta

    def members(self) -> list[Member]:
        """Every known member, this one included, tombstones included, sorted by id."""
        found = [*self._members.values(), self._self_member()]
        return sorted(found, key=lambda m: m.id)

    def member(self, node: NodeId) -> Member | None:
        return self._self_member() if node == self.id else self._members.get(node)

    def statistics(self) -> SwimStatistics:
        states = [m.state for m in self._members.values()]
        return SwimStatistics(
            ticks=self._now,
            incarnation=self._incarnation,
            members_alive=states.count(MemberState.ALIVE) + (not self._leaving),
            members_suspect=states.count(MemberState.SUSPECT),
            members_dead=states.count(MemberState.DEAD),
            members_left=states.count(MemberState.LEFT) + self._leaving,
            broadcasts_queued=len(self._broadcasts),
            relays_pending=len(self._relays),
            counters=replace(self._counts),
        )

    def ready(self) -> list[tuple[Addr, Message]]:
        """Drain the datagrams to send, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[MemberEvent]:
        """Drain the changes to other members seen since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    # ============================================================ client calls
    def join(self, seed_addrs: Iterable[Addr]) -> None:
        """Exchange state with the seeds; retried each sync while nobody else is alive."""
        self._require_addr()
        self._seeds = [a for a in seed_addrs if a != self._addr][:MAX_SEEDS]
        for addr in self._seeds:
            self._send_state(addr, reply=True)

    def leave(self) -> None:
        """Announce a graceful departure; afterwards this member only answers."""
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        update = self._self_update()
        self._enqueue(update)
        live = sorted(i for i, m in self._members.items() if m.state in _LIVE)
        for node in self._rng.sample(live, min(len(live), self.config.max_leave_fanout)):
            self._emit(self._members[node].addr, Sync(self.id, False, (update,)))

    def update_meta(self, meta: NodeMeta) -> None:
        """Publish new metadata under a new incarnation."""
        assert not self._leaving, "a leaving member does not change its metadata"
        self._meta = meta
        self._incarnate(self._incarnation)

    def update_addr(self, addr: Addr) -> None:
        """Publish a new address (for instance the port a driver bound to port 0)."""
        assert not self._leaving, "a leaving member does not move"
        announced = self._addr[1] != 0
        self._addr = addr
        if announced:
            self._incarnate(self._incarnation)
        else:
            self._enqueue(self._self_update())

    # ==================================================================== time
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._require_addr()
        self._now += 1
        for seq in [s for s, r in self._relays.items() if r.expires_tick <= self._now]:
            del self._relays[seq]
        self._expire_suspicions()
        if not self._leaving:
            self._probe_tick()
            if self._now >= self._next_sync_tick:
                self._next_sync_tick = self._now + self.config.sync_ticks
                self._sync_round()

    def _probe_tick(self) -> None:
        p = self._probe
        waited = 0 if p is None else self._now - p.started_tick
        if p and not p.acked and not p.indirect_sent and waited >= self.config.ack_timeout_ticks:
            self._send_ping_reqs(p)
        if self._now >= self._next_period_tick:
            self._next_period_tick = self._now + self.config.probe_ticks
            self._end_period()
            self._start_probe()

    def _end_period(self) -> None:
        p, self._probe = self._probe, None
        if p is not None and not p.acked:
            m = self._members.get(p.target)
            if m is not None and m.state in _LIVE:
                self._counts.probes_failed += 1
                self._apply(Suspect(m.id, m.incarnation, self.id))
        self._sync_replies_left = self.config.max_sync_replies_per_period
        for node, since in list(self._down_since.items()):
            if self._now - since >= self.config.tombstone_ticks:
                self._forget(node)

    def _start_probe(self) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(target, seq, self._now)
        self._counts.probes_sent += 1
        self._send_gossip(self._members[target].addr, Ping(seq, self.id, target), about=target)

    def _next_probe_target(self) -> NodeId | None:
        for _ in range(2):  # the rest of this round, then one fresh round
            while self._probe_index < len(self._probe_order):
                node = self._probe_order[self._probe_index]
                self._probe_index += 1
                m = self._members.get(node)
                if m is not None and m.state in _LIVE:
                    return node
            self._probe_order = sorted(i for i, m in self._members.items() if m.state in _LIVE)
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _add_to_probe_order(self, node: NodeId) -> None:
        """SWIM: a new member goes to a random place in what is left of this round."""
        if node not in self._probe_order[self._probe_index :]:
            at = self._rng.randint(self._probe_index, len(self._probe_order))
            self._probe_order.insert(at, node)

    def _send_ping_reqs(self, p: _Probe) -> None:
        p.indirect_sent = True
        target = self._members.get(p.target)
        if target is None:
            return
        helpers = sorted(
            i for i, m in self._members.items() if m.state is MemberState.ALIVE and i != p.target
        )
        for h in self._rng.sample(helpers, min(len(helpers), self.config.indirect_probes)):
            self._counts.ping_reqs_sent += 1
            req = PingReq(p.seq, self.id, target.id, target.addr)
            self._send_gossip(self._members[h].addr, req)

    def _expire_suspicions(self) -> None:
        for node, s in list(self._suspicions.items()):
            if self._now - s.since_tick >= s.timeout_ticks():
                self._counts.deaths_declared += 1
                self._apply(Dead(node, self._members[node].incarnation, self.id))

    def _sync_round(self) -> None:
        if self._seeds and not any(m.state in _LIVE for m in self._members.values()):
            targets = list(self._seeds)  # alone: (re)join through the seeds
        else:
            known = sorted(i for i, m in self._members.items() if m.state is not MemberState.LEFT)
            if not known:
                return
            targets = [self._members[self._rng.choice(known)].addr]
        for addr in targets:
            self._send_state(addr, reply=True)

    # ================================================================== input
    def step(self, src_addr: Addr, msg: Message) -> None:
        """Feed one inbound, already authenticated and decoded message."""
        self._require_addr()
        for u in msg.updates:
            self._apply(u)
        match msg:
            case Ping():
                if msg.target != self.id:
                    self._counts.misdirected += 1  # e.g. another member now owns that address
                    return
                self._send_gossip(src_addr, Ack(msg.seq, self.id), about=msg.src)
            case Ack():
                if self._probe is not None and msg.seq == self._probe.seq:
                    self._probe.acked = True
                elif (relay := self._relays.pop(msg.seq, None)) is not None:
                    self._send_gossip(relay.requester, Ack(relay.requester_seq, self.id))
            case PingReq():
                self._relay_ping(src_addr, msg)
            case Sync():
                if not msg.reply:
                    return
                if self._sync_replies_left > 0:
                    self._sync_replies_left -= 1
                    self._send_state(src_addr, reply=False)
                else:
                    self._counts.sync_replies_refused += 1
            case _:
                assert_never(msg)

    def _relay_ping(self, src_addr: Addr, msg: PingReq) -> None:
        if msg.target == self.id:
            self._send_gossip(src_addr, Ack(msg.seq, self.id))
            return
        if len(self._relays) >= self.config.max_relays:
            self._counts.relays_refused += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(src_addr, msg.seq, self._now + self.config.probe_ticks)
        self._send_gossip(msg.target_addr, Ping(seq, self.id, msg.target), about=msg.target)

    # ============================================================= precedence
    def _apply(self, u: Update) -> None:
        if u.node == self.id:
            self._about_self(u)
            return
        cur = self._members.get(u.node)
        if cur is None:
            if isinstance(u, Alive):
                self._add(u)
            return  # news of an unknown member's end carries no address: nothing to keep
        new_key = (u.incarnation, _RANK[_STATE_OF[type(u)]])
        old_key = (cur.incarnation, _RANK[cur.state])
        if new_key > old_key:
            self._transition(cur, u)
        elif new_key == old_key and isinstance(u, Suspect):
            s = self._suspicions.get(u.node)
            if s is not None and s.confirm(u.by):
                self._enqueue(u)  # Lifeguard: independent confirmations travel too

    def _about_self(self, u: Update) -> None:
        # Two live processes under one id would out-incarnate each other for ever
        # (one update per datagram they exchange, so no storm): ids must be unique.
        if self._leaving:
            return
        match u:
            case Alive():
                mine = (u.incarnation, u.addr, u.meta) == (
                    self._incarnation,
                    self._addr,
                    self._meta,
                )
                if u.incarnation >= self._incarnation and not mine:
                    self._counts.refutations += 1
                    self._incarnate(u.incarnation)
            case Suspect() | Dead() | Left():
                if u.incarnation >= self._incarnation:
                    self._counts.refutations += 1
                    self._incarnate(u.incarnation)
            case _:
                assert_never(u)

    def _incarnate(self, past: int) -> None:
        """Take an incarnation above ``past`` and ours, and announce ourselves with it."""
        self._incarnation = max(self._incarnation, past) + 1
        self._enqueue(self._self_update())

    def _add(self, u: Alive) -> None:
        if len(self._members) + 1 >= self.config.max_members and not self._evict_tombstone():
            self._counts.members_refused += 1
            return
        m = Member(u.node, u.addr, MemberState.ALIVE, u.incarnation, u.meta)
        self._members[u.node] = m
        self._add_to_probe_order(u.node)
        self._event(EventKind.JOINED, m)
        self._enqueue(u)

    def _transition(self, cur: Member, u: Update) -> None:
        state = _STATE_OF[type(u)]
        addr, meta = (u.addr, u.meta) if isinstance(u, Alive) else (cur.addr, cur.meta)
        new = Member(cur.id, addr, state, u.incarnation, meta)
        self._members[cur.id] = new
        if isinstance(u, Suspect):
            s = self._suspicions.get(cur.id)
            if s is None:
                self._suspicions[cur.id] = self._new_suspicion(u.by)
            else:
                s.confirm(u.by)  # the suspicion outlives a newer incarnation of itself
        else:
            self._suspicions.pop(cur.id, None)
        if state in _DOWN:
            self._down_since.setdefault(cur.id, self._now)
        elif self._down_since.pop(cur.id, None) is not None:
            self._add_to_probe_order(cur.id)
        for kind in _events_of(cur, new):
            self._event(kind, new)
        self._enqueue(u)

    def _new_suspicion(self, accuser: NodeId) -> _Suspicion:
        n = self._live_count()
        min_ticks = math.ceil(self.config.suspicion_ticks * max(1.0, math.log10(n)))
        k = self.config.suspicion_confirmations
        k = 0 if n - 2 < k else k  # too few members to ever confirm: use the minimum
        max_ticks = min_ticks * self.config.suspicion_max_mult
        return _Suspicion(accuser, self._now, min_ticks, max_ticks, k)

    def _forget(self, node: NodeId) -> None:
        assert self._members[node].state in _DOWN, "only tombstones are forgotten"
        del self._members[node]
        del self._down_since[node]
        self._broadcasts.pop(node, None)

    def _evict_tombstone(self) -> bool:
        if not self._down_since:
            return False
        self._forget(min(self._down_since, key=lambda n: (self._down_since[n], n)))
        return True

    # ============================================================ dissemination
    def _enqueue(self, u: Update) -> None:
        """Queue ``u`` for piggybacking; it replaces older news about the same member."""
        self._broadcasts.pop(u.node, None)
        if len(self._broadcasts) >= self.config.max_broadcasts:
            worst = max(self._broadcasts.values(), key=lambda b: (b.transmits, -b.seq))
            del self._broadcasts[worst.update.node]
            self._counts.broadcasts_dropped += 1
        self._broadcast_seq += 1
        self._broadcasts[u.node] = _Broadcast(u, update_bytes(u), self._broadcast_seq)

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_mult * math.ceil(math.log10(self._live_count() + 1))

    def _send_gossip(self, addr: Addr, base: _M, about: NodeId | None = None) -> None:
        """Send ``base`` with as many queued updates as fit, news about ``about`` first
        when we suspect it or hold it dead (so it can refute right away)."""
        first = self._news_about(about) if about is not None else None
        chosen: list[Update] = []
        used = message_bytes(base) - array_header_bytes(0)
        budget = self.config.body_bytes_max
        if first is not None and used + array_header_bytes(1) + update_bytes(first) <= budget:
            chosen.append(first)
            used += update_bytes(first)
        limit = self._retransmit_limit()
        for b in sorted(self._broadcasts.values(), key=lambda b: (b.transmits, -b.seq)):
            if len(chosen) >= self.config.max_piggyback:
                break
            if first is not None and b.update.node == first.node:
                continue
            if used + array_header_bytes(len(chosen) + 1) + b.size_bytes > budget:
                continue
            chosen.append(b.update)
            used += b.size_bytes
            b.transmits += 1
            if b.transmits >= limit:
                del self._broadcasts[b.update.node]
        self._emit(addr, replace(base, updates=tuple(chosen)))

    def _news_about(self, node: NodeId) -> Update | None:
        m = self._members.get(node)
        if m is None or m.state is MemberState.ALIVE:
            return None
        return self._record(m)[-1]

    def _send_state(self, addr: Addr, *, reply: bool) -> None:
        """Push every record to ``addr`` in as many Sync datagrams as it takes; only the
        first asks for the peer's state back."""
        records = [self._self_update()]
        for m in self._members.values():
            records.extend(self._record(m))
        empty = message_bytes(Sync(self.id, reply)) - array_header_bytes(0)
        chunk: list[Update] = []
        used = empty
        for u in records:
            size = update_bytes(u)
            full = len(chunk) >= MAX_UPDATES_PER_MESSAGE
            if chunk and (
                full
                or used + array_header_bytes(len(chunk) + 1) + size > self.config.body_bytes_max
            ):
                self._emit(addr, Sync(self.id, reply, tuple(chunk)))
                reply, chunk, used = False, [], empty
            chunk.append(u)
            used += size
        self._emit(addr, Sync(self.id, reply, tuple(chunk)))
        self._counts.syncs_sent += 1

    def _record(self, m: Member) -> list[Update]:
        """The updates that recreate ``m`` at a peer (a suspect needs its Alive first)."""
        alive = Alive(m.id, m.incarnation, m.addr, m.meta)
        match m.state:
            case MemberState.ALIVE:
                return [alive]
            case MemberState.SUSPECT:
                return [alive, Suspect(m.id, m.incarnation, self._suspicions[m.id].accuser)]
            case MemberState.DEAD:
                return [Dead(m.id, m.incarnation, self.id)]
            case MemberState.LEFT:
                return [Left(m.id, m.incarnation)]

    # ================================================================ helpers
    def _self_update(self) -> Update:
        if self._leaving:
            return Left(self.id, self._incarnation)
        return Alive(self.id, self._incarnation, self._addr, self._meta)

    def _self_member(self) -> Member:
        state = MemberState.LEFT if self._leaving else MemberState.ALIVE
        return Member(self.id, self._addr, state, self._incarnation, self._meta)

    def _live_count(self) -> int:
        return 1 + sum(1 for m in self._members.values() if m.state in _LIVE)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MODULUS
        return self._seq

    def _require_addr(self) -> None:
        assert self._addr[1] != 0, "set the address (update_addr) before running"

    def _emit(self, addr: Addr, msg: Message) -> None:
        if len(self._outbox) >= self.config.max_outbox_datagrams:
            self._counts.outbox_dropped += 1
            return
        assert message_bytes(msg) <= self.config.body_bytes_max, "datagram over its bound"
        self._outbox.append((addr, msg))

    def _event(self, kind: EventKind, member: Member) -> None:
        if len(self._events) >= self.config.max_events:
            del self._events[0]
            self._counts.events_dropped += 1
        self._events.append(MemberEvent(kind, member))


def _events_of(old: Member, new: Member) -> list[EventKind]:
    """The events a record change produces (see ``EventKind``)."""
    if new.state is old.state:
        changed = (old.addr, old.meta) != (new.addr, new.meta)
        return [EventKind.META_UPDATED] if changed and new.state is MemberState.ALIVE else []
    match new.state:
        case MemberState.ALIVE if old.state in _DOWN:
            return [EventKind.JOINED]
        case MemberState.ALIVE:
            changed = (old.addr, old.meta) != (new.addr, new.meta)
            return [EventKind.ALIVE, *([EventKind.META_UPDATED] if changed else [])]
        case MemberState.SUSPECT:
            return [EventKind.SUSPECT]
        case MemberState.DEAD:
            return [EventKind.DEAD]
        case MemberState.LEFT:
            return [EventKind.LEFT]
    raise AssertionError(f"no event for {old.state} -> {new.state}")
