"""Chunked snapshot streaming: ``next_chunk`` on the leader, ``SnapshotReceiver`` on
the follower."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.snapshots import SnapshotReceiver, next_chunk
from consensus.types import ConfState, InstallSnapshot, Snapshot, SnapshotMeta

META = SnapshotMeta(10, 2, ConfState(voters=frozenset({"a", "b"})))
OTHER = SnapshotMeta(12, 2, ConfState(voters=frozenset({"a", "b"})))


def chunk(
    offset: int, data: bytes, done: bool = False, meta: SnapshotMeta = META
) -> InstallSnapshot:
    return InstallSnapshot(2, "a", "b", meta, offset, data, done)


def chunks_of(image: bytes, size: int, meta: SnapshotMeta = META) -> list[InstallSnapshot]:
    out, offset = [], 0
    while True:
        data, done = next_chunk(image, offset, size)
        out.append(chunk(offset, data, done, meta))
        offset += len(data)
        if done:
            return out


def test_next_chunk_cuts_the_image_and_marks_the_last() -> None:
    assert next_chunk(b"abcdefgh", 0, 3) == (b"abc", False)
    assert next_chunk(b"abcdefgh", 6, 3) == (b"gh", True)
    assert next_chunk(b"abcdef", 3, 3) == (b"def", True)
    assert next_chunk(b"", 0, 3) == (b"", True)  # an empty image is one empty, done chunk


def test_next_chunk_rejects_offsets_outside_the_image() -> None:
    with pytest.raises(AssertionError):
        next_chunk(b"abc", 4, 3)
    with pytest.raises(AssertionError):
        next_chunk(b"abc", 0, 0)


def test_in_order_chunks_reassemble_the_snapshot() -> None:
    r = SnapshotReceiver()
    parts = chunks_of(b"0123456789", 4)
    assert [r.receive(m) for m in parts[:-1]] == [None, None]
    assert r.next_offset(META) == 8
    assert r.receive(parts[-1]) == Snapshot(META, b"0123456789")
    assert r.meta is None and r.next_offset(META) == 0  # cleared once complete


def test_a_chunk_out_of_order_is_ignored() -> None:
    r = SnapshotReceiver()
    a, b, c = chunks_of(b"0123456789", 4)
    r.receive(a)
    assert r.receive(c) is None  # 8 while 4 is expected
    assert r.next_offset(META) == 4
    assert r.receive(b) is None
    assert r.receive(c) == Snapshot(META, b"0123456789")


def test_a_duplicated_chunk_is_ignored() -> None:
    r = SnapshotReceiver()
    a, b, c = chunks_of(b"0123456789", 4)
    r.receive(a)
    r.receive(b)
    assert r.receive(b) is None
    assert r.next_offset(META) == 8
    assert r.receive(c) == Snapshot(META, b"0123456789")


def test_a_chunk_of_another_snapshot_is_ignored_unless_it_starts_one() -> None:
    r = SnapshotReceiver()
    a, _, _ = chunks_of(b"0123456789", 4)
    r.receive(a)
    other = chunks_of(b"abcdefgh", 4, OTHER)
    assert r.receive(other[1]) is None  # mid-stream chunk of another snapshot
    assert r.next_offset(META) == 4
    assert r.next_offset(OTHER) == 0
    assert r.receive(other[0]) is None  # offset 0 starts the other one
    assert (r.next_offset(META), r.next_offset(OTHER)) == (0, 4)
    assert r.receive(other[1]) == Snapshot(OTHER, b"abcdefgh")


def test_offset_zero_of_the_same_snapshot_does_not_restart_it() -> None:
    r = SnapshotReceiver()
    a, b, _ = chunks_of(b"0123456789", 4)
    r.receive(a)
    r.receive(b)
    assert r.receive(a) is None  # a resent first chunk: out of order, ignored
    assert r.next_offset(META) == 8


def test_an_empty_image_completes_with_its_only_chunk() -> None:
    r = SnapshotReceiver()
    assert r.receive(chunk(0, b"", True)) == Snapshot(META, b"")


@given(
    st.binary(max_size=60),
    st.integers(1, 9),
    st.lists(st.integers(0, 100), max_size=60),
)
def test_any_delivery_order_yields_the_image_or_nothing(
    image: bytes, size: int, order: list[int]
) -> None:
    """Whatever chunks arrive, in whatever order and however often, the receiver
    either completes with exactly the original image or keeps waiting; and resending
    from ``next_offset`` in order always completes it."""
    parts = chunks_of(image, size)
    r = SnapshotReceiver()
    done = None
    for k in order:
        got = r.receive(parts[k % len(parts)])
        if got is not None:
            assert got == Snapshot(META, image)
            done = got
    if done is None:
        offset = r.next_offset(META)
        for m in parts:
            if m.offset >= offset:
                done = r.receive(m) or done
        assert done == Snapshot(META, image)
