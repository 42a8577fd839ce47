"""The peer wire codec: Raft messages and node frames as length-prefixed msgpack arrays.

Sans-I/O: bytes in, frames out (``FrameDecoder``) and frames in, bytes out
(``encode_frame``). The transport (``node/transport.py``) owns the sockets.

Rules:
- A frame on the wire is a 4-byte big-endian body length, then the body: one
  msgpack array ``[kind, field...]`` in the dataclass's field order. Arrays, never
  maps: they encode and decode ~2.5x faster (DESIGN.md, "Facts").
- Decoding is strict and total: wrong arity, a wrong type (a bool is not an int),
  an unknown kind, a negative or > 2**64-1 number, a bad node id, an oversized
  field or a frame longer than ``max_frame_bytes`` raise ``WireError`` -- and no
  other exception, whatever the bytes. The caller drops the connection.
- Encoding checks the same rules, so a frame that encodes also decodes to an
  equal frame: a local bug surfaces as ``WireError`` at the sender, not as a
  peer dropping the connection.
- The schema below names every field of every message; an import-time assert
  checks it against the dataclasses, so a field added to ``consensus/types.py``
  cannot be silently left off the wire.

Shapes (kind first; ``entry`` is ``[index, term, type, data]``, ``meta`` is
``[index, term, [voter...], [learner...]]`` with sorted ids)::

    AppendEntries            [1, term, src, dst, prev_index, prev_term, [entry...], commit]
    AppendEntriesResponse    [2, term, src, dst, index, reject, hint_index, hint_term]
    Heartbeat                [3, term, src, dst, commit, read_seq]
    HeartbeatResponse        [4, term, src, dst, read_seq]
    RequestVote              [5, term, src, dst, last_index, last_term, pre_vote, transfer]
    RequestVoteResponse      [6, term, src, dst, granted, pre_vote]
    InstallSnapshot          [7, term, src, dst, meta, offset, data, done]
    InstallSnapshotResponse  [8, term, src, dst, snapshot_index, next_offset, done]
    TimeoutNow               [9, term, src, dst]
    ReadIndexRequest         [10, term, src, dst, ctx]
    ReadIndexResponse        [11, term, src, dst, ctx, index]
    Request                  [32, req_id, method, body]
    Response                 [33, req_id, ok, body]

A ``RaftFrame`` is encoded as its message's array (no extra nesting).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from consensus.types import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from web.port import is_node_id

LENGTH_PREFIX_BYTES: Final = 4
MAX_FRAME_BYTES_DEFAULT: Final = 16 << 20
MAX_FRAME_BYTES_LIMIT: Final = (1 << 32) - 1  # what a 4-byte prefix can say
U64_MAX: Final = (1 << 64) - 1
ENTRIES_PER_MESSAGE_MAX: Final = 1 << 20  # the frame size is the real bound; this is sanity
MEMBERS_MAX: Final = 1024  # voters + learners in one ConfState
CTX_BYTES_MAX: Final = 1024  # ReadIndex context (the driver uses 8)
METHOD_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_./:-]{0,63}")  # RPC method names


class WireError(Exception):
    """Bytes that are not a valid frame, or a frame that cannot go on the wire."""


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class RaftFrame:
    """One Raft message between peers."""

    msg: Message


@dataclass(frozen=True, slots=True)
class Request:
    """An RPC call; ``req_id`` is unique among the sender's outstanding requests."""

    req_id: int
    method: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to ``Request(req_id)``: ``body`` is the result, or an error text if not ``ok``."""

    req_id: int
    ok: bool
    body: bytes


Frame = RaftFrame | Request | Response


# ------------------------------------------------------------------- field codecs
# Each field kind is a pair (to_wire, from_wire); both validate and raise WireError.


def _u64(v: object) -> int:
    if type(v) is not int or not 0 <= v <= U64_MAX:
        raise WireError(f"expected an integer in [0, 2**64), got {_describe(v)}")
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise WireError(f"expected a bool, got {_describe(v)}")
    return v


def _bytes(v: object) -> bytes:
    if type(v) is not bytes:
        raise WireError(f"expected bytes, got {_describe(v)}")
    return v


def _ctx(v: object) -> bytes:
    b = _bytes(v)
    if len(b) > CTX_BYTES_MAX:
        raise WireError(f"read context of {len(b)} bytes, more than {CTX_BYTES_MAX}")
    return b


def _node(v: object) -> str:
    if not is_node_id(v):
        raise WireError(f"expected a node id, got {_describe(v)}")
    assert isinstance(v, str)
    return v


def _method(v: object) -> str:
    if type(v) is not str or METHOD_RE.fullmatch(v) is None:
        raise WireError(f"expected a method name, got {_describe(v)}")
    return v


def _array(v: object, what: str, n_max: int) -> list[Any]:
    if type(v) is not list:
        raise WireError(f"{what}: expected an array, got {_describe(v)}")
    if len(v) > n_max:
        raise WireError(f"{what}: {len(v)} elements, more than {n_max}")
    return v


def _entries_out(v: object) -> list[list[object]]:
    if type(v) is not tuple:
        raise WireError(f"entries: expected a tuple, got {_describe(v)}")
    if len(v) > ENTRIES_PER_MESSAGE_MAX:
        raise WireError(f"entries: {len(v)}, more than {ENTRIES_PER_MESSAGE_MAX}")
    out = []
    for e in v:
        if type(e) is not Entry or type(e.type) is not EntryType:
            raise WireError(f"entries: expected Entry values, got {_describe(e)}")
        out.append([_u64(e.index), _u64(e.term), int(e.type), _bytes(e.data)])
    return out


_ENTRY_TYPES: Final = {int(t): t for t in EntryType}


def _entries_in(v: object) -> tuple[Entry, ...]:
    out = []
    for item in _array(v, "entries", ENTRIES_PER_MESSAGE_MAX):
        e = _array(item, "entry", 4)
        if len(e) != 4:
            raise WireError(f"entry: expected 4 fields, got {len(e)}")
        kind = _ENTRY_TYPES.get(_u64(e[2]))
        if kind is None:
            raise WireError(f"entry: unknown type {e[2]}")
        out.append(Entry(_u64(e[0]), _u64(e[1]), kind, _bytes(e[3])))
    return tuple(out)


def _members_out(v: frozenset[str]) -> list[str]:
    return sorted(_node(x) for x in v)


def _meta_out(v: object) -> list[object]:
    if type(v) is not SnapshotMeta or type(v.conf) is not ConfState:
        raise WireError(f"expected SnapshotMeta, got {_describe(v)}")
    voters, learners = _members_out(v.conf.voters), _members_out(v.conf.learners)
    if len(voters) + len(learners) > MEMBERS_MAX:
        raise WireError(f"conf: more than {MEMBERS_MAX} members")
    return [_u64(v.index), _u64(v.term), voters, learners]


def _members_in(v: object, what: str) -> frozenset[str]:
    ids = [_node(x) for x in _array(v, what, MEMBERS_MAX)]
    members = frozenset(ids)
    if len(members) != len(ids):
        raise WireError(f"{what}: duplicate ids")
    return members


def _meta_in(v: object) -> SnapshotMeta:
    m = _array(v, "meta", 4)
    if len(m) != 4:
        raise WireError(f"meta: expected 4 fields, got {len(m)}")
    voters, learners = _members_in(m[2], "voters"), _members_in(m[3], "learners")
    if voters & learners:
        raise WireError("meta: a node is both voter and learner")
    if len(voters) + len(learners) > MEMBERS_MAX:
        raise WireError(f"meta: more than {MEMBERS_MAX} members")
    return SnapshotMeta(_u64(m[0]), _u64(m[1]), ConfState(voters, learners))


@dataclass(frozen=True, slots=True)
class _Codec:
    to_wire: Callable[[Any], object]
    from_wire: Callable[[object], Any]


U64 = _Codec(_u64, _u64)
BOOL = _Codec(_bool, _bool)
BYTES = _Codec(_bytes, _bytes)
CTX = _Codec(_ctx, _ctx)
NODE = _Codec(_node, _node)
METHOD = _Codec(_method, _method)
ENTRIES = _Codec(_entries_out, _entries_in)
META = _Codec(_meta_out, _meta_in)

_HEAD = (("term", U64), ("src", NODE), ("dst", NODE))

# kind -> (class, ((field name, codec), ...)); field order is the dataclass's order.
_SCHEMA: Final[dict[int, tuple[type, tuple[tuple[str, _Codec], ...]]]] = {
    1: (
        AppendEntries,
        (
            *_HEAD,
            ("prev_index", U64),
            ("prev_term", U64),
            ("entries", ENTRIES),
            ("commit", U64),
        ),
    ),
    2: (
        AppendEntriesResponse,
        (*_HEAD, ("index", U64), ("reject", BOOL), ("hint_index", U64), ("hint_term", U64)),
    ),
    3: (Heartbeat, (*_HEAD, ("commit", U64), ("read_seq", U64))),
    4: (HeartbeatResponse, (*_HEAD, ("read_seq", U64))),
    5: (
        RequestVote,
        (
            *_HEAD,
            ("last_index", U64),
            ("last_term", U64),
            ("pre_vote", BOOL),
            ("transfer", BOOL),
        ),
    ),
    6: (RequestVoteResponse, (*_HEAD, ("granted", BOOL), ("pre_vote", BOOL))),
    7: (
        InstallSnapshot,
        (*_HEAD, ("meta", META), ("offset", U64), ("data", BYTES), ("done", BOOL)),
    ),
    8: (
        InstallSnapshotResponse,
        (*_HEAD, ("snapshot_index", U64), ("next_offset", U64), ("done", BOOL)),
    ),
    9: (TimeoutNow, _HEAD),
    10: (ReadIndexRequest, (*_HEAD, ("ctx", CTX))),
    11: (ReadIndexResponse, (*_HEAD, ("ctx", CTX), ("index", U64))),
    32: (Request, (("req_id", U64), ("method", METHOD), ("body", BYTES))),
    33: (Response, (("req_id", U64), ("ok", BOOL), ("body", BYTES))),
}
_KIND_OF: Final[dict[type, int]] = {cls: kind for kind, (cls, _) in _SCHEMA.items()}

for _cls, _fields in _SCHEMA.values():
    assert tuple(f.name for f in dataclasses.fields(_cls)) == tuple(n for n, _ in _fields), _cls
assert set(MESSAGE_TYPES) | {Request, Response} == set(_KIND_OF), "every message has a kind"


# ------------------------------------------------------------------------ encoding


def encode_body(frame: Frame) -> bytes:
    """The msgpack body of ``frame`` (no length prefix); ``WireError`` if it breaks a rule."""
    obj: object = frame.msg if type(frame) is RaftFrame else frame
    kind = _KIND_OF.get(type(obj))
    if kind is None:
        raise WireError(f"not a frame: {_describe(obj)}")
    array: list[object] = [kind]
    for name, codec in _SCHEMA[kind][1]:
        try:
            array.append(codec.to_wire(getattr(obj, name)))
        except WireError as e:
            raise WireError(f"{type(obj).__name__}.{name}: {e}") from None
    body: bytes = msgpack.packb(array, use_bin_type=True)
    return body


def encode_frame(frame: Frame, max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT) -> bytes:
    """Length prefix and body of ``frame``; ``WireError`` if invalid or too large."""
    body = encode_body(frame)
    if len(body) > max_frame_bytes:
        raise WireError(f"frame of {len(body)} bytes, more than {max_frame_bytes}")
    return len(body).to_bytes(LENGTH_PREFIX_BYTES, "big") + body


# ------------------------------------------------------------------------ decoding


def decode_body(body: bytes) -> Frame:
    """The frame in one msgpack body, or ``WireError``; never any other exception."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:
        # msgpack reports bad input through several types (ValueError, TypeError for
        # unhashable map keys, StackError, FormatError, UnicodeDecodeError...): all are
        # the peer's fault here, so all become WireError at this one boundary.
        raise WireError(f"not msgpack: {type(e).__name__}") from None
    if type(obj) is not list or not obj:
        raise WireError(f"expected a non-empty array, got {_describe(obj)}")
    kind = obj[0]
    entry = _SCHEMA.get(kind) if type(kind) is int else None
    if entry is None:
        raise WireError(f"unknown frame kind {_describe(kind)}")
    cls, fields = entry
    if len(obj) != len(fields) + 1:
        raise WireError(f"{cls.__name__}: expected {len(fields)} fields, got {len(obj) - 1}")
    try:
        values = [codec.from_wire(v) for (_, codec), v in zip(fields, obj[1:], strict=True)]
    except WireError as e:
        raise WireError(f"{cls.__name__}: {e}") from None
    built = cls(*values)
    if isinstance(built, Request | Response):
        return built
    return RaftFrame(built)


class FrameDecoder:
    """Splits a byte stream into frames: ``feed`` bytes, then call ``next_frame`` until None.

    At most one partial frame is buffered, and a length prefix above
    ``max_frame_bytes`` is refused as soon as its 4 bytes arrive, so the buffer
    never exceeds ``max_frame_bytes`` plus the last chunk fed. After a
    ``WireError`` the stream is unusable: drop the decoder and the connection.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT) -> None:
        assert 0 < max_frame_bytes <= MAX_FRAME_BYTES_LIMIT, max_frame_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed, or ``WireError``."""
        buf = self._buf
        if len(buf) < LENGTH_PREFIX_BYTES:
            return None
        n = int.from_bytes(buf[:LENGTH_PREFIX_BYTES], "big")
        if not 0 < n <= self.max_frame_bytes:
            raise WireError(f"length prefix {n} outside [1, {self.max_frame_bytes}]")
        end = LENGTH_PREFIX_BYTES + n
        if len(buf) < end:
            return None
        body = bytes(buf[LENGTH_PREFIX_BYTES:end])
        del buf[:end]  # CPython trims a bytearray's head in O(1)
        return decode_body(body)


def _describe(v: object) -> str:
    """A short, safe description of a bad value for error messages (never its bytes)."""
    if isinstance(v, bool | int):
        return repr(v) if -(1 << 64) < v < 1 << 64 else f"an int of {v.bit_length()} bits"
    if isinstance(v, str):
        return repr(v[:40]) + ("..." if len(v) > 40 else "")
    if isinstance(v, bytes):
        return f"{len(v)} bytes"
    return type(v).__name__
