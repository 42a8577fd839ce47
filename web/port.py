"""The narrow port the web layer talks to: what a node must offer its HTTP face.

The web layer never imports ``node/``. The daemon implements ``NodePort`` (and the
metrics sink ``HttpMetrics``); tests use the in-memory twin in ``web/testing.py``.

Rules of the contract:
- Views are frozen, slotted dataclasses, built and validated by the port; the app
  only serialises them. Invariants are asserted when a view is built.
- ``cluster_view`` and ``is_ready`` are synchronous, local and cheap (no I/O, no
  Raft round trip): they read the node's latest soft state. They never raise.
- The ``async`` methods are writes. They may take as long as a Raft round trip; the
  port bounds them with its own timeout and raises ``Unavailable`` when it expires.
  A write sent to a follower is forwarded to the leader by the port.
- Operating failures are reported only as the ``PortError`` subclasses below; the
  app translates each one, once, into ``application/problem+json``. Any other
  exception is a bug and becomes a 500.

Exceptions::

    PortError                 base; ``detail`` is safe to show to an API client
    ├── NotLeaderError        only the leader can do this and forwarding failed
    ├── Unavailable           no leader / no quorum / timed out (outcome may be unknown)
    ├── Conflict              the request contradicts the current state
    ├── NotFound              the named node (or other object) does not exist
    └── Invalid               a value is unacceptable; ``field`` names it

Also here, because both the app and ``node/config.py`` validate the same things
and ``node`` may import ``web`` but not the other way round: the node-id pattern
and the ``host:port`` parser.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

MemberRole = Literal["leader", "follower", "candidate", "learner"]
MemberState = Literal["alive", "suspect", "dead"]
MEMBER_ROLES: frozenset[str] = frozenset({"leader", "follower", "candidate", "learner"})
MEMBER_STATES: frozenset[str] = frozenset({"alive", "suspect", "dead"})

# Node ids appear in URLs, metrics-free logs and Raft configurations: keep them short
# and boring. 1..63 characters, lower-case letters, digits, '.', '_' and '-'.
NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NODE_ID_DESCRIPTION = "1-63 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit"
HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def is_node_id(value: object) -> bool:
    """True when ``value`` is a string that is a valid node id."""
    return isinstance(value, str) and NODE_ID_RE.fullmatch(value) is not None


def is_host(value: str) -> bool:
    """True for an IPv4/IPv6 literal (without brackets) or a DNS host name."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return HOSTNAME_RE.fullmatch(value) is not None
    return True


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and validate both halves.

    Raises ``ValueError`` with a message fit for a field error ("must be host:port ...").
    The port must be in [1, 65535]: an address someone else dials is never port 0.
    """
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if m is None:
        raise ValueError(f"must be host:port (use [addr]:port for IPv6), got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if m.group(1) is not None and ":" not in host:
        raise ValueError(f"brackets are only for IPv6 addresses, got {text!r}")
    if not is_host(host):
        raise ValueError(f"host must be an IP address or a DNS name, got {host!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in [1, 65535], got {port}")
    return host, port


def format_host_port(host: str, port: int) -> str:
    """The inverse of ``parse_host_port`` (brackets IPv6 literals)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class MemberView:
    """One cluster member as this node sees it (Raft role, gossip state, load)."""

    id: str
    role: MemberRole
    api_address: str | None  # None until gossip has told us
    state: MemberState
    match_index: int
    applied_index: int
    queue_depth: int
    free_slots: int

    def __post_init__(self) -> None:
        assert is_node_id(self.id), self.id
        assert self.role in MEMBER_ROLES, self.role
        assert self.state in MEMBER_STATES, self.state
        for name in ("match_index", "applied_index", "queue_depth", "free_slots"):
            assert getattr(self, name) >= 0, (name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster as this node sees it: at most one leader, members sorted by id."""

    leader: str | None
    term: int
    commit_index: int
    members: tuple[MemberView, ...]

    def __post_init__(self) -> None:
        assert self.term >= 0 and self.commit_index >= 0, (self.term, self.commit_index)
        ids = [m.id for m in self.members]
        assert ids == sorted(ids), "members must be sorted by id"
        assert not [i for i, n in Counter(ids).items() if n > 1], "duplicate member ids"
        leaders = [m.id for m in self.members if m.role == "leader"]
        assert len(leaders) <= 1, leaders
        assert not leaders or leaders[0] == self.leader, (leaders, self.leader)


class PortError(Exception):
    """Base of the errors a port may raise. ``detail`` is shown to API clients."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotLeaderError(PortError):
    """Only the leader can do this, and the request could not be forwarded to it."""

    def __init__(self, detail: str, leader: str | None = None) -> None:
        super().__init__(detail)
        self.leader = leader


class Unavailable(PortError):
    """No leader, no quorum, or the operation timed out; it may or may not have happened."""


class Conflict(PortError):
    """The request contradicts the current state (e.g. the member already exists)."""


class NotFound(PortError):
    """The named object (a member) does not exist."""


class Invalid(PortError):
    """A value is unacceptable to the node; ``field`` names it in the request."""

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail)
        self.field = field


class NodePort(Protocol):
    """What the web layer may ask of its node. See the module docstring for the rules."""

    def cluster_view(self) -> ClusterView:
        """Leader, term, commit index and members as this node currently sees them."""
        ...

    def is_ready(self) -> bool:
        """True when a leader is known and this node has applied what was committed."""
        ...

    async def transfer_leadership(self, target: str | None) -> str:
        """Hand leadership to ``target`` (a voter) or, if None, to the most caught-up voter.

        Returns the id of the leader once the transfer has happened. Raises ``NotFound``
        for an unknown target, ``Invalid(field="target")`` for a learner, and
        ``Unavailable`` when it did not complete in time."""
        ...

    async def add_member(self, node_id: str, address: str | None) -> ClusterView:
        """Add ``node_id`` as a learner (promoted by the leader once caught up).

        ``address`` is its Raft ``host:port``; None means "learn it from gossip".
        Raises ``Conflict`` when it is already a member."""
        ...

    async def remove_member(self, node_id: str) -> ClusterView:
        """Remove ``node_id`` from the Raft configuration (one server at a time).

        Raises ``NotFound`` when it is not a member and ``Conflict`` when removing it
        would leave no voter."""
        ...

    async def take_snapshot(self) -> int:
        """Snapshot the state machine and compact the log; returns the snapshot's index."""
        ...


class SchedulerPort(Protocol):
    """Jobs, tasks and runs (SPEC "HTTP API"). Bodies and answers are JSON objects in
    the SPEC's field names. Errors: ``Invalid(field)`` for bad input (nothing changed),
    ``NotFound``, ``Conflict`` (version or state conflicts), ``Unavailable`` when no
    leader answered or a write's outcome is unknown. ``stale`` serves the local copy
    instead of a linearizable read."""

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def list_jobs(self, query: Mapping[str, str], stale: bool) -> dict[str, Any]: ...

    async def get_job(self, job_id: str, stale: bool) -> dict[str, Any]: ...

    async def update_job(
        self, job_id: str, body: dict[str, Any], if_match: str | None, patch: bool
    ) -> dict[str, Any]:
        """PUT (``patch=False``) or PATCH; ``Conflict`` when the version moved on."""
        ...

    async def delete_job(self, job_id: str) -> None: ...

    async def job_action(self, job_id: str, action: str) -> dict[str, Any]:
        """``action`` is ``trigger``, ``pause`` or ``resume``."""
        ...

    async def next_fires(self, job_id: str, count: int, stale: bool) -> dict[str, Any]: ...

    def preview_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"schedule": {...}, "count": N}`` -> ``{"next": [instants]}``: the slots a job
        created now with that schedule would fire at. Pure and local (no read, nothing
        proposed), so synchronous. ``Invalid(field)`` names the failing field
        (``schedule.cron``, ``count``, ...)."""
        ...

    async def submit_task(
        self, body: dict[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]: ...

    async def submit_tasks(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"tasks": [...]}``: all committed together, or none."""
        ...

    async def list_runs(
        self, query: Mapping[str, str], job_id: str | None, stale: bool
    ) -> dict[str, Any]: ...

    async def get_run(self, run_id: str, stale: bool) -> dict[str, Any]: ...

    async def cancel_run(self, run_id: str) -> dict[str, Any]: ...

    async def read_output(self, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        """Up to ``max_bytes`` of the run's output from byte ``offset``, read from the
        node that holds it (output is node-local). ``NotFound`` for an unknown run,
        ``Unavailable`` when the holding node does not answer."""
        ...


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Bytes ``[offset, offset + len(data))`` of a run's output. ``offset`` may be past
    the one asked for when the head was dropped (``first_offset`` is the first byte
    still kept). ``done``: the run has ended and nothing more will be written."""

    data: bytes
    offset: int
    first_offset: int
    done: bool
    node: str | None  # the node that holds it (None while the run is not placed)

    def __post_init__(self) -> None:
        assert 0 <= self.first_offset <= self.offset, (self.first_offset, self.offset)

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.data)


class HttpMetrics(Protocol):
    """The metrics sink the app records into and renders from (``node.metrics.Metrics``)."""

    def observe_http(self, route: str, method: str, code: int, duration_s: float) -> None:
        """Count one request. ``route`` is a route template, never a concrete path."""
        ...

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        ...


# ---------------------------------------------------------------- the live event feed


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """This node's own load: what its worker is doing now."""

    node: str
    slots: int  # runs it executes at once
    running: int
    free_slots: int
    queue_depth: int  # runs queued on it


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Queued runs on one node (None: not placed yet) at one priority."""

    node: str | None
    priority: int
    depth: int


@dataclass(frozen=True, slots=True)
class FeedStats:
    """Cluster-wide run activity seen in the last ``window_s`` (from committed records)."""

    window_s: float
    runs_finished: int  # records that reached a terminal state
    runs_failed: int  # of those, failed or timed out
    fires: int  # scheduled runs created by a Fire
    fire_lateness_s_max: float  # committed Fire time minus slot, over those fires
    fire_lateness_s_mean: float
    partial: bool  # the ring overflowed within the window: counts are a lower bound
    runs_stolen: int = 0  # runs moved between nodes by committed steals
    at_s: float = 0.0  # wall-clock (Unix) seconds when the window ended


@dataclass(frozen=True, slots=True)
class StealEvent:
    """One committed steal: ``runs`` queued runs moved ``from_node`` -> ``to_node``."""

    at: str  # RFC 3339 UTC: the steal command's time
    from_node: str
    to_node: str
    runs: int

    def __post_init__(self) -> None:
        assert self.runs >= 1 and self.from_node != self.to_node, self


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What ``GET /api/v1/events`` sends about once a second (``event: cluster``)."""

    cluster: ClusterView
    load: NodeLoad
    queues: tuple[QueueDepth, ...]  # bounded by the feed (nodes x priorities)
    stats: FeedStats
    applied_index: int
    steals: tuple[StealEvent, ...] = ()  # the most recent, oldest first (bounded by the feed)


@dataclass(frozen=True, slots=True)
class History:
    """The stats of the last snapshots, oldest first (bounded by the feed), sent once
    at subscribe so that charts start filled (``event: history``)."""

    points: tuple[FeedStats, ...]


@dataclass(frozen=True, slots=True)
class Reset:
    """The subscriber missed events (resume point older than the ring, or it was too
    slow to keep up): it must reload what it shows. ``event: reset``."""

    reason: str


class RunEvent(Protocol):
    """One run record changed by the batch that ended at Raft index ``index``.

    ``last_in_batch`` marks the batch's final event: only that one carries the SSE
    ``id``, so a client cut off mid-batch resumes at the previous batch and sees this
    one again in full (at-least-once; run records are idempotent state)."""

    @property
    def index(self) -> int: ...

    @property
    def last_in_batch(self) -> bool: ...

    @property
    def run_id(self) -> str: ...

    def json(self) -> str | None:
        """The run as ``GET /runs/{id}`` shows it, as JSON text; None if it was deleted.
        Rendered on first use (not on the apply path) and cached."""
        ...


FeedEvent = RunEvent | ClusterSnapshot | Reset | History


class FeedReceiver(Protocol):
    """A subscription's receiving end: ``trio.MemoryReceiveChannel[FeedEvent]`` is one
    (named structurally so this module need not import trio)."""

    def receive_nowait(self) -> FeedEvent:
        """The next event; ``trio.WouldBlock`` if none, ``trio.EndOfChannel`` once dropped."""
        ...

    async def receive(self) -> FeedEvent: ...

    def close(self) -> None:
        """Unsubscribe."""
        ...


class EventsPort(Protocol):
    """The node's live feed for ``GET /api/v1/events``.

    Contract: ``subscribe`` never blocks and never awaits. The channel first holds
    the ``History`` of recent stats (when there is any), then the latest snapshot,
    then the ring's events after ``last_event_id`` (or a ``Reset`` when that id is
    older than the ring), then live events as batches apply. A subscriber that falls ``buffer_max`` events behind is dropped: its
    channel ends (``trio.EndOfChannel``) and the stream tells the client to reset.
    Closing the receive channel unsubscribes. Raises ``Unavailable`` when the feed
    already has its maximum number of subscribers."""

    def subscribe(self, last_event_id: int | None) -> FeedReceiver: ...
