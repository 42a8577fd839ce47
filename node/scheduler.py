"""Scheduling on a node: the replicated state machine adapter, the leader's planning
loop, and the worker that runs what is placed on this node.

Rules:
- The only authority is the committed log: the leader proposes ``Fire``, ``SkipSlots``,
  ``Assign``, ``TimeoutRun`` and ``NodeGone`` from the pure planner; a worker starts a
  run only after its ``Start(run, node, token)`` has committed and reports with
  ``Complete(run, token, ...)``; a stale token is rejected by the state machine.
- ``SchedulerStateMachine.apply`` runs in the driver's loop task (no thread races with
  readers) and hands back one durable write (records + applied index, one
  transaction) that the driver runs in a worker thread before answering anyone.
- Committed time: commands carry the proposer's wall clock in ``now_ms``; the state
  machine never reads a clock.
- Work stealing: a node with free slots and nothing queued proposes ``Steal`` from
  the pure ``steal_choice``, at most every ``steal_interval_s``, one at a time.
- Metrics are observed where the log says a thing happened (``SchedulerEvents``): a
  Fire or a skip when it is applied on the leader, a Start or a Steal when it is
  applied on the node concerned, a run's end when its Complete was accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from consensus.types import ConfState, Entry, EntryType, NodeId, Role, Snapshot, SnapshotMeta
from node import faults
from node.commands import (
    Command,
    CommandDecodeError,
    Complete,
    Fire,
    Ok,
    Rejected,
    Result,
    SkipSlots,
    Start,
    Steal,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from node.driver import Committed, Outcome
from node.executors import Executors, RunContext
from node.model import Run
from node.planner import (
    NodeLoad,
    due_fires,
    lost_nodes,
    node_tags,
    placements,
    steal_choice,
    timeouts,
)
from node.schedule import jitter_ms
from node.state import SchedulerState
from node.statetables import Change
from storage.log import LmdbLogStorage
from storage.tables import Table, key_successor

log = logging.getLogger("rota.scheduler")

PLAN_INTERVAL_S = 0.1
FIRE_PLAN_AHEAD_MS = 100  # the next due slots are planned this long before they are due
WORKER_SLOTS_DEFAULT = 4
FIRE_BATCH_MAX = 256  # slots per Fire entry
FIRE_BATCHES_MAX = 64  # Fire entries per planning round, proposed together
ASSIGN_BATCH_MAX = 256
TIMEOUT_BATCH_MAX = 64
TIMEOUT_GRACE_MS = 30_000
SCAN_PAGE = 1000
PROPOSE_TIMEOUT_S = 10.0
OUTPUT_TAIL_CHARS = 2048
WORKER_QUEUE_MAX_DEFAULT = 8
STEAL_THRESHOLD_DEFAULT = 0
STEAL_BATCH_MAX_DEFAULT = 32
STEAL_INTERVAL_S_DEFAULT = 0.2
SEEN_STARTS_SLACK = 1024


def now_ms() -> int:
    return int(time.time() * 1000) + faults.clock_offset_ms()  # 0 without fault injection


class SchedulerEvents(Protocol):
    """What the scheduler reports as it happens (``node.metrics.Metrics``; ``EventLog``
    is the in-memory twin)."""

    def fired(self, lateness_s: float, applied_s: float) -> None:
        """A slot fired: the Fire committed ``lateness_s`` after the slot was due, and
        this node (the leader) applied it ``applied_s`` after."""
        ...

    def misfire(self, policy: str, slots: int = 1) -> None:
        """``slots`` missed slots were skipped under ``policy``."""
        ...

    def run_started(self, delay_s: float) -> None:
        """A run started on this node ``delay_s`` after it could first have."""
        ...

    def run_finished(self, outcome: str) -> None:
        """A run this node executed ended with ``outcome`` (accepted by the log)."""
        ...

    def steal(self, direction: str, runs: int) -> None:
        """``runs`` runs were stolen by (``in``) or from (``out``) this node."""
        ...


@dataclass
class EventLog:
    """``SchedulerEvents`` that remembers what it was told, in order."""

    events: list[tuple[str, object]] = field(default_factory=list)

    def fired(self, lateness_s: float, applied_s: float) -> None:
        self.events.append(("fired", lateness_s))
        self.events.append(("fire_applied", applied_s))

    def misfire(self, policy: str, slots: int = 1) -> None:
        self.events.append(("misfire", (policy, slots)))

    def run_started(self, delay_s: float) -> None:
        self.events.append(("run_started", delay_s))

    def run_finished(self, outcome: str) -> None:
        self.events.append(("run_finished", outcome))

    def steal(self, direction: str, runs: int) -> None:
        self.events.append(("steal", (direction, runs)))

    def named(self, name: str) -> list[object]:
        return [value for kind, value in self.events if kind == name]


class SchedulerStateMachine:
    """The driver's ``StateMachine``: commands on the log -> ``SchedulerState`` -> LMDB."""

    def __init__(self, store: LmdbLogStorage) -> None:
        self.store = store
        self.state = self._load()
        # Called after each applied batch with its last index and the records it
        # changed (``node.statetables.Change``), from the driver's loop task; a
        # listener must be quick and must not raise.
        self.listeners: list[Callable[[int, Sequence[Change]], None]] = []
        # Called with each applied command's entry, the command and its result, in log
        # order (same rules).
        self.observers: list[Callable[[Entry, Command, Result], None]] = []

    def _load(self) -> SchedulerState:
        records: list[tuple[str, bytes, bytes]] = []
        for table in (Table.JOBS, Table.RUNS):
            start: bytes | None = None
            while True:
                rows = self.store.scan(table, start=start, limit=SCAN_PAGE)
                records += [(table.value, k, v) for k, v in rows]
                if len(rows) < SCAN_PAGE:
                    break
                start = key_successor(rows[-1][0])
        return SchedulerState.load(records)

    def applied_index(self) -> int:
        return self.store.applied_index()

    def apply(self, entries: Sequence[Entry]) -> tuple[list[bytes], Callable[[], None]]:
        results: list[bytes] = []
        for e in entries:
            if e.type is not EntryType.NORMAL or not e.data:
                results.append(b"")
                continue
            try:
                cmd = decode_command(e.data)
            except CommandDecodeError as err:
                results.append(encode_result(Rejected("invalid", f"undecodable command: {err}")))
                continue
            result = self.state.apply(cmd, e.index)
            for observe in self.observers:
                observe(e, cmd, result)
            results.append(encode_result(result))
        changes = self.state.drain_changes()
        writes = [(Table(t), k, v) for t, k, v in changes]
        last = entries[-1].index
        for notify in self.listeners:
            notify(last, changes)
        return results, lambda: self.store.apply(writes, last)

    def create_snapshot(self, index: int, term: int, conf: ConfState) -> Snapshot:
        return self.store.create_snapshot(index, term, conf)

    def restored(self, meta: SnapshotMeta) -> None:
        self.state = self._load()


@dataclass
class SchedulerService:
    """The leader's planning loop and this node's worker."""

    node_id: NodeId
    sm: SchedulerStateMachine
    role: Callable[[], Role]
    propose: Callable[[bytes, float], Awaitable[Outcome]]  # NodeService.propose
    # Live nodes (this one included) as (id, worker slots, gossiped tags).
    live_nodes: Callable[[], list[tuple[NodeId, int, tuple[str, ...]]]]
    gone_nodes: Callable[[], list[NodeId]]
    executors: Executors
    output: Callable[[str, bytes], None]
    events: SchedulerEvents  # metrics (node.metrics.Metrics) or the EventLog twin
    slots: int = WORKER_SLOTS_DEFAULT
    queue_max: int = WORKER_QUEUE_MAX_DEFAULT
    steal_threshold: int = STEAL_THRESHOLD_DEFAULT
    steal_batch_max: int = STEAL_BATCH_MAX_DEFAULT  # 0: never steal
    steal_interval_s: float = STEAL_INTERVAL_S_DEFAULT
    changed: trio.Event = field(default_factory=trio.Event)
    running: dict[str, trio.CancelScope] = field(default_factory=dict)
    stealing: bool = False
    started_seen: dict[str, int] = field(default_factory=dict)  # run id -> now_ms at Start
    # A round's commands in one step of the core (``NodeService.propose_many``);
    # without it they are proposed concurrently, one by one.
    propose_many: Callable[[list[bytes], float], Awaitable[list[Outcome]]] | None = None
    # This node's Raft term (the leader counts the Fires of its own term only).
    term: Callable[[], int] | None = None
    # How long ago this node saw an entry committed (``RaftDriver.commit_age_s``).
    commit_age_s: Callable[[int], float | None] = lambda index: None

    def __post_init__(self) -> None:
        self.sm.listeners.append(self._on_apply)
        self.sm.observers.append(self._observe)

    def _on_apply(self, index: int, changes: Sequence[Change]) -> None:
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def submit(self, cmd: Command) -> Outcome:
        return await self.propose(encode_command(cmd), PROPOSE_TIMEOUT_S)

    def loads(self) -> list[NodeLoad]:
        """The live nodes' free slots, from their slots and the replicated state."""
        state = self.sm.state
        return [
            NodeLoad(node, max(0, slots - state.running_count(node)), node_tags(tags))
            for node, slots, tags in self.live_nodes()
        ]

    def _observe(self, entry: Entry, cmd: Command, result: Result) -> None:
        """Metrics from an applied command (see the module header); quick, no I/O."""
        if not isinstance(result, Ok):
            return
        state = self.sm.state
        match cmd:
            case Fire() if self._proposed_here(entry):
                now = now_ms()
                # Lateness is to the commit (SPEC): when this node saw the entry
                # committed, or now if it did not see that (it led since).
                age_s = self.commit_age_s(entry.index)
                committed = now if age_s is None else now - round(age_s * 1000)
                for run_id in result.ids:
                    run = state.run(run_id)
                    job = None if run is None or run.job_id is None else state.job(run.job_id)
                    if run is not None and job is not None:
                        slot = run.scheduled_at
                        due = slot + jitter_ms(job.spec.schedule, job.id, slot)
                        self.events.fired((committed - due) / 1000, (now - due) / 1000)
            case SkipSlots() if self._proposed_here(entry) and result.ids:
                self.events.misfire(cmd.policy, cmd.count)
            case Start():
                self._seen_start(cmd.run_id)
                run = state.run(cmd.run_id)
                if cmd.node == self.node_id and run is not None and run.started_at is not None:
                    ready = max(run.queued_at, run.not_before or 0)
                    self.events.run_started(max(0, run.started_at - ready) / 1000)
            case Steal() if result.ids and self.node_id in (cmd.to_node, cmd.from_node):
                direction = "in" if cmd.to_node == self.node_id else "out"
                self.events.steal(direction, len(result.ids))
            case _:
                pass

    def _proposed_here(self, entry: Entry) -> bool:
        """``entry`` was proposed by this node as leader (of its term): a new leader
        applying what its predecessor fired does not count it again."""
        if self.role() is not Role.LEADER:
            return False
        return self.term is None or entry.term == self.term()

    def _seen_start(self, run_id: str) -> None:
        """Remember this node's clock when a run started (``timeouts``), forgetting
        runs that no longer run once the map outgrows what runs by half."""
        self.started_seen[run_id] = now_ms()
        state = self.sm.state
        if len(self.started_seen) > SEEN_STARTS_SLACK + 3 * state.running_total() // 2:
            seen = self.started_seen
            self.started_seen = {r.id: seen[r.id] for r in state.running() if r.id in seen}

    # ------------------------------------------------------------------ leader
    async def leader_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        busy = False
        while True:
            await trio.sleep(0 if busy else self._until_next_round_s())
            busy = False
            if self.role() is Role.LEADER:
                busy = await self.leader_round()

    async def leader_round(self) -> bool:
        """One planning round (``run_round``'s answer): the slots about to fall due
        at their due time (``fires_at_due``), or whatever is due now, and always the
        placements, timeouts and lost nodes of now."""
        ahead = await self.fires_at_due()
        if self.role() is not Role.LEADER:
            return False  # leadership moved while waiting for the slot
        now = now_ms()
        return await self.run_round(
            self.plan(now) if ahead is None else ahead + self.plan_rest(now)
        )

    def _until_next_round_s(self) -> float:
        """Plan every ``PLAN_INTERVAL_S``, or sooner: ``FIRE_PLAN_AHEAD_MS`` before a
        slot falls due."""
        due = self.sm.state.next_due_ms()
        if due is None:
            return PLAN_INTERVAL_S
        return min(PLAN_INTERVAL_S, max(0.0, (due - FIRE_PLAN_AHEAD_MS - now_ms()) / 1000))

    async def fires_at_due(self) -> list[Command] | None:
        """The commands for the next due time, planned up to ``FIRE_PLAN_AHEAD_MS``
        before it and returned once this node's clock has reached it, so the planning
        (tens of ms for 10,000 slots) does not add to their lateness. Their ``now_ms``
        is that due time: a decision for that instant, which has come when they are
        proposed. None when nothing falls due that soon (plan as usual)."""
        due = self.sm.state.next_due_ms()
        now = now_ms()
        if due is None or not now < due <= now + FIRE_PLAN_AHEAD_MS:
            return None
        cmds = due_fires(self.sm.state, due, FIRE_BATCH_MAX, FIRE_BATCHES_MAX)
        while (left_ms := due - now_ms()) > 0:
            await trio.sleep(left_ms / 1000)
        return cmds

    async def run_round(self, cmds: list[Command]) -> bool:
        """Propose one round's commands: skips first (a job's slots are taken in
        order), then the rest together, so they share the leader's fsyncs. True when
        the round was full and everything committed: plan again at once."""
        skips: list[Command] = [c for c in cmds if isinstance(c, SkipSlots)]
        rest: list[Command] = [c for c in cmds if not isinstance(c, SkipSlots)]
        for group in (skips, rest):
            outcomes = await self._submit_all(group)
            if not all(isinstance(o, Committed) for o in outcomes):
                return False  # leadership moved or the log is slow: plan again later
        fires = sum(len(c.items) for c in cmds if isinstance(c, Fire))
        return fires >= FIRE_BATCH_MAX * FIRE_BATCHES_MAX

    async def _submit_all(self, cmds: Sequence[Command]) -> list[Outcome]:
        """Propose ``cmds`` together: in one step of the core when possible, so they
        share one fsync and commit at once (10,000 fires are 40 Fire entries)."""
        if not cmds:
            return []
        if self.propose_many is not None and len(cmds) > 1:
            return await self.propose_many([encode_command(c) for c in cmds], PROPOSE_TIMEOUT_S)
        outcomes: list[Outcome] = []

        async def submit(cmd: Command) -> None:
            outcomes.append(await self.submit(cmd))

        async with trio.open_nursery() as nursery:
            for cmd in cmds:
                nursery.start_soon(submit, cmd)
        return outcomes

    def plan(self, now: int) -> list[Command]:
        return due_fires(self.sm.state, now, FIRE_BATCH_MAX, FIRE_BATCHES_MAX) + self.plan_rest(now)

    def plan_rest(self, now: int) -> list[Command]:
        """Everything of a round but the fires: lost nodes, placements, timeouts."""
        state = self.sm.state
        cmds: list[Command] = []
        cmds += lost_nodes(state, self.gone_nodes(), now)
        cmds += placements(state, self.loads(), now, ASSIGN_BATCH_MAX, queue_max=self.queue_max)
        cmds += timeouts(state, now, TIMEOUT_GRACE_MS, TIMEOUT_BATCH_MAX, self.started_seen)
        return cmds

    # ------------------------------------------------------------------ worker
    async def worker_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            next_steal_s = trio.current_time()
            while True:
                self._cancel_revoked()
                for run in list(self.sm.state.queued_on(self.node_id)):
                    if run.id not in self.running and len(self.running) < self.slots:
                        scope = trio.CancelScope()
                        self.running[run.id] = scope
                        nursery.start_soon(self._execute, run, scope)
                wait_s = 1.0
                if self._idle():
                    wait_s = self.steal_interval_s
                    if trio.current_time() >= next_steal_s:
                        next_steal_s = trio.current_time() + self.steal_interval_s
                        self.stealing = True
                        nursery.start_soon(self._steal)
                with trio.move_on_after(wait_s):
                    await self.changed.wait()

    def _idle(self) -> bool:
        """Free slots, nothing queued here, stealing on and no steal under way."""
        return (
            self.steal_batch_max > 0
            and not self.stealing
            and len(self.running) < self.slots
            and self.sm.state.queued_count(self.node_id) == 0
        )

    def steal_plan(self, now: int) -> Steal | None:
        """What to steal now: ``steal_choice`` with this node's own free slots (it
        knows better than the log which of its slots are taken)."""
        free = max(0, self.slots - len(self.running))
        nodes = [
            NodeLoad(n.node, free, n.tags) if n.node == self.node_id else n for n in self.loads()
        ]
        return steal_choice(
            self.node_id, nodes, self.sm.state, self.steal_threshold, self.steal_batch_max, now
        )

    async def _steal(self) -> None:
        try:
            cmd = self.steal_plan(now_ms())
            if cmd is not None:
                await self.submit(cmd)  # counted when applied (``_observe``)
        finally:
            self.stealing = False
            self._wake()

    def _cancel_revoked(self) -> None:
        """A run cancelled, reassigned or deleted under us: stop its process."""
        for run_id, scope in list(self.running.items()):
            run = self.sm.state.run(run_id)
            if run is None or run.node != self.node_id or run.state not in ("queued", "running"):
                scope.cancel()

    async def _execute(self, run: Run, scope: trio.CancelScope) -> None:
        try:
            with scope:
                outcome = await self.submit(Start(run.id, self.node_id, run.token, now_ms()))
                if faults.planted(faults.UNFENCED_START):  # a planted bug, tests only
                    await self._run_and_report(run)
                    return
                if not _accepted(outcome):
                    return
                started = self.sm.state.run(run.id)
                if started is None or started.state != "running":
                    return
                await self._run_and_report(started)
        finally:
            self.running.pop(run.id, None)
            self._wake()

    async def _run_and_report(self, run: Run) -> None:
        ctx = RunContext(
            run.job_id or "task",
            run.id,
            run.scheduled_at,
            run.attempt,
            run.token,
            float(run.timeout_s),
        )
        sink = _RunSink(self.output, run.id)
        result = await self.executors.run(_executor_json(run), ctx, sink)
        tail = result.output_tail.decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
        state = result.state if result.state in ("succeeded", "failed", "timed_out") else "failed"
        done = Complete(run.id, run.token, state, result.exit_code, result.error, tail, now_ms())  # type: ignore[arg-type]
        with trio.CancelScope(shield=True):
            outcome = await self.submit(done)
        if not _accepted(outcome):
            log.info("completion of %s not accepted: %s", run.id, outcome)
        else:
            self.events.run_finished(state)


@dataclass
class OutputBuffer:
    """Run output on its way to the node-local store: buffered in memory (bounded per
    run and in all) and written in batches from a worker thread, so a chatty process
    never makes the event loop wait for an fsync."""

    append: Callable[[str, bytes, int], None]  # (run_id, chunk, now_ms), blocking
    bytes_max: int = 8 << 20
    pending: dict[str, bytearray] = field(default_factory=dict)
    dropped_bytes: int = 0

    def write(self, run_id: str, chunk: bytes) -> None:
        if sum(len(b) for b in self.pending.values()) + len(chunk) > self.bytes_max:
            self.dropped_bytes += len(chunk)
            return
        self.pending.setdefault(run_id, bytearray()).extend(chunk)

    async def flush_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(0.5)
            await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, {}
        now = now_ms()
        for run_id, data in batch.items():
            await trio.to_thread.run_sync(self.append, run_id, bytes(data), now)


@dataclass(frozen=True, slots=True)
class _RunSink:
    """Output of one run, to the node-local output store."""

    output: Callable[[str, bytes], None]
    run_id: str

    def write(self, chunk: bytes) -> None:
        self.output(self.run_id, chunk)


def _accepted(outcome: Outcome) -> bool:
    return isinstance(outcome, Committed) and isinstance(decode_result(outcome.result), Ok)


def _executor_json(run: Run) -> dict[str, object]:
    from node.modeljson import executor_to_json

    return executor_to_json(run.executor)
