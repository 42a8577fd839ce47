"""Values shared by the Raft core, its storage and its drivers.

Rules:
- Every value here is a frozen, slotted dataclass; nothing is mutated in place.
- Messages form one closed union (``Message``); the core dispatches on it with
  ``match``. Every message carries ``term``, ``src`` and ``dst``.
- Node ids are short strings (``"n1"``); indexes and terms are non-negative ints;
  index 0 / term 0 mean "nothing" (the log starts at index 1).
- Entry payloads are opaque ``bytes`` to the core, except configuration changes,
  whose payload is a ``ConfChange`` encoded by ``encode_conf_change``.
"""

from __future__ import annotations

import enum
import json
import zlib
from dataclasses import dataclass, field

NodeId = str


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate bytes on the wire, used for flow control and batching."""
        return len(self.data) + 24

    def checksum(self) -> int:
        """CRC-32 over every field; storage keeps it beside the entry."""
        head = f"{self.index}:{self.term}:{int(self.type)}:".encode()
        return zlib.crc32(self.data, zlib.crc32(head))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a restart: current term, vote in that term, commit index."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


class ConfChangeOp(enum.IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1
    REMOVE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfChangeOp
    node: NodeId


def encode_conf_change(cc: ConfChange, result: ConfState | None = None) -> bytes:
    """A configuration-change entry's payload. The leader always includes the full
    configuration the change produces, so a node that starts blank (or from any
    configuration) learns the exact membership from the entry itself."""
    if result is None:
        return f"{int(cc.op)}:{cc.node}".encode()
    return json.dumps(
        {
            "op": int(cc.op),
            "node": cc.node,
            "voters": sorted(result.voters),
            "learners": sorted(result.learners),
        },
        separators=(",", ":"),
    ).encode()


def decode_conf_entry(data: bytes) -> tuple[ConfChange, ConfState | None]:
    """The change and, when the entry carries it, the configuration it produces."""
    if data.startswith(b"{"):
        obj = json.loads(data)
        cc = ConfChange(ConfChangeOp(int(obj["op"])), str(obj["node"]))
        conf = ConfState(frozenset(obj["voters"]), frozenset(obj["learners"]))
        return cc, conf
    op, _, node = data.decode().partition(":")
    return ConfChange(ConfChangeOp(int(op)), node), None


def decode_conf_change(data: bytes) -> ConfChange:
    return decode_conf_entry(data)[0]


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is a voter or a learner, not both"

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def apply(self, cc: ConfChange) -> ConfState:
        """The configuration after one single-server change (no validation)."""
        match cc.op:
            case ConfChangeOp.ADD_LEARNER:
                return ConfState(self.voters - {cc.node}, self.learners | {cc.node})
            case ConfChangeOp.PROMOTE:
                return ConfState(self.voters | {cc.node}, self.learners - {cc.node})
            case ConfChangeOp.REMOVE:
                return ConfState(self.voters - {cc.node}, self.learners - {cc.node})


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image at ``meta.index``; ``data`` is opaque to the core."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, observable state: no need to persist it."""

    role: Role
    leader: NodeId | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex result: once applied >= ``index``, a read tagged ``ctx`` is linearizable."""

    index: int
    ctx: bytes


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class AppendEntries:
    term: int
    src: NodeId
    dst: NodeId
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """``index`` is the follower's new last matching index when accepted; when
    rejected it echoes the probed ``prev_index`` and ``hint_index``/``hint_term``
    name where the leader should probe next (fast back-off)."""

    term: int
    src: NodeId
    dst: NodeId
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``read_seq`` is the newest ReadIndex round the leader wants confirmed."""

    term: int
    src: NodeId
    dst: NodeId
    commit: int
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: NodeId
    dst: NodeId
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """``pre_vote`` asks "would you vote for me at ``term``?" without changing terms.
    ``transfer`` marks a campaign started by TimeoutNow, which may disrupt a leader."""

    term: int
    src: NodeId
    dst: NodeId
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot: bytes ``[offset, offset + len(data))`` of ``meta``'s image."""

    term: int
    src: NodeId
    dst: NodeId
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """``next_offset`` is the first byte the follower still needs; ``done`` once installed."""

    term: int
    src: NodeId
    dst: NodeId
    snapshot_index: int
    next_offset: int
    done: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    term: int
    src: NodeId
    dst: NodeId


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of its client."""

    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """``index`` is 0 when the leader could not serve the read (the follower retries)."""

    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes
    index: int


Message = (
    AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | RequestVote
    | RequestVoteResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    RequestVoteResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the driver must do, in this order:

    1. persist ``snapshot`` (if any), then ``entries`` and ``hard_state`` (if any) in one
       write; fsync when ``must_sync``;
    2. send ``messages``;
    3. apply ``committed_entries`` (after the snapshot, if one was installed), and
       serve ``read_states`` once applied reaches their index;
    4. call ``Raft.advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False

    def is_empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.read_states
        )
