"""Values shared by the SWIM core (``consensus/swim.py``) and its driver.

The wire values and their exact shape, the core's configuration, and what it reports
(members, events, statistics).

Rules:
- Every value is a frozen, slotted dataclass, validated when built: a bad local
  value raises ``ValueError`` at once; a bad remote one surfaces as
  ``MalformedMessage`` from ``decode_message`` and never reaches the core.
- Two closed unions: ``Update`` (membership news, piggybacked) and ``Message`` (one
  per datagram: Ping, Ack, PingReq, Sync, each carrying updates).
- The wire shape is positional arrays (``encode_message`` / ``decode_message``);
  the driver packs them with msgpack and appends its trailer. ``packed_bytes`` is
  the exact msgpack size of such an array, so the core bounds datagrams before
  they exist and no driver ever has to split or truncate one.
- Everything is bounded: ids, hosts, metadata fields, tags, numbers, and updates
  per message. ``worst_case_bytes`` is the largest message with one update; a
  datagram budget must hold it (``SwimConfig`` asserts so).

Shapes (kind first):
    Ping    [0, seq, src, target, updates]
    Ack     [1, seq, src, updates]
    PingReq [2, seq, src, target, host, port, updates]
    Sync    [3, src, reply, updates]
    Alive   [0, node, incarnation, host, port, meta]
    Suspect [1, node, incarnation, by]
    Dead    [2, node, incarnation, by]
    Left    [3, node, incarnation]
    meta    [raft_id, api_address, role, free_slots, queue_depth, [tag...], version,
             raft_address, applied_index, slots]   (a 9-field meta, from an older
             node, is read with slots = 0)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, assert_never

from consensus.types import NodeId

Addr = tuple[str, int]

MAX_ID_BYTES = 64  # member ids and raft ids
MAX_HOST_BYTES = 253  # a DNS name at most
MAX_API_ADDRESS_BYTES = 128
MAX_RAFT_ADDRESS_BYTES = 64  # host:port; a numeric address or a short name
MAX_LABEL_BYTES = 32  # role, version, each tag
MAX_TAGS = 8
MAX_COUNT = (1 << 32) - 1  # free_slots, queue_depth
MAX_INCARNATION = (1 << 63) - 1
MAX_SEQ = (1 << 32) - 1
MAX_UPDATES_PER_MESSAGE = 255


class MalformedMessage(ValueError):
    """A datagram body that is not a valid message: a remote error, to drop and count."""


def _check_text(value: object, what: str, max_bytes: int, min_bytes: int = 0) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string, got {type(value).__name__}")
    n = len(value.encode())
    if not min_bytes <= n <= max_bytes:
        raise ValueError(f"{what}: {n} bytes, allowed {min_bytes}..{max_bytes}")


def _check_int(value: object, what: str, hi: int, lo: int = 0) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what}: expected an integer in {lo}..{hi}, got {value!r}")


def validate_id(value: object, what: str = "id") -> None:
    _check_text(value, what, MAX_ID_BYTES, min_bytes=1)


def validate_addr(value: object, what: str = "address", port_zero_ok: bool = False) -> None:
    """A (host, port) pair; port 0 only for a member still waiting for its bound port."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{what}: expected (host, port), got {value!r}")
    _check_text(value[0], f"{what} host", MAX_HOST_BYTES, min_bytes=1)
    _check_int(value[1], f"{what} port", 65535, lo=0 if port_zero_ok else 1)


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """What a member tells the others about itself. Small: it rides in datagrams."""

    raft_id: str = ""
    api_address: str = ""
    role: str = ""
    free_slots: int = 0
    queue_depth: int = 0
    tags: tuple[str, ...] = ()
    version: str = ""
    raft_address: str = ""  # host:port of the Raft transport
    applied_index: int = 0
    slots: int = 0  # runs the node executes at once (its configured worker slots)

    def __post_init__(self) -> None:
        _check_text(self.raft_id, "raft_id", MAX_ID_BYTES)
        _check_text(self.raft_address, "raft_address", MAX_RAFT_ADDRESS_BYTES)
        _check_int(self.applied_index, "applied_index", MAX_INCARNATION)
        _check_text(self.api_address, "api_address", MAX_API_ADDRESS_BYTES)
        _check_text(self.role, "role", MAX_LABEL_BYTES)
        _check_int(self.free_slots, "free_slots", MAX_COUNT)
        _check_int(self.queue_depth, "queue_depth", MAX_COUNT)
        _check_int(self.slots, "slots", MAX_COUNT)
        if not isinstance(self.tags, tuple) or len(self.tags) > MAX_TAGS:
            raise ValueError(f"tags: expected a tuple of at most {MAX_TAGS}")
        for tag in self.tags:
            _check_text(tag, "tag", MAX_LABEL_BYTES, min_bytes=1)
        _check_text(self.version, "version", MAX_LABEL_BYTES)


# ------------------------------------------------------------------------ updates


@dataclass(frozen=True, slots=True)
class Alive:
    node: NodeId
    incarnation: int
    addr: Addr
    meta: NodeMeta

    def __post_init__(self) -> None:
        validate_id(self.node, "node")
        _check_int(self.incarnation, "incarnation", MAX_INCARNATION)
        validate_addr(self.addr)
        if not isinstance(self.meta, NodeMeta):
            raise ValueError("meta: expected NodeMeta")


@dataclass(frozen=True, slots=True)
class Suspect:
    node: NodeId
    incarnation: int
    by: NodeId  # the member that suspects it

    def __post_init__(self) -> None:
        validate_id(self.node, "node")
        _check_int(self.incarnation, "incarnation", MAX_INCARNATION)
        validate_id(self.by, "by")


@dataclass(frozen=True, slots=True)
class Dead:
    node: NodeId
    incarnation: int
    by: NodeId  # the member that declares it

    def __post_init__(self) -> None:
        validate_id(self.node, "node")
        _check_int(self.incarnation, "incarnation", MAX_INCARNATION)
        validate_id(self.by, "by")


@dataclass(frozen=True, slots=True)
class Left:
    node: NodeId
    incarnation: int

    def __post_init__(self) -> None:
        validate_id(self.node, "node")
        _check_int(self.incarnation, "incarnation", MAX_INCARNATION)


Update = Alive | Suspect | Dead | Left


def _check_updates(updates: object) -> None:
    if not isinstance(updates, tuple) or len(updates) > MAX_UPDATES_PER_MESSAGE:
        raise ValueError(f"updates: expected a tuple of at most {MAX_UPDATES_PER_MESSAGE}")
    for u in updates:
        if not isinstance(u, Alive | Suspect | Dead | Left):
            raise ValueError(f"updates: {type(u).__name__} is not an update")


# ----------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? ``target`` is the id expected at that address."""

    seq: int
    src: NodeId
    target: NodeId
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        _check_int(self.seq, "seq", MAX_SEQ)
        validate_id(self.src, "src")
        validate_id(self.target, "target")
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True)
class Ack:
    """Answers the Ping of the same ``seq`` (directly, or relayed for a PingReq)."""

    seq: int
    src: NodeId
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        _check_int(self.seq, "seq", MAX_SEQ)
        validate_id(self.src, "src")
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please ping ``target`` at ``target_addr`` for me and relay its Ack as ``seq``."""

    seq: int
    src: NodeId
    target: NodeId
    target_addr: Addr
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        _check_int(self.seq, "seq", MAX_SEQ)
        validate_id(self.src, "src")
        validate_id(self.target, "target")
        validate_addr(self.target_addr, "target_addr")
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True)
class Sync:
    """Part of a full-state push; ``reply`` asks for the receiver's state back."""

    src: NodeId
    reply: bool
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        validate_id(self.src, "src")
        if type(self.reply) is not bool:
            raise ValueError("reply: expected a bool")
        _check_updates(self.updates)


Message = Ping | Ack | PingReq | Sync


# ----------------------------------------------------------------------- encoding


def _encode_update(u: Update) -> list[object]:
    match u:
        case Alive(node, inc, (host, port), m):
            meta = [
                m.raft_id,
                m.api_address,
                m.role,
                m.free_slots,
                m.queue_depth,
                list(m.tags),
                m.version,
                m.raft_address,
                m.applied_index,
                m.slots,
            ]
            return [0, node, inc, host, port, meta]
        case Suspect(node, inc, by):
            return [1, node, inc, by]
        case Dead(node, inc, by):
            return [2, node, inc, by]
        case Left(node, inc):
            return [3, node, inc]
        case _:
            assert_never(u)


def encode_message(msg: Message) -> list[object]:
    """The positional array for ``msg`` (ints, strs, bools and arrays only)."""
    ups = [_encode_update(u) for u in msg.updates]
    match msg:
        case Ping(seq, src, target):
            return [0, seq, src, target, ups]
        case Ack(seq, src):
            return [1, seq, src, ups]
        case PingReq(seq, src, target, (host, port)):
            return [2, seq, src, target, host, port, ups]
        case Sync(src, reply):
            return [3, src, reply, ups]
        case _:
            assert_never(msg)


def decode_message(obj: object) -> Message:
    """The message an unpacked array stands for; ``MalformedMessage`` if it is none."""
    try:
        return _decode_message(obj)
    except ValueError as e:  # every check above raises ValueError, and only that
        raise MalformedMessage(str(e)) from e


def _kind_and_fields(obj: object, what: str) -> tuple[int, list[Any]]:
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise ValueError(f"{what}: expected an array [kind, ...]")
    return obj[0], obj[1:]


def _decode_message(obj: object) -> Message:
    kind, f = _kind_and_fields(obj, "message")
    match kind, len(f):
        case 0, 4:
            return Ping(f[0], f[1], f[2], _decode_updates(f[3]))
        case 1, 3:
            return Ack(f[0], f[1], _decode_updates(f[2]))
        case 2, 6:
            return PingReq(f[0], f[1], f[2], (f[3], f[4]), _decode_updates(f[5]))
        case 3, 3:
            return Sync(f[0], f[1], _decode_updates(f[2]))
    raise ValueError(f"message: no kind {kind} with {len(f)} fields")


def _decode_updates(obj: object) -> tuple[Update, ...]:
    if not isinstance(obj, list) or len(obj) > MAX_UPDATES_PER_MESSAGE:
        raise ValueError(f"updates: expected an array of at most {MAX_UPDATES_PER_MESSAGE}")
    return tuple(_decode_update(u) for u in obj)


def _decode_update(obj: object) -> Update:
    kind, f = _kind_and_fields(obj, "update")
    match kind, len(f):
        case 0, 5:
            return Alive(f[0], f[1], (f[2], f[3]), _decode_meta(f[4]))
        case 1, 3:
            return Suspect(f[0], f[1], f[2])
        case 2, 3:
            return Dead(f[0], f[1], f[2])
        case 3, 2:
            return Left(f[0], f[1])
    raise ValueError(f"update: no kind {kind} with {len(f)} fields")


def _decode_meta(obj: object) -> NodeMeta:
    if not isinstance(obj, list) or len(obj) not in (9, 10) or not isinstance(obj[5], list):
        raise ValueError("meta: expected an array of 9 or 10 with an array of tags")
    if len(obj[5]) > MAX_TAGS:
        raise ValueError(f"tags: more than {MAX_TAGS}")
    slots = obj[9] if len(obj) == 10 else 0
    return NodeMeta(
        obj[0], obj[1], obj[2], obj[3], obj[4], tuple(obj[5]), obj[6], obj[7], obj[8], slots
    )


# -------------------------------------------------------------------------- sizes


def array_header_bytes(n: int) -> int:
    """Bytes of a msgpack array header for ``n`` elements."""
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def packed_bytes(obj: object) -> int:
    """The exact length of ``msgpack.packb(obj)`` for the values encoding produces."""
    if isinstance(obj, bool):
        return 1
    if isinstance(obj, int):
        assert 0 <= obj < 1 << 64, "only unsigned integers go on the wire"
        return (
            1
            if obj < 128
            else 2
            if obj < 1 << 8
            else 3
            if obj < 1 << 16
            else 5
            if obj < 1 << 32
            else 9
        )
    if isinstance(obj, str):
        n = len(obj.encode())
        return n + (1 if n < 32 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)
    if isinstance(obj, list):
        return array_header_bytes(len(obj)) + sum(packed_bytes(x) for x in obj)
    raise AssertionError(f"not a wire value: {type(obj).__name__}")


def message_bytes(msg: Message) -> int:
    return packed_bytes(encode_message(msg))


def update_bytes(u: Update) -> int:
    return packed_bytes(_encode_update(u))


def _worst_case_bytes() -> int:
    """The largest message carrying one update: every field at its bound."""
    big_id = "i" * MAX_ID_BYTES
    label = "l" * MAX_LABEL_BYTES
    addr = ("h" * MAX_HOST_BYTES, 65535)
    meta = NodeMeta(
        big_id,
        "a" * MAX_API_ADDRESS_BYTES,
        label,
        MAX_COUNT,
        MAX_COUNT,
        (label,) * MAX_TAGS,
        label,
        "r" * MAX_RAFT_ADDRESS_BYTES,
        MAX_INCARNATION,
        MAX_COUNT,
    )
    alive = Alive(big_id, MAX_INCARNATION, addr, meta)
    return message_bytes(PingReq(MAX_SEQ, big_id, big_id, addr, (alive,)))


WORST_CASE_BYTES = _worst_case_bytes()


# ------------------------------------------------------------ core configuration


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """Protocol parameters. Defaults assume the 50 ms tick of DESIGN.md."""

    probe_ticks: int = 20  # one protocol period (1 s)
    ack_timeout_ticks: int = 10  # direct Ack deadline before PingReq, within a period
    indirect_probes: int = 3  # k members asked to ping on our behalf
    suspicion_ticks: int = 80  # minimum suspicion timeout, times max(1, log10(n))
    suspicion_max_mult: int = 3  # Lifeguard: an unconfirmed suspicion lasts this x min
    suspicion_confirmations: int = 3  # Lifeguard: confirmations that bring it down to min
    retransmit_mult: int = 4  # lambda: each update is piggybacked lambda*log10(n+1) times
    max_piggyback: int = 8  # updates per datagram
    max_datagram_bytes: int = 1400  # whole UDP payload, trailer included
    trailer_bytes: int = 32  # appended by the driver (HMAC-SHA256)
    max_members: int = 4096  # this member included; tombstones count
    max_broadcasts: int = 1024  # queued updates (one per member at most)
    tombstone_ticks: int = 6000  # dead or left members are forgotten after this (5 min)
    sync_ticks: int = 600  # full-state exchange with one member (30 s)
    max_relays: int = 64  # indirect pings pending on behalf of others
    max_sync_replies_per_period: int = 4
    max_leave_fanout: int = 8  # members told directly of a leave
    max_events: int = 1024  # undrained events kept (oldest dropped first)
    max_outbox_datagrams: int = 8192  # undrained datagrams kept (newest dropped)

    def __post_init__(self) -> None:
        assert 0 < self.ack_timeout_ticks < self.probe_ticks
        assert self.indirect_probes >= 0 and self.retransmit_mult > 0
        assert self.suspicion_ticks > 0 and self.suspicion_max_mult >= 1
        assert self.suspicion_confirmations >= 0
        assert 0 < self.max_piggyback <= MAX_UPDATES_PER_MESSAGE
        assert self.trailer_bytes >= 0
        assert self.max_datagram_bytes - self.trailer_bytes >= WORST_CASE_BYTES, (
            "a datagram must fit the largest header plus the largest update"
        )
        assert self.max_members >= 2 and self.max_broadcasts > 0 and self.max_relays > 0
        assert self.tombstone_ticks > 0 and self.sync_ticks > 0
        assert self.max_sync_replies_per_period >= 0 and self.max_leave_fanout >= 0
        assert self.max_events > 0 and self.max_outbox_datagrams > 0

    @property
    def body_bytes_max(self) -> int:
        """Bytes left for the encoded message once the driver's trailer is appended."""
        return self.max_datagram_bytes - self.trailer_bytes


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Member:
    id: NodeId
    addr: Addr
    state: MemberState
    incarnation: int
    meta: NodeMeta


class EventKind(enum.Enum):
    JOINED = "joined"  # first seen, or back from dead/left with a higher incarnation
    SUSPECT = "suspect"
    ALIVE = "alive"  # a suspicion was refuted
    DEAD = "dead"
    LEFT = "left"
    META_UPDATED = "meta_updated"  # metadata or address changed while alive


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member  # the record right after the change


@dataclass(slots=True)
class SwimCounters:
    """Monotonic counts of what the core did or refused (a snapshot is a copy)."""

    probes_sent: int = 0
    probes_failed: int = 0  # periods that ended without an Ack
    ping_reqs_sent: int = 0
    relays_refused: int = 0  # PingReq over max_relays
    refutations: int = 0
    deaths_declared: int = 0  # suspicions this member timed out
    syncs_sent: int = 0
    sync_replies_refused: int = 0  # over max_sync_replies_per_period
    members_refused: int = 0  # over max_members with no tombstone to evict
    misdirected: int = 0  # Pings for another id at our address
    broadcasts_dropped: int = 0  # over max_broadcasts
    events_dropped: int = 0  # over max_events
    outbox_dropped: int = 0  # over max_outbox_datagrams


@dataclass(frozen=True, slots=True)
class SwimStatistics:
    ticks: int
    incarnation: int
    members_alive: int  # this member included
    members_suspect: int
    members_dead: int
    members_left: int
    broadcasts_queued: int
    relays_pending: int
    counters: SwimCounters
