"""The live event feed behind ``GET /api/v1/events``: run changes as they commit, and a
cluster snapshot about once a second, fanned out to every open stream.

Rules:
- ``on_apply`` is a ``SchedulerStateMachine`` listener: it runs in the Raft driver's
  loop task after every applied batch, so it is O(changes), never awaits and never
  blocks. It wraps each changed run in a ``_RunEvent`` holding the state's record
  itself (records are immutable, and the listener runs right after the changes were
  drained, so the state holds exactly what was written: nothing is decoded). JSON
  rendering happens later, on first use, in a stream's task, and is cached so N
  streams pay for one rendering.
- Everything is bounded: the ring holds ``ring_max`` recent run events (resume with
  ``Last-Event-ID``), each subscriber's channel ``buffer_max`` events, and the feed
  ``subscribers_max`` subscribers. Nothing ever waits for a subscriber: one that is
  ``buffer_max`` behind is dropped (its channel ends; the stream sends a reset).
- Resume: an id ``n`` resumes when every event after ``n`` is still in the ring, that
  is when ``n >= evicted_through`` (the highest index whose events left the ring, or
  the applied index when the feed started). Otherwise the subscriber gets a
  ``Reset`` first, then live events.
- Snapshots are built once per tick for all subscribers, by ``run`` (a trio service).
  The stats in them count what the ring saw since the previous tick, cluster-wide:
  every node applies the same log, so any node's feed shows the whole cluster.
- Steals are seen as commands, not records: ``on_command`` is fed each applied
  command and result by a ``SchedulerStateMachine`` observer (same rules as
  ``on_apply``) and keeps the last
  ``STEALS_MAX`` committed ``Steal``s that moved runs. Each snapshot carries them.
- History: the stats of the last ``HISTORY_MAX`` snapshots, sent to a new subscriber
  before anything else, so a page opened now draws the last minutes at once.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from node.commands import Command, Ok, Result, Steal
from node.model import Run
from node.modeljson import run_to_json
from node.records import decode_run
from node.schedule import format_ms
from node.statetables import TABLE_RUNS, Change, StateTables
from web.port import (
    ClusterSnapshot,
    ClusterView,
    FeedEvent,
    FeedStats,
    History,
    NodeLoad,
    QueueDepth,
    Reset,
    StealEvent,
    Unavailable,
)

RING_MAX_DEFAULT = 4096
BUFFER_MAX_DEFAULT = 1024
SUBSCRIBERS_MAX_DEFAULT = 1024
SNAPSHOT_INTERVAL_S = 1.0
QUEUE_NODES_MAX = 64  # queue depths reported for at most this many nodes (x 10 priorities)
STEALS_MAX = 50  # recent steals carried by each snapshot
HISTORY_MAX = 300  # snapshots' stats sent at subscribe: 5 minutes at one a second
TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})
FAILED_STATES = frozenset({"failed", "timed_out"})


class _RunEvent:
    """One changed run record (None: deleted); rendered once, on first use."""

    __slots__ = ("_json", "_run", "created", "index", "last_in_batch", "run_id")

    def __init__(
        self, index: int, run_id: str, run: Run | None, last_in_batch: bool, created: bool
    ) -> None:
        self.index = index
        self.run_id = run_id
        self.last_in_batch = last_in_batch
        self.created = created  # the run was created by this batch
        self._run = run
        self._json: str | None = None

    def run(self) -> Run | None:
        return self._run

    def json(self) -> str | None:
        if self._json is None:
            run = self.run()
            if run is None:
                return None
            self._json = json.dumps(run_to_json(run), separators=(",", ":"))
        return self._json


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    subscribers: int
    ring: int
    evicted_through: int
    dropped_slow_total: int
    events_total: int


@dataclass
class EventFeed:
    """Run events and snapshots for ``web.port.EventsPort``. Subscribe ``on_apply`` to
    ``SchedulerStateMachine.listeners``, feed ``on_command`` from its ``observers``, and start
    ``run`` in the node's nursery."""

    node_id: str
    cluster_view: Callable[[], ClusterView]
    load: Callable[[], NodeLoad]
    state: Callable[[], StateTables]  # the scheduler state, for queue depths
    applied_index: int  # what was applied before the feed saw anything
    ring_max: int = RING_MAX_DEFAULT
    buffer_max: int = BUFFER_MAX_DEFAULT
    subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S
    wall_clock: Callable[[], float] = time.time  # stamps each snapshot's stats (at_s)
    _ring: deque[_RunEvent] = field(init=False)
    _steals: deque[StealEvent] = field(init=False, default_factory=lambda: deque(maxlen=STEALS_MAX))
    _stolen_total: int = field(init=False, default=0)  # runs moved by the steals seen
    _stolen_seen: int = field(init=False, default=0)  # _stolen_total at the last tick
    _history: deque[FeedStats] = field(
        init=False, default_factory=lambda: deque(maxlen=HISTORY_MAX)
    )
    _subscribers: list[trio.MemorySendChannel[FeedEvent]] = field(init=False, default_factory=list)
    _latest: ClusterSnapshot | None = field(init=False, default=None)
    _events_total: int = field(init=False, default=0)
    _stats_seen: int = field(init=False, default=0)  # _events_total at the last tick
    _dropped_slow_total: int = field(init=False, default=0)
    _last_index: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        assert self.ring_max >= 1 and self.buffer_max >= 1 and self.subscribers_max >= 1
        self._ring = deque(maxlen=self.ring_max)
        self.evicted_through = self.applied_index
        self._last_index = self.applied_index

    # ------------------------------------------------------------ apply path
    def on_apply(self, index: int, changes: Sequence[Change]) -> None:
        """The state machine listener: O(changes), never blocks, never raises."""
        runs = [(key, value) for table, key, value in changes if table == TABLE_RUNS]
        previous, self._last_index = self._last_index, max(self._last_index, index)
        state = self.state()
        for i, (key, value) in enumerate(runs):
            if len(self._ring) == self.ring_max:
                self.evicted_through = max(self.evicted_through, self._ring[0].index)
            run_id = key.decode()
            created = previous < _creation_index(run_id) <= index
            event = _RunEvent(
                index, run_id, _record(state, run_id, value), i == len(runs) - 1, created
            )
            self._ring.append(event)
            self._events_total += 1
            self._fan_out(event)

    def on_command(self, cmd: Command, result: Result) -> None:
        """The state machine observer: keeps each steal that moved runs. O(1)."""
        match cmd, result:
            case Steal(), Ok(ids=ids) if ids:
                self._steals.append(
                    StealEvent(format_ms(cmd.now_ms), cmd.from_node, cmd.to_node, len(ids))
                )
                self._stolen_total += len(ids)

    def _fan_out(self, event: FeedEvent) -> None:
        kept: list[trio.MemorySendChannel[FeedEvent]] = []
        for channel in self._subscribers:
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._dropped_slow_total += 1
                channel.close()  # the stream drains what it has, then sends a reset
                continue
            except trio.BrokenResourceError:
                channel.close()  # the stream closed its end: unsubscribed
                continue
            kept.append(channel)
        self._subscribers = kept

    # ------------------------------------------------------------ subscribers
    def subscribe(self, last_event_id: int | None) -> trio.MemoryReceiveChannel[FeedEvent]:
        """See ``web.port.EventsPort.subscribe``."""
        self._subscribers = [c for c in self._subscribers if not _closed(c)]
        if len(self._subscribers) >= self.subscribers_max:
            raise Unavailable(f"the event feed has its maximum of {self.subscribers_max} streams")
        send, receive = trio.open_memory_channel[FeedEvent](self.buffer_max)
        if self._history:
            send.send_nowait(History(tuple(self._history)))
        if self._latest is not None:
            send.send_nowait(self._latest)
        if last_event_id is not None:
            for event in self._backlog(last_event_id):
                try:
                    send.send_nowait(event)
                except trio.WouldBlock:
                    send.close()  # the backlog alone overflows it: reset after the drain
                    return receive
        self._subscribers.append(send)
        return receive

    def _backlog(self, last_event_id: int) -> list[FeedEvent]:
        if last_event_id < self.evicted_through:
            return [Reset(f"event {last_event_id} is older than this node's event ring")]
        return [e for e in self._ring if e.index > last_event_id]

    # ------------------------------------------------------------ snapshots
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Build and fan out a snapshot every ``snapshot_interval_s``."""
        self._latest = self.snapshot(self.snapshot_interval_s)
        task_status.started()
        while True:
            await trio.sleep(self.snapshot_interval_s)
            self._latest = self.snapshot(self.snapshot_interval_s)
            self._fan_out(self._latest)

    def snapshot(self, window_s: float) -> ClusterSnapshot:
        """The cluster, this node's load, queues, recent steals and the stats since the
        last call (kept in the history)."""
        stats = self._take_stats(window_s)
        self._history.append(stats)
        return ClusterSnapshot(
            cluster=self.cluster_view(),
            load=self.load(),
            queues=self._queues(),
            stats=stats,
            applied_index=self._last_index,
            steals=tuple(self._steals),
        )

    def _queues(self) -> tuple[QueueDepth, ...]:
        depths = self.state().queue_depths()
        nodes = sorted(depths, key=lambda n: (n is not None, n or ""))[:QUEUE_NODES_MAX]
        return tuple(
            QueueDepth(node, priority, depth)
            for node in nodes
            for priority, depth in sorted(depths[node].items())
        )

    def _take_stats(self, window_s: float) -> FeedStats:
        new = self._events_total - self._stats_seen
        self._stats_seen = self._events_total
        partial = new > len(self._ring)
        finished = failed = 0
        lateness: list[float] = []
        for event in itertools.islice(reversed(self._ring), min(new, len(self._ring))):
            run = event.run()
            if run is None:
                continue
            if run.state in TERMINAL_STATES:
                finished += 1
                failed += run.state in FAILED_STATES
            elif event.created and run.kind == "scheduled" and run.attempt == 1:
                lateness.append(max(0.0, (run.queued_at - run.scheduled_at) / 1000))
        mean = math.fsum(lateness) / len(lateness) if lateness else 0.0
        stolen, self._stolen_seen = self._stolen_total - self._stolen_seen, self._stolen_total
        return FeedStats(
            window_s,
            finished,
            failed,
            len(lateness),
            max(lateness, default=0.0),
            mean,
            partial,
            runs_stolen=stolen,
            at_s=self.wall_clock(),
        )

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(
            len(self._subscribers),
            len(self._ring),
            self.evicted_through,
            self._dropped_slow_total,
            self._events_total,
        )


def _record(state: StateTables, run_id: str, value: bytes | None) -> Run | None:
    """The run a change wrote: the state's own record (see the module header); the
    bytes are decoded only when the state does not hold that run (changes fed by
    hand, as tests do)."""
    if value is None:
        return None
    run = state.run(run_id)
    return run if run is not None else decode_run(value)


def _creation_index(run_id: str) -> int:
    """The index of the entry that created a run (``node.model.run_id_for``); 0 if the
    id is not in that form."""
    digits = run_id[1:13]
    try:
        return int(digits, 16) if len(digits) == 12 and run_id[0] == "r" else 0
    except ValueError:
        return 0


def _closed(channel: trio.MemorySendChannel[FeedEvent]) -> bool:
    stats = channel.statistics()
    return stats.open_receive_channels == 0


def node_load(node_id: str, slots: int, state: StateTables) -> NodeLoad:
    """This node's load as the replicated state records it."""
    running = state.running_count(node_id)
    queued = min(state.queued_count(node_id), 1_000_000)
    return NodeLoad(node_id, slots, running, max(0, slots - running), queued)
