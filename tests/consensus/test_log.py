"""RaftLog: stable entries in storage plus unstable ones in memory, read as one log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.log import RaftLog
from consensus.storage import Compacted, MemoryStorage
from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

CONF = ConfState(voters=frozenset({"a"}))


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries ``[lo, hi)`` of ``term``, 32 bytes each."""
    return [Entry(i, term, data=b"%08d" % i) for i in range(lo, hi)]


def make_log(
    stable: list[Entry], unstable: list[Entry] | None = None, commit: int = 0, applied: int = 0
) -> RaftLog:
    storage = MemoryStorage(CONF)
    storage.save(HardState(1, None, commit), stable)
    log = RaftLog(storage, applied, max_apply_bytes=1 << 20)
    log.append(unstable or [])
    return log


def test_a_new_log_reads_the_storage() -> None:
    log = make_log(ents(1, 4), commit=2, applied=1)
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 3, 1)
    assert (log.committed, log.applied, log.unstable_offset) == (2, 1, 4)
    assert log.term(0) == 0
    assert log.term(4) is None


def test_applied_beyond_an_unsynced_commit_raises_commit_but_not_beyond_the_log() -> None:
    storage = MemoryStorage(CONF)
    storage.save(HardState(1, None, 1), ents(1, 3))
    log = RaftLog(storage, applied=2, max_apply_bytes=1 << 20)
    assert log.committed == 2  # what was applied was committed, synced or not
    with pytest.raises(AssertionError):
        RaftLog(storage, applied=4, max_apply_bytes=1 << 20)


def test_a_compacted_storage_starts_commit_and_applied_at_the_snapshot() -> None:
    storage = MemoryStorage(CONF)
    storage.save(HardState(1, None, 0), ents(1, 6))
    storage.set_snapshot(Snapshot(SnapshotMeta(4, 1, CONF)))
    storage.compact(4)
    log = RaftLog(storage, applied=0, max_apply_bytes=1 << 20)
    assert (log.first_index(), log.committed, log.applied) == (5, 4, 4)
    assert log.term(4) == 1
    assert log.term(3) is None


def test_append_after_the_end_extends_the_unstable_part() -> None:
    log = make_log(ents(1, 3), ents(3, 5))
    assert log.unstable_entries() == tuple(ents(3, 5))
    log.append(ents(5, 6))
    assert log.unstable_offset == 3
    assert [e.index for e in log.unstable] == [3, 4, 5]


def test_append_inside_the_unstable_part_truncates_it() -> None:
    log = make_log(ents(1, 3), ents(3, 6))
    log.append(ents(4, 5, term=2))
    assert log.unstable == [*ents(3, 4), *ents(4, 5, term=2)]
    assert log.last_index() == 4


def test_append_inside_the_stable_part_moves_the_unstable_offset_back() -> None:
    log = make_log(ents(1, 6))
    log.append(ents(3, 4, term=2))
    assert log.unstable_offset == 3
    assert log.last_index() == 3
    assert log.term(3) == 2
    assert log.term(4) is None  # still in storage, but no longer part of the log
    assert log.term(2) == 1


def test_append_refuses_to_overwrite_committed_entries_or_leave_a_gap() -> None:
    log = make_log(ents(1, 4), commit=2)
    with pytest.raises(AssertionError):
        log.append(ents(2, 3, term=2))
    with pytest.raises(AssertionError):
        log.append(ents(6, 7))


def test_slice_spans_stable_and_unstable_entries() -> None:
    log = make_log(ents(1, 4), ents(4, 7))
    assert log.slice(2, 6) == ents(2, 6)
    assert log.slice(5, 7) == ents(5, 7)
    assert log.slice(3, 3) == []


@pytest.mark.parametrize(
    ("max_bytes", "last"),
    [(1, 2), (64, 3), (95, 3), (96, 4), (128, 5), (160, 6), (10_000, 6)],
)
def test_slice_max_bytes_across_the_boundary(max_bytes: int, last: int) -> None:
    """Each entry is 32 bytes; the stable part is 2..3 and the unstable part 4..6."""
    log = make_log(ents(1, 4), ents(4, 7))
    assert [e.index for e in log.slice(2, 7, max_bytes)] == list(range(2, last + 1))


def test_slice_below_the_first_index_raises_compacted() -> None:
    storage = MemoryStorage(CONF)
    storage.save(HardState(), ents(1, 6))
    storage.set_snapshot(Snapshot(SnapshotMeta(3, 1, CONF)))
    storage.compact(3)
    log = RaftLog(storage, 0, 1 << 20)
    with pytest.raises(Compacted):
        log.slice(3, 5)
    assert log.slice(4, 6) == ents(4, 6)


def test_is_up_to_date_compares_last_term_then_last_index() -> None:
    log = make_log([*ents(1, 3), *ents(3, 5, term=2)])  # last entry 4/2
    assert log.is_up_to_date(4, 2)
    assert log.is_up_to_date(9, 2)
    assert log.is_up_to_date(1, 3)  # a later term wins even with a shorter log
    assert not log.is_up_to_date(3, 2)
    assert not log.is_up_to_date(9, 1)


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (7, 4, (7, 3)),  # our term at 7 (3) is <= 4
        (7, 3, (7, 3)),
        (7, 2, (4, 2)),  # skip the term-3 entries 5..7
        (4, 2, (4, 2)),
        (7, 1, (2, 1)),
        (7, 0, (0, 0)),
        (0, 5, (0, 0)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    # Terms by index: 1:1 2:1 3:2 4:2 5:3 6:3 7:3
    log = make_log([*ents(1, 3), *ents(3, 5, term=2), *ents(5, 8, term=3)])
    assert log.find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_the_compacted_region() -> None:
    storage = MemoryStorage(CONF)
    storage.save(HardState(), [*ents(1, 4), *ents(4, 7, term=2)])
    storage.set_snapshot(Snapshot(SnapshotMeta(4, 2, CONF)))
    storage.compact(4)
    log = RaftLog(storage, 0, 1 << 20)
    assert log.find_conflict_by_term(6, 1) == (3, 0)  # 4 is the snapshot (term 2), 3 unknown


def test_find_conflict() -> None:
    log = make_log(ents(1, 4))
    assert log.find_conflict(tuple(ents(2, 4))) == 0  # all present
    assert log.find_conflict(tuple(ents(2, 6))) == 4  # new from 4
    assert log.find_conflict((*ents(2, 3), *ents(3, 5, term=2))) == 3  # conflict at 3


def test_commit_to_never_decreases_and_never_passes_the_log() -> None:
    log = make_log(ents(1, 4), commit=2)
    assert not log.commit_to(1)
    assert log.commit_to(3)
    assert log.committed == 3
    with pytest.raises(AssertionError):
        log.commit_to(4)


def test_stable_to_ignores_a_replaced_entry() -> None:
    log = make_log(ents(1, 2), ents(2, 4))
    log.append(ents(3, 4, term=2))  # replaces 3/1 before it was persisted
    log.stable_to(3, 1)
    assert log.unstable_offset == 2
    log.stable_to(3, 2)
    assert (log.unstable_offset, log.unstable) == (4, [])


def test_next_committed_entries_respects_applied_and_max_apply_bytes() -> None:
    storage = MemoryStorage(CONF)
    storage.save(HardState(1, None, 5), ents(1, 6))
    log = RaftLog(storage, applied=1, max_apply_bytes=64)
    assert [e.index for e in log.next_committed_entries()] == [2, 3]
    log.applied_to(3)
    assert [e.index for e in log.next_committed_entries()] == [4, 5]
    log.applied_to(5)
    assert not log.has_next_committed()
    assert log.next_committed_entries() == ()


def test_applied_to_stays_within_applied_and_committed() -> None:
    log = make_log(ents(1, 4), commit=2)
    with pytest.raises(AssertionError):
        log.applied_to(3)
    log.applied_to(2)
    with pytest.raises(AssertionError):
        log.applied_to(1)


def test_restore_holds_the_snapshot_until_it_is_persisted() -> None:
    log = make_log(ents(1, 4), commit=1)
    snap = Snapshot(SnapshotMeta(10, 3, CONF), b"img")
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 3
    assert log.term(3) is None  # the old log is gone
    assert log.apply_floor() == 10
    assert not log.has_next_committed()
    log.append(ents(11, 12, term=3))
    assert log.slice(11, 12) == ents(11, 12, term=3)
    log.stable_snap_to(9)  # another snapshot: nothing happens
    assert log.pending_snapshot is snap
    log.stable_snap_to(10)
    assert log.pending_snapshot is None


# ------------------------------------------------------------------ model check
appends = st.lists(
    st.tuples(st.integers(0, 12), st.integers(1, 4), st.sampled_from(["append", "persist"])),
    max_size=25,
)


@given(appends)
def test_log_against_a_plain_list(ops: list[tuple[int, int, str]]) -> None:
    """Random appends (truncating or not) and persists of a prefix: the log always reads
    like a plain list of entries, and storage + unstable always make up that list."""
    storage = MemoryStorage(CONF)
    log = RaftLog(storage, 0, 1 << 20)
    model: list[Entry] = []
    term = 0
    for start, count, op in ops:
        if op == "append":
            term += 1
            start = max(1, min(start, len(model) + 1))
            batch = [Entry(i, term) for i in range(start, start + count)]
            log.append(batch)
            model = model[: start - 1] + batch
        else:
            entries = list(log.unstable_entries())
            if entries:
                storage.save(None, entries)
                log.stable_to(entries[-1].index, entries[-1].term)
        assert log.last_index() == len(model)
        assert log.slice(1, len(model) + 1) == model
        assert [log.term(e.index) for e in model] == [e.term for e in model]
        assert log.term(len(model) + 1) is None
        assert log.unstable_offset + len(log.unstable) == len(model) + 1
        stable = storage.entries(1, log.unstable_offset) if log.unstable_offset > 1 else []
        assert stable == model[: log.unstable_offset - 1]
