"""The LogStorage contract, checked on its in-memory twin ``MemoryStorage``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.storage import Compacted, MemoryStorage, Unavailable, limit_size
from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

CONF = ConfState(voters=frozenset({"a", "b", "c"}))


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries ``[lo, hi)`` of ``term``, each with 8 bytes of data (32 bytes in all)."""
    return [Entry(i, term, data=b"%08d" % i) for i in range(lo, hi)]


def filled(last: int = 5) -> MemoryStorage:
    s = MemoryStorage(CONF)
    s.save(HardState(1, "a", 0), ents(1, last + 1))
    return s


def compacted(at: int = 3, last: int = 6) -> MemoryStorage:
    s = filled(last)
    s.set_snapshot(Snapshot(SnapshotMeta(at, 1, CONF), b"img"))
    s.compact(at)
    return s


def test_a_new_storage_is_empty_with_its_configuration() -> None:
    s = MemoryStorage(CONF)
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.initial_state() == (HardState(), CONF)
    assert s.term(0) == 0
    assert s.snapshot() == Snapshot(SnapshotMeta(0, 0, CONF))
    assert s.entries(1, 1) == []


def test_entries_is_half_open() -> None:
    s = filled(5)
    assert [e.index for e in s.entries(2, 4)] == [2, 3]
    assert [e.index for e in s.entries(1, 6)] == [1, 2, 3, 4, 5]


def test_entries_raises_named_errors_outside_the_log() -> None:
    s = compacted(at=3, last=6)
    with pytest.raises(Compacted):
        s.entries(3, 5)
    with pytest.raises(Unavailable):
        s.entries(4, 8)
    assert [e.index for e in s.entries(4, 7)] == [4, 5, 6]


def test_term_answers_from_the_snapshot_index_to_the_last_index() -> None:
    s = compacted(at=3, last=6)
    assert (s.first_index(), s.last_index()) == (4, 6)
    assert s.term(3) == 1  # the snapshot's term, kept after compaction
    with pytest.raises(Compacted):
        s.term(2)
    with pytest.raises(Unavailable):
        s.term(7)


@pytest.mark.parametrize(
    ("max_bytes", "count"),
    [(None, 4), (1, 1), (32, 1), (63, 1), (64, 2), (95, 2), (96, 3), (1000, 4)],
)
def test_entries_max_bytes_stops_before_the_entry_that_exceeds_it(
    max_bytes: int | None, count: int
) -> None:
    s = filled(5)  # each entry is 32 bytes
    assert len(s.entries(1, 5, max_bytes)) == count


def test_limit_size_always_keeps_one_entry() -> None:
    assert limit_size([], 0) == []
    assert limit_size(ents(1, 3), 0) == ents(1, 2)
    assert limit_size(ents(1, 3), None) == ents(1, 3)


def test_save_truncates_a_conflicting_suffix_first() -> None:
    s = filled(5)
    s.save(None, [Entry(3, 2, data=b"new")])
    assert s.last_index() == 3
    assert s.entries(1, 4) == [*ents(1, 3), Entry(3, 2, data=b"new")]


def test_save_refuses_a_gap_and_non_contiguous_entries() -> None:
    s = filled(3)
    with pytest.raises(AssertionError):
        s.save(None, [Entry(5, 1)])
    with pytest.raises(AssertionError):
        s.save(None, [Entry(4, 1), Entry(6, 1)])


def test_save_with_a_snapshot_replaces_the_whole_log() -> None:
    s = filled(5)
    snap = Snapshot(SnapshotMeta(8, 3, CONF), b"img")
    s.save(HardState(3, None, 8), [Entry(9, 3)], snap)
    assert (s.first_index(), s.last_index()) == (9, 9)
    assert s.term(8) == 3
    assert s.snapshot() == snap
    assert s.initial_state() == (HardState(3, None, 8), CONF)


def test_save_refuses_a_snapshot_older_than_the_log() -> None:
    s = compacted(at=3)
    with pytest.raises(AssertionError):
        s.save(None, [], Snapshot(SnapshotMeta(2, 1, CONF)))


def test_compact_keeps_the_term_of_the_compacted_index_and_needs_a_snapshot() -> None:
    s = filled(6)
    with pytest.raises(AssertionError):
        s.compact(3)  # no snapshot covers 3 yet
    s.set_snapshot(Snapshot(SnapshotMeta(3, 1, CONF)))
    s.compact(3)
    s.compact(2)  # below the first index: nothing to do
    assert (s.first_index(), s.last_index(), s.term(3)) == (4, 6, 1)
    with pytest.raises(AssertionError):
        s.compact(7)  # beyond the log


def test_set_snapshot_never_goes_backwards_nor_beyond_the_log() -> None:
    s = filled(5)
    s.set_snapshot(Snapshot(SnapshotMeta(4, 1, CONF)))
    with pytest.raises(AssertionError):
        s.set_snapshot(Snapshot(SnapshotMeta(3, 1, CONF)))
    with pytest.raises(AssertionError):
        s.set_snapshot(Snapshot(SnapshotMeta(6, 1, CONF)))


def test_crashed_keeps_only_synced_writes() -> None:
    s = filled(3)  # synced
    s.save(HardState(2, "b", 3), ents(4, 6), sync=False)
    assert s.last_index() == 5
    after = s.crashed()
    assert after.last_index() == 3
    assert after.initial_state()[0] == HardState(1, "a", 0)
    assert s.last_index() == 5  # the running storage still sees its own writes


def test_a_synced_write_makes_earlier_unsynced_writes_durable_too() -> None:
    s = filled(3)
    s.save(HardState(1, "a", 3), [], sync=False)
    s.save(None, ents(4, 5))
    after = s.crashed()
    assert after.last_index() == 4
    assert after.initial_state()[0] == HardState(1, "a", 3)


def test_set_snapshot_and_compact_are_durable() -> None:
    after = compacted(at=3).crashed()
    assert after.first_index() == 4
    assert after.snapshot().meta.index == 3


def test_crashed_storage_is_independent_of_the_original() -> None:
    s = filled(3)
    after = s.crashed()
    s.save(None, ents(4, 5))
    assert after.last_index() == 3


@given(
    st.lists(
        st.tuples(st.integers(1, 12), st.integers(0, 4), st.booleans()),
        max_size=30,
    )
)
def test_crash_model_against_a_reference(ops: list[tuple[int, int, bool]]) -> None:
    """Random appends (possibly truncating), synced or not; a crash returns the last
    synced image, and reads always agree with a plain list."""
    s = MemoryStorage(CONF)
    model: list[Entry] = []
    durable: list[Entry] = []
    term = 1
    for start, count, sync in ops:
        start = min(start, len(model) + 1)
        term += 1
        batch = [Entry(i, term) for i in range(start, start + count)]
        s.save(None, batch, sync=sync)
        if batch:
            model = model[: start - 1] + batch
        if sync:
            durable = list(model)
        assert s.last_index() == len(model)
        assert s.entries(1, len(model) + 1) == model
    assert s.crashed().entries(1, len(durable) + 1) == durable
