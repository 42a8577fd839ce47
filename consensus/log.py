"""The Raft log as the core sees it: stable entries in storage plus unstable ones in memory.

Theory of operation (after etcd's ``raftLog``):

- Entries ``< unstable_offset`` live in ``LogStorage``; entries from ``unstable_offset``
  on are held here until the driver persists them and the core calls ``stable_to``.
- A snapshot received from a leader is held as ``pending_snapshot`` until persisted;
  while it is pending the log starts right after it.
- ``committed`` never decreases; ``applied`` is the last index handed to the state
  machine in an advanced ``Ready``; ``applied <= committed`` always.
- Nothing here performs I/O beyond the reads of the storage Protocol.
"""

from __future__ import annotations

from consensus.storage import Compacted, LogStorage, Unavailable, limit_size
from consensus.types import Entry, Snapshot


class RaftLog:
    def __init__(self, storage: LogStorage, applied: int, max_apply_bytes: int) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.unstable_offset = storage.last_index() + 1
        self.pending_snapshot: Snapshot | None = None
        hard, _ = storage.initial_state()
        first = storage.first_index()
        self.committed = max(hard.commit, first - 1)
        assert self.committed <= storage.last_index(), (
            f"commit {self.committed} beyond the stored log {storage.last_index()}"
        )
        self.applied = max(applied, first - 1)
        assert self.applied <= storage.last_index(), f"applied {applied} beyond the log"
        # Applied entries were committed, even if the commit index was not synced.
        self.committed = max(self.committed, self.applied)
        self.max_apply_bytes = max_apply_bytes

    # ------------------------------------------------------------------ reads
    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: int) -> int | None:
        """The term at ``index``, or None when compacted or beyond the log."""
        snap = self.pending_snapshot
        if snap is not None and index == snap.meta.index:
            return snap.meta.term
        if index >= self.unstable_offset:
            pos = index - self.unstable_offset
            return self.unstable[pos].term if pos < len(self.unstable) else None
        if snap is not None and index < snap.meta.index:
            return None
        if index == 0:
            return 0
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log is at least as up to date as ours (§5.4.1)."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; raises ``Compacted`` when ``lo`` is below the log."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted")
        assert hi <= self.last_index() + 1, f"slice [{lo}, {hi}) beyond {self.last_index()}"
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.storage.entries(lo, min(hi, self.unstable_offset), max_bytes)
            if len(out) < min(hi, self.unstable_offset) - lo:
                return out  # the size limit cut it short
        if hi > self.unstable_offset:
            start = max(lo, self.unstable_offset) - self.unstable_offset
            out = out + self.unstable[start : hi - self.unstable_offset]
        return limit_size(out, max_bytes)

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term."""
        while index > 0:
            ours = self.term(index)
            if ours is None:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    # ---------------------------------------------------------------- appends
    def append(self, entries: list[Entry]) -> None:
        """Append (truncating any conflicting suffix) entries that start at or below the end."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.committed, f"overwriting committed index {first}"
        assert first <= self.last_index() + 1, f"gap before {first}"
        if first == self.unstable_offset + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= self.unstable_offset:
            # Replacing entries that may already be in storage: the next save truncates them.
            self.unstable_offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - self.unstable_offset :]
            self.unstable.extend(entries)

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or conflicts with ours (0 if none)."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        assert index <= self.last_index(), f"commit {index} beyond last {self.last_index()}"
        self.committed = index
        return True

    # --------------------------------------------------------------- snapshot
    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        self.pending_snapshot = snapshot
        self.unstable = []
        self.unstable_offset = snapshot.meta.index + 1
        self.committed = snapshot.meta.index

    # ---------------------------------------------------------- ready/advance
    def unstable_entries(self) -> tuple[Entry, ...]:
        return tuple(self.unstable)

    def apply_floor(self) -> int:
        snap = self.pending_snapshot
        return max(self.applied, snap.meta.index if snap is not None else 0)

    def has_next_committed(self) -> bool:
        return self.committed > self.apply_floor()

    def next_committed_entries(self) -> tuple[Entry, ...]:
        lo = self.apply_floor() + 1
        if self.committed < lo:
            return ()
        return tuple(self.slice(lo, self.committed + 1, self.max_apply_bytes))

    def stable_to(self, index: int, term: int) -> None:
        if index < self.unstable_offset or not self.match_term(index, term):
            return  # a later append replaced what was persisted; keep it unstable
        del self.unstable[: index + 1 - self.unstable_offset]
        self.unstable_offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.meta.index == index:
            self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (
            f"applied {index} out of range ({self.applied}, {self.committed}]"
        )
        self.applied = index
