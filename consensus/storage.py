"""The Raft log storage seam: the ``LogStorage`` Protocol and its in-memory twin.

Contract (shared by ``MemoryStorage`` here and the LMDB store in ``storage/``):

- The log holds entries ``[first_index(), last_index()]``. Entries below
  ``first_index()`` were compacted into the latest snapshot, whose index is
  ``first_index() - 1``; ``term(first_index() - 1)`` still answers (the snapshot's term).
  An empty log that has never been compacted has ``first_index() == 1`` and
  ``last_index() == 0``.
- ``entries(lo, hi, max_bytes)`` returns the half-open range ``[lo, hi)``; with
  ``max_bytes`` it stops before the entry that would exceed it, but always returns
  at least one entry when the range is not empty. ``lo < first_index()`` raises
  ``Compacted``; ``hi > last_index() + 1`` raises ``Unavailable``.
- ``save(...)`` is one atomic write: a snapshot (replacing the whole log), then
  entries (a first entry at or below ``last_index()`` truncates the conflicting
  suffix first), then the hard state. With ``sync=True`` the write is durable
  when ``save`` returns. The driver always syncs before it acknowledges anything.
- ``compact(index)`` discards entries up to and including ``index``; only
  applied entries may be compacted; the caller records a snapshot first
  (``set_snapshot``) covering ``index``.

Errors::

    StorageError
     ├── Compacted          the requested index lies below the first index
     ├── Unavailable        the requested index lies beyond the last index
     └── CorruptEntry       a stored entry fails its checksum (refuse to serve)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consensus.types import ConfState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base of every error the log storage raises."""


class Compacted(StorageError):
    pass


class Unavailable(StorageError):
    pass


class CorruptEntry(StorageError):
    def __init__(self, index: int, detail: str = "checksum mismatch") -> None:
        super().__init__(f"log entry {index} is corrupt: {detail}")
        self.index = index


class LogStorage(Protocol):
    """What the Raft core reads, and what the driver writes after each ``Ready``."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration of the latest snapshot."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid for ``first_index()-1 .. last_index()``."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (an empty one at index 0 if none was taken)."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None: ...

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot the state machine took locally (its index must be applied)."""
        ...

    def compact(self, index: int) -> None: ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes`` (at least one entry)."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


@dataclass(slots=True)
class _LogImage:
    """One copy of everything a MemoryStorage holds; entries[0] is the snapshot dummy."""

    hard_state: HardState
    snapshot: Snapshot
    entries: list[Entry]

    def copy(self) -> _LogImage:
        return _LogImage(self.hard_state, self.snapshot, list(self.entries))


class MemoryStorage:
    """In-memory ``LogStorage`` that can model a crash.

    Writes land in a working image; a synced write also becomes the durable image.
    ``crashed()`` returns a fresh storage holding only the durable image: what was
    not synced is lost. Used by unit tests and the simulator.
    """

    def __init__(self, conf: ConfState | None = None) -> None:
        snap = Snapshot()
        if conf is not None:
            snap = Snapshot(meta=type(snap.meta)(0, 0, conf))
        image = _LogImage(HardState(), snap, [Entry(0, 0)])
        self._work = image
        self._durable = image.copy()
        self.syncs = 0

    # ------------------------------------------------------------------ reads
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._work.hard_state, self._work.snapshot.meta.conf

    def first_index(self) -> int:
        return self._work.entries[0].index + 1

    def last_index(self) -> int:
        return self._work.entries[0].index + len(self._work.entries) - 1

    def term(self, index: int) -> int:
        offset = self._work.entries[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (first {offset + 1})")
        if index > self.last_index():
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._work.entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._work.entries[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (first {offset + 1})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        return limit_size(self._work.entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._work.snapshot

    # ----------------------------------------------------------------- writes
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        w = self._work
        if snapshot is not None:
            assert snapshot.meta.index > w.entries[0].index, "snapshot older than the log"
            w.snapshot = snapshot
            w.entries = [Entry(snapshot.meta.index, snapshot.meta.term)]
        if entries:
            first = entries[0].index
            offset = w.entries[0].index
            assert offset < first <= self.last_index() + 1, (
                f"append at {first} leaves a gap (log {offset + 1}..{self.last_index()})"
            )
            for a, b in itertools.pairwise(entries):
                assert b.index == a.index + 1, "entries must be contiguous"
            del w.entries[first - offset :]
            w.entries.extend(entries)
        if hard_state is not None:
            w.hard_state = hard_state
        if sync:
            self.sync()

    def sync(self) -> None:
        self._durable = self._work.copy()
        self.syncs += 1

    def set_snapshot(self, snapshot: Snapshot) -> None:
        w = self._work
        assert snapshot.meta.index >= w.snapshot.meta.index, "snapshot goes backwards"
        assert snapshot.meta.index <= self.last_index(), "snapshot beyond the log"
        w.snapshot = snapshot
        self.sync()

    def compact(self, index: int) -> None:
        w = self._work
        offset = w.entries[0].index
        if index <= offset:
            return
        assert index <= self.last_index(), f"compact {index} beyond last {self.last_index()}"
        assert index <= w.snapshot.meta.index, "compact only what a snapshot covers"
        w.entries = w.entries[index - offset :]
        self.sync()

    # ----------------------------------------------------------------- crash
    def crashed(self) -> MemoryStorage:
        """A storage as a restarted process would find it: only synced writes."""
        fresh = type(self).__new__(type(self))
        fresh._work = self._durable.copy()
        fresh._durable = self._durable.copy()
        fresh.syncs = 0
        return fresh
