"""The peer wire codec: round trips for every frame, strict rejection of everything else."""

from __future__ import annotations

import contextlib
import dataclasses
import typing

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.types import (
    MESSAGE_TYPES,
    AppendEntries,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    InstallSnapshot,
    ReadIndexRequest,
    SnapshotMeta,
    TimeoutNow,
)
from node.wire import (
    CTX_BYTES_MAX,
    LENGTH_PREFIX_BYTES,
    MAX_FRAME_BYTES_DEFAULT,
    U64_MAX,
    Frame,
    FrameDecoder,
    RaftFrame,
    Request,
    Response,
    WireError,
    decode_body,
    encode_body,
    encode_frame,
)

# ------------------------------------------------------------------ strategies

node_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)
u64 = st.one_of(st.integers(0, 1000), st.integers(0, U64_MAX))
small_bytes = st.binary(max_size=64)
entries = st.lists(
    st.builds(Entry, u64, u64, st.sampled_from(EntryType), small_bytes), max_size=8
).map(tuple)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    ids = draw(st.lists(node_ids, max_size=6, unique=True))
    cut = draw(st.integers(0, len(ids)))
    return ConfState(frozenset(ids[:cut]), frozenset(ids[cut:]))


metas = st.builds(SnapshotMeta, u64, u64, conf_states())
BY_TYPE: dict[object, st.SearchStrategy[typing.Any]] = {
    int: u64,
    bool: st.booleans(),
    bytes: small_bytes,
    str: node_ids,
    tuple[Entry, ...]: entries,
    SnapshotMeta: metas,
}


def message_strategy(cls: type) -> st.SearchStrategy[typing.Any]:
    """Every field drawn by its annotated type, so a new field is covered automatically."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: BY_TYPE[hints[f.name]] for f in dataclasses.fields(cls)}
    if "ctx" in fields:
        fields["ctx"] = st.binary(max_size=CTX_BYTES_MAX)
    return st.builds(cls, **fields)


messages = st.one_of([message_strategy(cls) for cls in MESSAGE_TYPES])
methods = st.from_regex(r"[A-Za-z][A-Za-z0-9_./:-]{0,20}", fullmatch=True)
frames: st.SearchStrategy[Frame] = st.one_of(
    messages.map(RaftFrame),
    st.builds(Request, u64, methods, small_bytes),
    st.builds(Response, u64, st.booleans(), small_bytes),
)


def decode_all(data: bytes, max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT) -> list[Frame]:
    decoder = FrameDecoder(max_frame_bytes)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


# ------------------------------------------------------------------ round trips


@given(frames)
@settings(max_examples=300)
def test_every_frame_round_trips(frame: Frame) -> None:
    assert decode_body(encode_body(frame)) == frame


@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_a_stream_split_anywhere_yields_the_same_frames(
    frames_: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(f) for f in frames_)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == frames_
    assert decoder.buffered_bytes == 0


MINIMAL: dict[object, object] = {
    int: 0, bool: False, bytes: b"", str: "n1", tuple[Entry, ...]: (), SnapshotMeta: SnapshotMeta()
}  # fmt: skip


def test_every_message_type_has_its_own_kind() -> None:
    kinds = set()
    for cls in MESSAGE_TYPES:
        hints = typing.get_type_hints(cls)
        msg = cls(*(MINIMAL[hints[f.name]] for f in dataclasses.fields(cls)))
        raw = encode_body(RaftFrame(msg))
        assert decode_body(raw) == RaftFrame(msg)
        kinds.add(msgpack.unpackb(raw)[0])
    assert len(kinds) == len(MESSAGE_TYPES)


def test_append_entries_is_a_flat_positional_array() -> None:
    msg = AppendEntries(3, "n1", "n2", 7, 2, (Entry(8, 3, EntryType.CONF_CHANGE, b"x"),), 6)
    assert msgpack.unpackb(encode_body(RaftFrame(msg))) == [
        1, 3, "n1", "n2", 7, 2, [[8, 3, 1, b"x"]], 6,
    ]  # fmt: skip


def test_snapshot_meta_carries_the_configuration_sorted() -> None:
    conf = ConfState(frozenset({"n3", "n1"}), frozenset({"n9"}))
    msg = InstallSnapshot(2, "n1", "n2", SnapshotMeta(40, 2, conf), 0, b"img", False)
    array = msgpack.unpackb(encode_body(RaftFrame(msg)))
    assert array[4] == [40, 2, ["n1", "n3"], ["n9"]]
    assert decode_body(encode_body(RaftFrame(msg))) == RaftFrame(msg)


# --------------------------------------------------------------- strict decoding


def body(*fields: object) -> bytes:
    packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return packed


HEARTBEAT = (3, 1, "n1", "n2", 5, 0)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (body(*HEARTBEAT), None),
        (body(*HEARTBEAT, 0), "expected 5 fields"),
        (body(*HEARTBEAT[:-1]), "expected 5 fields"),
        (body(99, 1), "unknown frame kind"),
        (body(True, 1, "n1", "n2", 5, 0), "unknown frame kind"),
        (body("3", 1, "n1", "n2", 5, 0), "unknown frame kind"),
        (body(3, -1, "n1", "n2", 5, 0), "expected an integer"),
        (body(3, True, "n1", "n2", 5, 0), "expected an integer"),
        (body(3, 1.0, "n1", "n2", 5, 0), "expected an integer"),
        (body(3, 1, "N1", "n2", 5, 0), "expected a node id"),
        (body(3, 1, "", "n2", 5, 0), "expected a node id"),
        (body(3, 1, "n" * 64, "n2", 5, 0), "expected a node id"),
        (body(3, 1, b"n1", "n2", 5, 0), "expected a node id"),
        (body(6, 1, "n1", "n2", 1, False), "expected a bool"),
        (body(10, 1, "n1", "n2", "ctx"), "expected bytes"),
        (body(10, 1, "n1", "n2", b"c" * (CTX_BYTES_MAX + 1)), "read context"),
        (body(1, 1, "n1", "n2", 0, 0, [[1, 1, 7, b""]], 0), "unknown type"),
        (body(1, 1, "n1", "n2", 0, 0, [[1, 1, 0]], 0), "expected 4 fields"),
        (body(1, 1, "n1", "n2", 0, 0, {"a": 1}, 0), "expected an array"),
        (body(1, 1, "n1", "n2", 0, 0, [[1, -1, 0, b""]], 0), "expected an integer"),
        (body(7, 1, "n1", "n2", [1, 1, ["n1", "n1"], []], 0, b"", True), "duplicate"),
        (body(7, 1, "n1", "n2", [1, 1, ["n1"], ["n1"]], 0, b"", True), "both voter and learner"),
        (body(7, 1, "n1", "n2", [1, 1, ["n1"]], 0, b"", True), "expected 4 fields"),
        (body(32, 1, "bad method!", b""), "expected a method name"),
        (body(32, 1, "m", "not bytes"), "expected bytes"),
        (body(33, 1, 1, b""), "expected a bool"),
        (body(), "expected a non-empty array"),
        (msgpack.packb({"kind": 3}), "expected a non-empty array"),
        (msgpack.packb(3), "expected a non-empty array"),
        (body(*HEARTBEAT) + b"\x00", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (b"\x92\xa2\xff\xfe", "not msgpack"),  # invalid UTF-8 in a str
        (b"\x81\x90\x01", "not msgpack"),  # a map with an array key
        (b"\x91" * 5000, "not msgpack"),  # nesting deeper than msgpack allows
        (b"", "not msgpack"),
    ],
)
def test_decoding_is_strict(raw: bytes, why: str | None) -> None:
    if why is None:
        assert decode_body(raw) == RaftFrame(Heartbeat(1, "n1", "n2", 5, 0))
        return
    with pytest.raises(WireError, match=why):
        decode_body(raw)


def test_huge_integers_are_refused_without_echoing_them() -> None:
    raw = body(3, 1, "n1", "n2", 5, 0).replace(b"\x05", b"\xd3\x80" + b"\x00" * 7)  # int64 min
    with pytest.raises(WireError, match="expected an integer"):
        decode_body(raw)


@given(st.binary(max_size=256))
@settings(max_examples=250)
def test_random_bytes_raise_only_wire_error(raw: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_body(raw)
    with contextlib.suppress(WireError):
        decode_all(raw, max_frame_bytes=1 << 10)


@given(frames, st.data())
@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_decode_to_a_frame_or_raise_wire_error(
    frame: Frame, data: st.DataObject
) -> None:
    raw = bytearray(encode_body(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=9))
    try:
        decoded = decode_body(bytes(raw))
    except WireError:
        return
    assert decode_body(encode_body(decoded)) == decoded  # what decodes is a valid frame


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), U64_MAX) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip


@given(frames, st.data())
@settings(max_examples=250)
def test_any_field_replaced_by_any_value_is_handled(frame: Frame, data: st.DataObject) -> None:
    array = msgpack.unpackb(encode_body(frame))
    at = data.draw(st.integers(0, len(array) - 1))
    array[at] = data.draw(wire_values)
    with contextlib.suppress(WireError):
        decode_body(msgpack.packb(array, use_bin_type=True))


# ---------------------------------------------------------------- frame limits


def test_the_length_prefix_is_checked_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    decoder.feed((1025).to_bytes(LENGTH_PREFIX_BYTES, "big"))
    with pytest.raises(WireError, match="length prefix 1025"):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")  # 4 GiB
    with pytest.raises(WireError, match="length prefix"):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(WireError, match="length prefix 0"):
        decoder.next_frame()


def test_a_partial_frame_waits_for_more_bytes() -> None:
    data = encode_frame(RaftFrame(TimeoutNow(1, "n1", "n2")))
    decoder = FrameDecoder()
    decoder.feed(data[:2])
    assert decoder.next_frame() is None
    decoder.feed(data[2:-1])
    assert decoder.next_frame() is None
    decoder.feed(data[-1:])
    assert decoder.next_frame() == RaftFrame(TimeoutNow(1, "n1", "n2"))


def test_encoding_refuses_oversized_and_invalid_frames() -> None:
    big = Request(1, "m", b"x" * 2000)
    assert len(encode_frame(big, max_frame_bytes=4096)) > 2000
    with pytest.raises(WireError, match="more than 1024"):
        encode_frame(big, max_frame_bytes=1024)
    with pytest.raises(WireError, match=r"Heartbeat\.term: expected an integer"):
        encode_body(RaftFrame(Heartbeat(-1, "n1", "n2", 0)))
    with pytest.raises(WireError, match=r"ReadIndexRequest\.src: expected a node id"):
        encode_body(RaftFrame(ReadIndexRequest(1, "Not An Id", "n2", b"")))
    with pytest.raises(WireError, match="entries"):
        encode_body(RaftFrame(AppendEntries(1, "n1", "n2", 0, 0, [Entry(1, 1)], 0)))  # type: ignore[arg-type]
    with pytest.raises(WireError, match="method"):
        encode_body(Request(1, "", b""))
    with pytest.raises(WireError, match="not a frame"):
        encode_body(RaftFrame("hello"))  # type: ignore[arg-type]
