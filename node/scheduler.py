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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from consensus.types import ConfState, Entry, EntryType, NodeId, Role, Snapshot, SnapshotMeta
from node.commands import (
    Command,
    CommandDecodeError,
    Complete,
    Ok,
    Rejected,
    Start,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from node.driver import Committed, Outcome
from node.executors import Executors, RunContext
from node.model import Run
from node.planner import NodeLoad, due_fires, lost_nodes, node_tags, placements, timeouts
from node.state import SchedulerState
from node.statetables import Change
from storage.log import LmdbLogStorage
from storage.tables import Table, key_successor

log = logging.getLogger("rota.scheduler")

PLAN_INTERVAL_S = 0.1
WORKER_SLOTS_DEFAULT = 4
FIRE_BATCH_MAX = 256
ASSIGN_BATCH_MAX = 256
TIMEOUT_BATCH_MAX = 64
TIMEOUT_GRACE_MS = 30_000
SCAN_PAGE = 1000
PROPOSE_TIMEOUT_S = 10.0
OUTPUT_TAIL_CHARS = 2048


def now_ms() -> int:
    return int(time.time() * 1000)


class SchedulerStateMachine:
    """The driver's ``StateMachine``: commands on the log -> ``SchedulerState`` -> LMDB."""

    def __init__(self, store: LmdbLogStorage) -> None:
        self.store = store
        self.state = self._load()
        # Called after each applied batch with its last index and the records it
        # changed (``node.statetables.Change``), from the driver's loop task; a
        # listener must be quick and must not raise.
        self.listeners: list[Callable[[int, Sequence[Change]], None]] = []

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
            results.append(encode_result(self.state.apply(cmd, e.index)))
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
    live_nodes: Callable[[], list[tuple[NodeId, tuple[str, ...]]]]
    gone_nodes: Callable[[], list[NodeId]]
    executors: Executors
    output: Callable[[str, bytes], None]
    slots: int = WORKER_SLOTS_DEFAULT
    on_finished: Callable[[str], None] | None = None  # outcome of a run this node ran
    changed: trio.Event = field(default_factory=trio.Event)
    running: dict[str, trio.CancelScope] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sm.listeners.append(self._on_apply)

    def _on_apply(self, index: int, changes: Sequence[Change]) -> None:
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def submit(self, cmd: Command) -> Outcome:
        return await self.propose(encode_command(cmd), PROPOSE_TIMEOUT_S)

    # ------------------------------------------------------------------ leader
    async def leader_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(PLAN_INTERVAL_S)
            if self.role() is not Role.LEADER:
                continue
            for cmd in self.plan(now_ms()):
                outcome = await self.submit(cmd)
                if not isinstance(outcome, Committed):
                    break  # leadership moved or the log is slow: plan again next round

    def plan(self, now: int) -> list[Command]:
        state = self.sm.state
        loads = [
            NodeLoad(node, max(0, self.slots - state.running_count(node)), node_tags(tags))
            for node, tags in self.live_nodes()
        ]
        cmds: list[Command] = []
        cmds += due_fires(state, now, FIRE_BATCH_MAX)
        cmds += lost_nodes(state, self.gone_nodes(), now)
        cmds += placements(state, loads, now, ASSIGN_BATCH_MAX)
        cmds += timeouts(state, now, TIMEOUT_GRACE_MS, TIMEOUT_BATCH_MAX)
        return cmds

    # ------------------------------------------------------------------ worker
    async def worker_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._cancel_revoked()
                for run in list(self.sm.state.queued_on(self.node_id)):
                    if run.id not in self.running and len(self.running) < self.slots:
                        scope = trio.CancelScope()
                        self.running[run.id] = scope
                        nursery.start_soon(self._execute, run, scope)
                with trio.move_on_after(1.0):
                    await self.changed.wait()

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
        elif self.on_finished is not None:
            self.on_finished(state)


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
