"""The in-memory summary of the stored log: first/last index and the terms of its tail.

Rules:
- A ``LogView`` is immutable. A writer computes the next view inside its transaction
  and publishes it (one reference assignment) after the commit, so a reader in any
  thread sees either the view before or after a write, never half of one.
- Terms are kept as runs ``(first index, term)``: a Raft log has few distinct terms,
  so a handful of runs covers thousands of entries. At most ``runs_max`` runs are
  kept (the newest); indexes before the oldest run are answered from disk.
- The view is an optimisation only: ``cached_term`` returns None whenever it cannot
  answer with certainty.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.types import Entry


@dataclass(frozen=True, slots=True)
class LogView:
    floor_index: int  # first_index() - 1: the snapshot / compaction point
    floor_term: int
    last_index: int
    runs: tuple[tuple[int, int], ...] = ()  # (first index, term), ascending, up to last_index

    def __post_init__(self) -> None:
        assert self.floor_index <= self.last_index, f"floor above last: {self}"
        assert not self.runs or self.runs[-1][0] <= self.last_index, "run beyond the log"

    @classmethod
    def at(cls, index: int, term: int) -> LogView:
        """An empty log whose floor (snapshot point) is ``index``/``term``."""
        return cls(index, term, index, ((index, term),))

    def cached_term(self, index: int) -> int | None:
        """The term at ``index`` if the view knows it, else None (ask the disk)."""
        if index == self.floor_index:
            return self.floor_term
        if not self.runs or index < self.runs[0][0] or index > self.last_index:
            return None
        pos = bisect.bisect_right(self.runs, index, key=lambda run: run[0]) - 1
        return self.runs[pos][1]

    def appended(self, entries: Sequence[Entry], runs_max: int) -> LogView:
        """The view after ``entries`` replaced everything from ``entries[0].index`` on."""
        assert entries
        first = entries[0].index
        assert self.floor_index < first <= self.last_index + 1, (
            f"append at {first} leaves a gap (log {self.floor_index + 1}..{self.last_index})"
        )
        term = entries[0].term
        if self.runs and self.runs[-1][0] < first and self.runs[-1][1] == term == entries[-1].term:
            # The common case: more entries of the current term, nothing to truncate.
            return LogView(self.floor_index, self.floor_term, entries[-1].index, self.runs)
        runs = [run for run in self.runs if run[0] < first]
        changes: Sequence[Entry] = entries[:1] if term == entries[-1].term else entries
        for e in changes:
            if not runs or runs[-1][1] != e.term:
                assert not runs or runs[-1][1] < e.term, f"term goes backwards at {e.index}"
                runs.append((e.index, e.term))
        assert all(a[0] < b[0] for a, b in itertools.pairwise(runs)), f"runs out of order: {runs}"
        kept = tuple(runs[-runs_max:])
        return LogView(self.floor_index, self.floor_term, entries[-1].index, kept)

    def compacted(self, index: int, term: int) -> LogView:
        """The view after discarding entries up to ``index`` (whose term is ``term``)."""
        assert self.floor_index < index <= self.last_index
        keep = [
            run
            for k, run in enumerate(self.runs)
            if k + 1 == len(self.runs) or self.runs[k + 1][0] > index
        ]
        return LogView(index, term, self.last_index, tuple(keep))
