"""The ``LogStorage`` contract, run against both implementations: ``MemoryStorage``
(the in-memory twin) and ``LmdbLogStorage``. A restart is ``crashed()`` for the twin
(synced writes survive) and close-and-reopen of the directory for LMDB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consensus.storage import (
    Compacted,
    LogStorage,
    MemoryStorage,
    Unavailable,
    limit_size,
)
from consensus.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from storage import LmdbLogStorage, StoreConfig, Table
from storage.image import encode_image

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))


@dataclass
class Harness:
    kind: str
    root: Path
    opened: list[LmdbLogStorage] = field(default_factory=list)

    def make(self, conf: ConfState = CONF) -> LogStorage:
        if self.kind == "memory":
            return MemoryStorage(conf)
        return self._open(conf)

    def _open(self, conf: ConfState | None = None) -> LmdbLogStorage:
        # A tiny term cache so that the disk path of term() is exercised too.
        store = LmdbLogStorage(
            self.root / "node", StoreConfig(term_runs_cached_max=2), initial_conf=conf
        )
        self.opened.append(store)
        return store

    def restart(self, s: LogStorage) -> LogStorage:
        if isinstance(s, MemoryStorage):
            return s.crashed()
        assert isinstance(s, LmdbLogStorage)
        s.close()
        return self._open()

    def mark_applied(self, s: LogStorage, index: int) -> None:
        """The state machine has applied up to ``index`` (only LMDB tracks it)."""
        if isinstance(s, LmdbLogStorage) and s.applied_index() < index:
            s.apply([(Table.JOBS, b"job", f"at {index}".encode())], index)

    def local_snapshot(self, s: LogStorage, index: int) -> Snapshot:
        if isinstance(s, LmdbLogStorage):
            return s.create_snapshot(index, s.term(index), CONF)
        return Snapshot(SnapshotMeta(index, s.term(index), CONF), encode_image(index, 0, []))


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    for store in harness.opened:
        store.close()


def ents(lo: int, hi: int, term: int, size: int = 10) -> list[Entry]:
    return [Entry(i, term, data=bytes([i % 256]) * size) for i in range(lo, hi)]


def leader_snapshot(index: int, term: int, conf: ConfState = CONF) -> Snapshot:
    """A snapshot as a leader would send it: an image with one job row."""
    image = encode_image(index, term, [(Table.JOBS, b"job", b"from leader")])
    return Snapshot(SnapshotMeta(index, term, conf), image)


def test_empty_store(h: Harness) -> None:
    s = h.make()
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    assert s.entries(1, 1) == []
    assert s.snapshot().meta == SnapshotMeta(0, 0, CONF)
    assert s.initial_state() == (HardState(), CONF)
    with pytest.raises(Unavailable):
        s.term(1)
    with pytest.raises(Unavailable):
        s.entries(1, 2)


def test_half_open_ranges(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 11, 1))
    assert [e.index for e in s.entries(3, 7)] == [3, 4, 5, 6]
    assert s.entries(1, 11) == ents(1, 11, 1)
    assert s.entries(11, 11) == []
    assert s.entries(4, 4) == []
    with pytest.raises(Compacted):
        s.entries(0, 5)
    with pytest.raises(Unavailable):
        s.entries(5, 12)
    with pytest.raises(Unavailable):
        s.term(11)


def test_entries_keep_type_and_data(h: Harness) -> None:
    s = h.make()
    batch = [
        Entry(1, 1, EntryType.NORMAL, b""),
        Entry(2, 1, EntryType.CONF_CHANGE, b"0:n4"),
        Entry(3, 2, EntryType.NORMAL, bytes(range(256)) * 40),
    ]
    s.save(None, batch)
    assert s.entries(1, 4) == batch


@pytest.mark.parametrize("max_bytes", [0, 1, 33, 34, 35, 68, 101, 102, 10_000])
def test_max_bytes_returns_a_prefix_of_at_least_one(h: Harness, max_bytes: int) -> None:
    s = h.make()
    s.save(None, ents(1, 6, 1))  # each entry counts 10 + 24 = 34 bytes
    got = s.entries(1, 6, max_bytes)
    assert got == limit_size(ents(1, 6, 1), max_bytes)
    assert len(got) >= 1
    assert sum(e.size() for e in got) <= max_bytes or len(got) == 1
    assert len(s.entries(2, 6, max_bytes)) == len(limit_size(ents(2, 6, 1), max_bytes))


def test_conflicting_append_truncates_the_suffix(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 11, 1))
    s.save(None, ents(6, 8, 2, size=3))
    assert s.last_index() == 7
    assert [e.term for e in s.entries(1, 8)] == [1] * 5 + [2] * 2
    assert s.entries(6, 8) == ents(6, 8, 2, size=3)
    with pytest.raises(Unavailable):
        s.entries(8, 9)
    s.save(None, ents(8, 10, 2))  # appending right after the new end
    assert s.last_index() == 9
    s.save(None, ents(1, 3, 3))  # replacing everything
    assert (s.first_index(), s.last_index(), s.term(2)) == (1, 2, 3)


def test_append_with_a_gap_is_refused(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 4, 1))
    with pytest.raises(AssertionError):
        s.save(None, ents(6, 7, 1))
    assert s.last_index() == 3


def test_snapshot_replaces_the_log(h: Harness) -> None:
    s = h.make()
    s.save(HardState(2, "n1", 5), ents(1, 11, 2))
    conf = ConfState(voters=frozenset({"n1", "n2"}), learners=frozenset({"n9"}))
    snap = leader_snapshot(20, 3, conf)
    s.save(HardState(3, None, 20), [], snap)
    assert (s.first_index(), s.last_index()) == (21, 20)
    assert s.term(20) == 3
    assert s.snapshot() == snap
    assert s.initial_state() == (HardState(3, None, 20), conf)
    with pytest.raises(Compacted):
        s.term(19)
    with pytest.raises(Compacted):
        s.entries(20, 21)
    s.save(None, ents(21, 23, 3))
    assert s.entries(21, 23) == ents(21, 23, 3)
    s2 = h.restart(s)
    assert (s2.first_index(), s2.last_index(), s2.term(20)) == (21, 22, 3)
    assert s2.snapshot() == snap


def test_snapshot_inside_the_log_still_replaces_it(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 11, 1))
    s.save(None, [], leader_snapshot(5, 1))
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 1)


def test_snapshot_entries_and_hard_state_in_one_save(h: Harness) -> None:
    s = h.make()
    s.save(HardState(4, "n2", 9), ents(10, 12, 4), leader_snapshot(9, 3))
    assert (s.first_index(), s.last_index(), s.term(9), s.term(11)) == (10, 11, 3, 4)
    assert s.initial_state()[0] == HardState(4, "n2", 9)


def test_compaction_keeps_the_term_before_the_first_index(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 4, 1) + ents(4, 8, 2) + ents(8, 11, 3))
    h.mark_applied(s, 6)
    s.set_snapshot(h.local_snapshot(s, 6))
    assert s.snapshot().meta.index == 6
    assert s.first_index() == 1  # set_snapshot alone discards nothing
    s.compact(6)
    assert (s.first_index(), s.last_index()) == (7, 10)
    assert s.term(6) == 2
    assert [e.term for e in s.entries(7, 11)] == [2, 3, 3, 3]
    with pytest.raises(Compacted):
        s.term(5)
    with pytest.raises(Compacted):
        s.entries(6, 8)
    s.compact(3)  # already compacted: nothing to do
    assert s.first_index() == 7
    kept = s.entries(7, 11)
    s2 = h.restart(s)
    assert (s2.first_index(), s2.last_index(), s2.term(6)) == (7, 10, 2)
    assert s2.entries(7, 11) == kept


def test_compaction_beyond_the_snapshot_is_refused(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 11, 1))
    h.mark_applied(s, 4)
    s.set_snapshot(h.local_snapshot(s, 4))
    with pytest.raises(AssertionError):
        s.compact(5)


def test_compaction_of_the_whole_log(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 6, 2))
    h.mark_applied(s, 5)
    s.set_snapshot(h.local_snapshot(s, 5))
    s.compact(5)
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 2)
    s.save(None, ents(6, 8, 3))
    assert s.entries(6, 8) == ents(6, 8, 3)


def test_hard_state_round_trip(h: Harness) -> None:
    s = h.make()
    for hs in (HardState(1, None, 0), HardState(1, "n2", 0), HardState(7, "n3", 0)):
        s.save(hs, [])
        assert s.initial_state()[0] == hs
    s.save(None, ents(1, 3, 7))  # no hard state: the previous one stays
    assert s.initial_state()[0] == HardState(7, "n3", 0)
    s.save(HardState(7, "n3", 2), [])
    s2 = h.restart(s)
    assert s2.initial_state() == (HardState(7, "n3", 2), CONF)


def test_synced_writes_survive_a_restart(h: Harness) -> None:
    s = h.make()
    s.save(HardState(2, "n1", 3), ents(1, 6, 1) + ents(6, 9, 2))
    s.save(None, ents(7, 8, 3))
    before = (s.first_index(), s.last_index(), s.entries(1, 8), s.initial_state())
    s2 = h.restart(s)
    assert (s2.first_index(), s2.last_index(), s2.entries(1, 8), s2.initial_state()) == before
    assert [s2.term(i) for i in range(0, 8)] == [0, 1, 1, 1, 1, 1, 2, 3]


def test_snapshot_may_not_go_backwards(h: Harness) -> None:
    s = h.make()
    s.save(None, ents(1, 11, 1))
    h.mark_applied(s, 8)
    s.set_snapshot(h.local_snapshot(s, 8))
    with pytest.raises(AssertionError):
        s.set_snapshot(h.local_snapshot(s, 7))
