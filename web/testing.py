"""In-memory twins of the web layer's seams, for tests and demos.

``FakeNodePort`` keeps a small cluster model (members, leader, term, indexes) and
implements ``NodePort`` with the contract's semantics and errors. ``fail_next``
makes the next write raise a chosen ``PortError``, so tests can check how each
error is rendered. ``calls`` records every write, so tests can assert that a
rejected request never reached the port.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from web.port import (
    ClusterSnapshot,
    ClusterView,
    Conflict,
    EventsPort,
    FeedEvent,
    FeedStats,
    History,
    Invalid,
    MemberView,
    NodeLoad,
    NodePort,
    NotFound,
    OutputChunk,
    PortError,
    Reset,
    Unavailable,
)


def member(node_id: str, role: str = "follower", **overrides: object) -> MemberView:
    """A healthy member with plausible numbers; override any field by keyword."""
    number = int(node_id[1:]) if node_id[1:].isdigit() else 1
    fields: dict[str, object] = {
        "id": node_id,
        "role": role,
        "api_address": f"127.0.0.1:{8079 + number}",  # the `rota dev` layout
        "state": "alive",
        "match_index": 0,
        "applied_index": 0,
        "queue_depth": 0,
        "free_slots": 4,
    }
    fields.update(overrides)
    return MemberView(**fields)  # type: ignore[arg-type]


class FakeNodePort:
    """A ``NodePort`` over an in-memory cluster; the node it models is always in sync."""

    def __init__(self, members: int = 3, *, leader: str | None = "n1", term: int = 3) -> None:
        assert members >= 1
        self.term = term
        self.commit_index = 42
        self.leader = leader
        self.ready = leader is not None
        self.members: dict[str, MemberView] = {}
        for i in range(1, members + 1):
            node_id = f"n{i}"
            role = "leader" if node_id == leader else "follower"
            self.members[node_id] = member(
                node_id, role, match_index=self.commit_index, applied_index=self.commit_index
            )
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.fail_next: PortError | None = None

    # -- reads

    def cluster_view(self) -> ClusterView:
        members = tuple(self.members[k] for k in sorted(self.members))
        return ClusterView(self.leader, self.term, self.commit_index, members)

    def is_ready(self) -> bool:
        return self.ready and self.leader is not None

    # -- writes

    async def transfer_leadership(self, target: str | None) -> str:
        self._enter("transfer_leadership", target)
        if self.leader is None:
            raise Unavailable("no leader to transfer from")
        voters = [m.id for m in self.members.values() if m.role != "learner"]
        if target is None:
            candidates = sorted(v for v in voters if v != self.leader)
            if not candidates:
                raise Conflict("no other voter to transfer leadership to")
            target = candidates[0]
        elif target not in self.members:
            raise NotFound(f"no member {target!r}")
        elif target not in voters:
            raise Invalid(f"{target!r} is a learner; only voters can lead", field="target")
        if target != self.leader:
            self._set_role(self.leader, "follower")
            self._set_role(target, "leader")
            self.leader = target
            self.term += 1
        await trio.lowlevel.checkpoint()
        return target

    async def add_member(self, node_id: str, address: str | None) -> ClusterView:
        self._enter("add_member", node_id, address)
        if node_id in self.members:
            raise Conflict(f"{node_id!r} is already a member")
        self.members[node_id] = member(node_id, "learner", api_address=None)
        self.commit_index += 1
        await trio.lowlevel.checkpoint()
        return self.cluster_view()

    async def remove_member(self, node_id: str) -> ClusterView:
        self._enter("remove_member", node_id)
        if node_id not in self.members:
            raise NotFound(f"no member {node_id!r}")
        voters = [m.id for m in self.members.values() if m.role != "learner"]
        if voters == [node_id]:
            raise Conflict(f"{node_id!r} is the last voter")
        del self.members[node_id]
        if node_id == self.leader:
            self.leader = None
        self.commit_index += 1
        await trio.lowlevel.checkpoint()
        return self.cluster_view()

    async def take_snapshot(self) -> int:
        self._enter("take_snapshot")
        await trio.lowlevel.checkpoint()
        return self.commit_index

    # -- helpers

    def _enter(self, name: str, *args: object) -> None:
        self.calls.append((name, args))
        error, self.fail_next = self.fail_next, None
        if error is not None:
            raise error

    def _set_role(self, node_id: str, role: str) -> None:
        self.members[node_id] = dataclasses.replace(self.members[node_id], role=role)  # type: ignore[arg-type]


if TYPE_CHECKING:

    def _is_a_node_port(port: FakeNodePort) -> NodePort:
        return port  # mypy proves the twin satisfies the port


class FakeSchedulerPort:
    """In-memory ``SchedulerPort`` for the web tests: records calls, answers canned JSON."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.outputs: dict[str, tuple[bytes, bool]] = {}  # run id -> (output, run ended)
        self.missing_runs: set[str] = set()

    def _record(self, name: str, arg: object) -> dict[str, Any]:
        self.calls.append((name, arg))
        return {"id": "j000000000001", "call": name}

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._record("create_job", body)

    async def list_jobs(self, query: Mapping[str, str], stale: bool) -> dict[str, Any]:
        self.calls.append(("list_jobs", dict(query)))
        return {"items": [], "next_cursor": None}

    async def get_job(self, job_id: str, stale: bool) -> dict[str, Any]:
        return self._record("get_job", job_id)

    async def update_job(
        self, job_id: str, body: dict[str, Any], if_match: str | None, patch: bool
    ) -> dict[str, Any]:
        return self._record("update_job", (job_id, body, if_match, patch))

    async def delete_job(self, job_id: str) -> None:
        self._record("delete_job", job_id)

    async def job_action(self, job_id: str, action: str) -> dict[str, Any]:
        return self._record(action, job_id)

    async def next_fires(self, job_id: str, count: int, stale: bool) -> dict[str, Any]:
        return self._record("next_fires", (job_id, count))

    def preview_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        """Five instants for any body, except ``Invalid("schedule.cron")`` for a cron
        expression of fewer than 5 fields (the twin does not parse schedules)."""
        self.calls.append(("preview_schedule", body))
        schedule = body.get("schedule")
        cron = schedule.get("cron") if isinstance(schedule, dict) else None
        if isinstance(cron, str) and len(cron.split()) < 5:
            raise Invalid(f"needs 5 or 6 fields, got {len(cron.split())}", "schedule.cron")
        return {"next": [f"2026-01-01T00:0{i}:00Z" for i in range(5)]}

    async def submit_task(
        self, body: dict[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        return self._record("submit_task", (body, idempotency_key))

    async def submit_tasks(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._record("submit_tasks", body)

    async def list_runs(
        self, query: Mapping[str, str], job_id: str | None, stale: bool
    ) -> dict[str, Any]:
        self.calls.append(("list_runs", (dict(query), job_id)))
        return {"items": [], "next_cursor": None}

    async def get_run(self, run_id: str, stale: bool) -> dict[str, Any]:
        found = self._record("get_run", run_id)
        if run_id in self.outputs:  # a run with output: running until it has ended
            found.update(id=run_id, state="succeeded" if self.outputs[run_id][1] else "running")
        return found

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        return self._record("cancel_run", run_id)

    async def read_output(self, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        """From ``outputs[run_id]``: the bytes written so far and whether the run ended
        (a test appends to it while a stream is open); none and ended for another run,
        ``NotFound`` for one in ``missing_runs``."""
        self.calls.append(("read_output", (run_id, offset)))
        if run_id in self.missing_runs:
            raise NotFound(f"no run {run_id!r}")
        data, ended = self.outputs.get(run_id, (b"", True))
        piece = data[offset : offset + max_bytes]
        return OutputChunk(piece, offset, 0, ended and offset + len(piece) >= len(data), "n1")


# ---------------------------------------------------------------- the event feed


@dataclass(frozen=True, slots=True)
class FakeRunEvent:
    """A ``RunEvent`` with its JSON given (``body`` None: the run was deleted)."""

    index: int
    run_id: str
    body: Mapping[str, object] | None
    last_in_batch: bool = True

    def json(self) -> str | None:
        return None if self.body is None else json.dumps(self.body)


def fake_snapshot(port: FakeNodePort, node: str = "n1") -> ClusterSnapshot:
    """A snapshot of ``port``'s cluster with an idle node and no activity."""
    stats = FeedStats(1.0, 0, 0, 0, 0.0, 0.0, False, at_s=1_800_000_000.0)
    load = NodeLoad(node, slots=4, running=0, free_slots=4, queue_depth=0)
    return ClusterSnapshot(port.cluster_view(), load, (), stats, port.commit_index)


class FakeEventFeed:
    """An ``EventsPort`` whose events the test publishes. Same contract as the node's
    feed: the ``history`` first (when not empty), the latest snapshot, then the kept events after ``last_event_id`` (a
    ``Reset`` when it is below ``evicted_through``), then what is published; a
    subscriber ``buffer_max`` behind is dropped (its channel closed)."""

    def __init__(self, *, buffer_max: int = 64, subscribers_max: int = 16) -> None:
        self.buffer_max = buffer_max
        self.subscribers_max = subscribers_max
        self.latest: ClusterSnapshot | None = None
        self.history: list[FeedStats] = []  # sent as one ``History`` at subscribe
        self.kept: list[FakeRunEvent] = []  # the twin's "ring": every published run event
        self.evicted_through = 0
        self.subscribed: list[int | None] = []  # last_event_id of each subscribe call
        self._channels: list[trio.MemorySendChannel[FeedEvent]] = []

    def subscribe(self, last_event_id: int | None) -> trio.MemoryReceiveChannel[FeedEvent]:
        self._channels = [c for c in self._channels if c.statistics().open_receive_channels]
        if len(self._channels) >= self.subscribers_max:
            raise Unavailable("the fake feed is full")
        self.subscribed.append(last_event_id)
        send, receive = trio.open_memory_channel[FeedEvent](self.buffer_max)
        first: list[FeedEvent] = [History(tuple(self.history))] if self.history else []
        first += [self.latest] if self.latest is not None else []
        if last_event_id is not None and last_event_id < self.evicted_through:
            first.append(Reset(f"event {last_event_id} is older than the ring"))
        elif last_event_id is not None:
            first += [e for e in self.kept if e.index > last_event_id]
        for event in first:
            send.send_nowait(event)
        self._channels.append(send)
        return receive

    def publish(self, event: FakeRunEvent | ClusterSnapshot | Reset) -> None:
        """Send ``event`` to every subscriber now (never blocks)."""
        if isinstance(event, ClusterSnapshot):
            self.latest = event
        elif isinstance(event, FakeRunEvent):
            self.kept.append(event)
        kept = []
        for channel in self._channels:
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                channel.close()
                continue
            kept.append(channel)
        self._channels = kept

    def open_subscribers(self) -> int:
        return sum(1 for c in self._channels if c.statistics().open_receive_channels)


if TYPE_CHECKING:

    def _is_an_events_port(feed: FakeEventFeed) -> EventsPort:
        return feed
