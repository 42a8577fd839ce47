"""The in-memory LogView: term runs across appends, truncation, compaction and
snapshots, its bound, and that cached reads really stay off the disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.types import Entry, HardState
from storage import LmdbLogStorage, StoreConfig
from storage.view import LogView


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term) for i in range(lo, hi)]


def test_runs_follow_appends_and_truncation() -> None:
    v = LogView.at(0, 0).appended(ents(1, 5, 1) + ents(5, 8, 2), runs_max=10)
    assert v.runs == ((0, 0), (1, 1), (5, 2)) and v.last_index == 7
    assert [v.cached_term(i) for i in range(0, 9)] == [0, 1, 1, 1, 1, 2, 2, 2, None]
    w = v.appended(ents(4, 6, 3), runs_max=10)  # overwrites 4.. with term 3
    assert w.runs == ((0, 0), (1, 1), (4, 3)) and w.last_index == 5
    assert [w.cached_term(i) for i in range(0, 7)] == [0, 1, 1, 1, 3, 3, None]


def test_runs_are_bounded_and_older_terms_go_to_disk() -> None:
    v = LogView.at(0, 0)
    for term in range(1, 10):
        v = v.appended(ents(v.last_index + 1, v.last_index + 4, term), runs_max=3)
    assert len(v.runs) == 3 and v.runs[0] == (19, 7)
    assert v.cached_term(19) == 7 and v.cached_term(27) == 9
    assert v.cached_term(18) is None  # not cached: the store reads it from disk
    assert v.cached_term(0) == 0  # the floor is always known


def test_compaction_and_snapshot_move_the_floor() -> None:
    v = LogView.at(0, 0).appended(ents(1, 5, 1) + ents(5, 8, 2), runs_max=10)
    c = v.compacted(5, 2)
    assert (c.floor_index, c.floor_term, c.last_index) == (5, 2, 7)
    assert c.runs == ((5, 2),)
    assert c.cached_term(5) == 2 and c.cached_term(7) == 2
    s = LogView.at(20, 4)
    assert (s.floor_index, s.last_index, s.cached_term(20), s.cached_term(21)) == (20, 20, 4, None)


def test_terms_may_not_go_backwards() -> None:
    v = LogView.at(0, 0).appended(ents(1, 3, 5), runs_max=10)
    with pytest.raises(AssertionError):
        v.appended(ents(3, 4, 4), runs_max=10)
    with pytest.raises(AssertionError):
        v.appended(ents(5, 6, 5), runs_max=10)  # a gap


def test_cached_reads_do_not_open_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = LmdbLogStorage(tmp_path / "n", StoreConfig(term_runs_cached_max=2))
    s.save(HardState(3, None, 0), ents(1, 10, 1) + ents(10, 20, 2) + ents(20, 30, 3))

    def no_disk(fn: object) -> object:
        raise AssertionError("went to disk")

    monkeypatch.setattr(s._env, "read", no_disk)
    assert (s.first_index(), s.last_index(), s.term(29), s.term(10), s.term(0)) == (1, 29, 3, 2, 0)
    with pytest.raises(AssertionError, match="went to disk"):
        s.term(5)  # term 1 fell out of the two cached runs
    monkeypatch.undo()
    assert s.term(5) == 1
    s.close()
