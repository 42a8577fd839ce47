"""The Raft driver: connects the pure core to time, the transport, LMDB and the state machine.

Rules:
- One task (``run``) owns the ``Raft`` object. Everything else talks to it through a
  bounded inbox; nothing else calls into the core, so no step interleaves a Ready.
- Each Ready is handled in the order the core requires: persist (one write, one
  fsync, in a worker thread) -> send -> apply (in memory, in the loop task; its
  writes, with the applied index in the same transaction, in a worker thread) ->
  ``advance``.
- Ticks come from ``trio.sleep_until``. After a stall (a slow fsync, a long apply)
  at most one heartbeat interval of ticks is caught up per step, with the inbox
  read between steps: the stalled time is dropped, not compressed. Compressed ticks
  would close a leader's check-quorum window (or a follower's election timeout)
  before the messages that arrived meanwhile could be read, and a healthy leader
  would step down. Ticks only drive liveness (reads use ReadIndex), so running slow
  under a stall is safe.
- A proposal's outcome is reported honestly: ``Committed`` with the state machine's
  result, ``NotCommitted`` when the entry was provably replaced, and ``Unknown`` on
  timeout or leadership loss (the entry may still commit). Never a false failure.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from consensus.raft import Config, NotLeader, ProposalDropped, Raft, RaftError
from consensus.storage import LogStorage
from consensus.types import (
    ConfChange,
    ConfState,
    Entry,
    Message,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

log = logging.getLogger("rota.driver")

COMMIT_TIMES_MAX = 1024  # (commit index, time) steps remembered for ``commit_age_s``

Offload = Callable[..., Awaitable[Any]]
# Work run by the loop task between Readies; an awaitable result is awaited there.
InboxItem = Callable[[], Awaitable[None] | None]
INBOX_ITEMS_MAX = 65_536


class StateMachine(Protocol):
    """The replicated state machine as the driver sees it (runs in a worker thread)."""

    def applied_index(self) -> int: ...

    def apply(self, entries: Sequence[Entry]) -> tuple[list[bytes], Callable[[], None]]:
        """Apply committed entries in order, in memory (called in the loop task).

        Returns one result per entry (empty bytes for no-ops and conf changes) and
        the durable write of their effects with the last index, in one transaction,
        which the driver runs in a worker thread before it answers anyone."""
        ...

    def create_snapshot(self, index: int, term: int, conf: ConfState) -> Snapshot:
        """A consistent image of the tables at ``index``, which is the applied index."""
        ...

    def restored(self, meta: SnapshotMeta) -> None:
        """The storage installed a leader's snapshot: drop any cached state."""
        ...


@dataclass(frozen=True, slots=True)
class Committed:
    index: int
    result: bytes


@dataclass(frozen=True, slots=True)
class NotCommitted:
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: str


Outcome = Committed | NotCommitted | Unknown


class _Waiter:
    __slots__ = ("event", "outcome", "term")

    def __init__(self, term: int) -> None:
        self.term = term
        self.event = trio.Event()
        self.outcome: Outcome = Unknown("timed out")

    def resolve(self, outcome: Outcome) -> None:
        if not self.event.is_set():
            self.outcome = outcome
            self.event.set()


@dataclass(frozen=True, slots=True)
class DriverStats:
    term: int
    role: Role
    leader: NodeId | None
    commit_index: int
    applied_index: int
    last_index: int
    ready_count: int
    fsync_seconds_total: float


class RaftDriver:
    def __init__(
        self,
        config: Config,
        storage: LogStorage,
        state_machine: StateMachine,
        send: Callable[[Message], bool],
        rng_seed: int,
        tick_s: float,
        on_apply: Callable[[Sequence[Entry], list[bytes]], None] | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.storage = storage
        self.sm = state_machine
        self.raft = Raft(config, storage, random.Random(rng_seed))
        self.id = config.id
        self._send = send
        self.tick_s = tick_s
        self._on_apply = on_apply
        # Blocking storage work runs here; tests pass an inline runner for MockClock.
        self._offload: Offload = offload or trio.to_thread.run_sync
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboxItem](INBOX_ITEMS_MAX)
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[bytes, tuple[trio.Event, list[int]]] = {}
        self._read_ids = itertools.count(1)
        self._applied_event = trio.Event()
        self._state_event = trio.Event()
        self.ready_count = 0
        self.fsync_seconds_total = 0.0
        self.fsync_observer: Callable[[float], None] | None = None
        # Told every change of role, leader or term as the core reports it (metrics
        # count leader changes here, exactly, rather than by sampling).
        self.soft_state_observer: Callable[[SoftState], None] | None = None
        # When this node saw its commit index reach each value: (index, trio time),
        # both ascending. A leader learns the commit before it applies the entry (the
        # apply of a burst is bounded per Ready), and Fire lateness is about commit.
        self._commit_times: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=COMMIT_TIMES_MAX
        )

    # ----------------------------------------------------------------- queries
    def stats(self) -> DriverStats:
        r = self.raft
        return DriverStats(
            r.term,
            r.role,
            r.leader,
            r.commit_index,
            r.applied_index,
            r.last_index(),
            self.ready_count,
            self.fsync_seconds_total,
        )

    def commit_age_s(self, index: int) -> float | None:
        """How long ago this node first saw entry ``index`` committed; None when it
        did not see it (a restart, a snapshot, or older than what is remembered)."""
        times = self._commit_times
        if not times or not times[0][0] < index <= times[-1][0]:
            return None
        i = bisect.bisect_left(times, (index, -math.inf))
        return trio.current_time() - times[i][1]

    def _note_commit(self) -> None:
        commit = self.raft.commit_index
        if not self._commit_times or commit > self._commit_times[-1][0]:
            self._commit_times.append((commit, trio.current_time()))

    async def wait_state_change(self) -> None:
        await self._state_event.wait()

    async def wait_applied(self, index: int) -> None:
        while self.raft.applied_index < index:
            await self._applied_event.wait()

    # ------------------------------------------------------------------ inputs
    def deliver(self, msg: Message) -> None:
        """Called by the transport for each inbound Raft message; drops when overloaded."""
        try:
            self._inbox_send.send_nowait(lambda: self.raft.step(msg))
        except trio.WouldBlock:
            log.warning("raft inbox full; dropping %s from %s", type(msg).__name__, msg.src)

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport lost its connection to ``peer``: stop pipelining to it."""
        with contextlib.suppress(trio.WouldBlock):  # advisory only
            self._inbox_send.send_nowait(lambda: self.raft.report_unreachable(peer))

    async def _call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` inside the loop task (between Readies) and return its value."""
        done = trio.Event()
        box: list[object] = []

        def run() -> None:
            try:
                box.append(fn())
            except RaftError as e:
                box.append(e)
            done.set()

        await self._inbox_send.send(run)
        await done.wait()
        result = box[0]
        if isinstance(result, RaftError):
            raise result
        return result

    async def propose(self, data: bytes, timeout_s: float) -> Outcome:
        """Propose on this node (must be leader); raises NotLeader / ProposalDropped."""
        (outcome,) = await self._propose_and_wait(lambda: [self.raft.propose(data)], timeout_s)
        return outcome

    async def propose_many(self, datas: Sequence[bytes], timeout_s: float) -> list[Outcome]:
        """Propose several commands in one append of the core (all or none), so one
        message per follower carries them, one Ready persists them (one fsync here
        and on each follower) and they commit together. Raises NotLeader /
        ProposalDropped, and then nothing was appended."""
        return await self._propose_and_wait(lambda: self.raft.propose_many(datas), timeout_s)

    async def propose_conf_change(self, cc: ConfChange, timeout_s: float) -> Outcome:
        """Propose a membership change; raises NotLeader / ConfChangeRefused."""
        (outcome,) = await self._propose_and_wait(
            lambda: [self.raft.propose_conf_change(cc)], timeout_s
        )
        return outcome

    async def _propose_and_wait(
        self, append: Callable[[], list[int]], timeout_s: float
    ) -> list[Outcome]:
        """Run ``append`` in the loop task, then wait (within ``timeout_s`` in all)
        for the outcome of each index it appended."""

        def start() -> list[_Waiter]:
            indexes = append()
            waiters = [_Waiter(self.raft.term) for _ in indexes]
            self._waiters.update(zip(indexes, waiters, strict=True))
            return waiters

        waiters = await self._call(start)
        assert isinstance(waiters, list)
        with trio.move_on_after(timeout_s):
            for waiter in waiters:
                await waiter.event.wait()
        return [w.outcome for w in waiters]

    async def transfer_leadership(self, target: NodeId) -> None:
        await self._call(lambda: self.raft.transfer_leadership(target))

    async def read_barrier(self, timeout_s: float) -> int:
        """A linearizable read point: returns once applied >= the ReadIndex.

        Raises ``NotLeader`` when no leader is known and ``trio.TooSlowError`` on timeout."""
        ctx = next(self._read_ids).to_bytes(8, "big")
        event, box = trio.Event(), list[int]()
        self._reads[ctx] = (event, box)
        try:
            with trio.fail_after(timeout_s):
                await self._call(lambda: self.raft.read_index(ctx))
                await event.wait()
                await self.wait_applied(box[0])
                return box[0]
        finally:
            self._reads.pop(ctx, None)

    async def take_snapshot(self) -> int:
        """Snapshot the state machine at its applied index and compact the log below it.

        Runs inside the loop task (nothing is applied meanwhile), so the image, its
        index and the configuration at that index agree."""
        done = trio.Event()
        box: list[int] = []

        async def work() -> None:
            try:
                index = self.raft.applied_index
                if index > self.storage.first_index() - 1:
                    conf = self.raft.conf_at(index)
                    term = self.storage.term(index)
                    snap = await self._offload(self.sm.create_snapshot, index, term, conf)
                    await self._offload(self._record_snapshot, snap)
                box.append(index)
            finally:
                done.set()

        await self._inbox_send.send(work)
        await done.wait()
        if not box:
            raise RuntimeError("snapshot failed; see the node log")
        return box[0]

    def _record_snapshot(self, snap: Snapshot) -> None:
        self.storage.set_snapshot(snap)
        self.storage.compact(snap.meta.index)

    # -------------------------------------------------------------------- loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_tick = trio.current_time() + self.tick_s
        while True:
            with trio.move_on_at(next_tick):
                item = await self._inbox_recv.receive()
                await self._run_item(item)
            await self._drain_inbox()
            self._note_commit()
            next_tick = self._tick_due(next_tick)
            while self.raft.has_ready():
                await self._handle_ready(self.raft.ready())
                await self._drain_inbox()
                self._note_commit()
                # A backlog of Readies (a long apply, bounded per Ready by the core's
                # max_apply_bytes) must not stop the clock: heartbeats go out, and
                # messages that came in are read, between them.
                next_tick = self._tick_due(next_tick)

    def _tick_due(self, next_tick: float) -> float:
        """Tick the core for the time that has passed, at most one heartbeat interval
        of ticks (see the module's rules); returns when the next tick is due."""
        now = trio.current_time()
        ticks = 0
        while now >= next_tick and ticks < self.raft.cfg.heartbeat_ticks:
            self.raft.tick()
            next_tick += self.tick_s
            ticks += 1
        if now >= next_tick:
            next_tick = now + self.tick_s  # too far behind: resynchronise
        return next_tick

    @staticmethod
    async def _run_item(item: InboxItem) -> None:
        result = item()
        if result is not None:
            await result

    async def _drain_inbox(self) -> None:
        for _ in range(INBOX_ITEMS_MAX):
            try:
                item = self._inbox_recv.receive_nowait()
            except trio.WouldBlock:
                return
            await self._run_item(item)

    async def _handle_ready(self, rd: Ready) -> None:
        self.ready_count += 1
        if rd.hard_state is not None or rd.entries or rd.snapshot is not None:
            start = trio.current_time()
            await self._offload(self._persist, rd)
            elapsed = trio.current_time() - start
            self.fsync_seconds_total += elapsed
            if self.fsync_observer is not None:
                self.fsync_observer(elapsed)
        for m in rd.messages:
            self._send(m)
        if rd.committed_entries:
            results, persist = self.sm.apply(rd.committed_entries)
            await self._offload(persist)
            self._resolve(rd.committed_entries, results)
            if self._on_apply is not None:
                self._on_apply(rd.committed_entries, results)
        for rs in rd.read_states:
            self._read_ready(rs)
        self.raft.advance(rd)
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_event.set()
            self._applied_event = trio.Event()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)

    def _persist(self, rd: Ready) -> None:
        self.storage.save(rd.hard_state, rd.entries, rd.snapshot, sync=True)
        if rd.snapshot is not None:
            self.sm.restored(rd.snapshot.meta)

    def _resolve(self, entries: Sequence[Entry], results: list[bytes]) -> None:
        for e, result in zip(entries, results, strict=True):
            waiter = self._waiters.pop(e.index, None)
            if waiter is None:
                continue
            if e.term == waiter.term:
                waiter.resolve(Committed(e.index, result))
            else:
                waiter.resolve(NotCommitted(f"entry {e.index} was replaced by term {e.term}"))

    def _read_ready(self, rs: ReadState) -> None:
        pending = self._reads.get(rs.ctx)
        if pending is not None:
            pending[1].append(rs.index)
            pending[0].set()

    def _on_soft_state(self, soft: SoftState) -> None:
        if self.soft_state_observer is not None:
            self.soft_state_observer(soft)
        # Waiters survive a leadership change: their entries may still commit under
        # the next leader, and are resolved when applied or when their callers time out.
        self._state_event.set()
        self._state_event = trio.Event()


__all__ = [
    "Committed",
    "NotCommitted",
    "NotLeader",
    "Outcome",
    "ProposalDropped",
    "RaftDriver",
    "StateMachine",
    "Unknown",
]
