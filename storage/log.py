"""``LmdbLogStorage``: the node's durable store on LMDB — Raft log, hard state,
snapshots and the replicated state-machine tables, in one environment per directory.

It implements ``consensus.storage.LogStorage`` (the contract is in that module) and
adds the state machine's side: ``apply``/``applied_index``/``get``/``scan``,
``create_snapshot``/``install_snapshot``, ``verify``, and node-local run output
(``outputs``, see ``storage.output``). The layout is in ``storage.tables``.

Rules:
- Durability: every write is one LMDB transaction committed with fsync
  (``sync=True, metasync=True``). ``save(..., sync=False)`` is accepted and still
  syncs: durability is never traded away, so "synced writes survive" holds for all.
- ``save`` is one transaction: snapshot (replacing the log and the tables), then
  entries (truncating a conflicting suffix first), then hard state — one fsync per
  ``Ready``. ``apply`` writes state-machine rows and the applied index together.
- ``Snapshot.data`` here is always a table image from ``create_snapshot`` (framing in
  ``storage.image``), except ``b""`` for the initial snapshot at index 0. ``save`` /
  ``install_snapshot`` check the image (checksums, index/term against the meta)
  *before* writing, then replace log, tables and applied index in one transaction;
  anything else raises ``CorruptSnapshot`` and changes nothing.
- Corruption: every entry read from disk is decoded against its checksum
  (``CorruptEntry`` naming the index). Opening validates the schema version, the
  meta records, the stored snapshot, the first entry, the last
  ``open_verify_entries`` entries and the entry count, and raises rather than serve
  a damaged log. ``verify()`` walks everything.
- Threads: transactions never leave a method. Any thread may call any method; writes
  (``save``, ``set_snapshot``, ``compact``, ``apply``, ``install_snapshot``, output
  writes) are serialized — the node runs them in one worker thread
  (``trio.to_thread.run_sync``), the single writer — while reads run concurrently
  on their own consistent LMDB view. ``first_index``/``last_index``/``term`` of the
  recent tail are answered from an immutable in-memory ``LogView`` republished after
  each commit. Reads never wait for a write, except for the brief remap when the
  map grows; a long read (``create_snapshot``, ``verify``) never blocks a write.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import codec
from storage.config import StoreConfig
from storage.env import Env
from storage.errors import (
    Compacted,
    CorruptEntry,
    CorruptRecord,
    CorruptSnapshot,
    SchemaError,
    SchemaTooNew,
    Unavailable,
)
from storage.image import ImageHeader, check_image, encode_image, image_records
from storage.output import OutputStore
from storage.state import Write, check_write, put_writes, replace_tables, scan_table, table_records
from storage.tables import (
    DB_LOG,
    DB_META,
    DB_SNAPSHOT,
    META_APPLIED_INDEX,
    META_HARD_STATE,
    META_LOG_FLOOR,
    META_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SNAPSHOT_DATA,
    SNAPSHOT_META,
    Table,
    read_u64,
    u64,
)
from storage.view import LogView

if TYPE_CHECKING:
    from consensus.storage import LogStorage
    from storage.env import Db, Txn


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    first_index: int
    last_index: int
    applied_index: int
    snapshot_index: int
    commits: int
    map_grows: int
    map_bytes: int
    map_bytes_used: int


@dataclass(frozen=True, slots=True)
class _Loaded:
    view: LogView
    hard_state: HardState
    snapshot: Snapshot
    applied: int


class LmdbLogStorage:
    """The durable ``LogStorage`` of one node directory (see the module rules)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        initial_conf: ConfState | None = None,
    ) -> None:
        """Open (or create) the store in ``path``; ``initial_conf`` seeds a new store only.

        Raises ``StoreLocked``, ``SchemaTooNew``/``SchemaError``, ``CorruptEntry``,
        ``CorruptRecord`` or ``CorruptSnapshot`` instead of opening a store it cannot
        serve correctly.
        """
        self.config = config if config is not None else StoreConfig()
        self._env = Env(Path(path), self.config)
        try:
            self._log: Db = self._env.dbs[DB_LOG]
            self._meta: Db = self._env.dbs[DB_META]
            self._snap: Db = self._env.dbs[DB_SNAPSHOT]
            loaded = self._env.read(self._load)
            if loaded is None:
                self._env.write(lambda txn: self._initialize(txn, initial_conf or ConfState()))
                loaded = self._env.read(self._load)
                assert loaded is not None
        except BaseException:
            self._env.close()
            raise
        self._view = loaded.view
        self._hard = loaded.hard_state
        self._snapshot = loaded.snapshot
        self._applied = loaded.applied
        self.outputs = OutputStore(self._env)

    def close(self) -> None:
        """Close the environment and release the directory (idempotent)."""
        self._env.close()

    def __enter__(self) -> LmdbLogStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ log reads
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard, self._snapshot.meta.conf

    def first_index(self) -> int:
        return self._view.floor_index + 1

    def last_index(self) -> int:
        return self._view.last_index

    def term(self, index: int) -> int:
        """Term at ``index`` (``first_index()-1 .. last_index()``), from cache or disk."""
        view = self._view
        if index < view.floor_index:
            raise Compacted(f"index {index} is compacted (first {view.floor_index + 1})")
        if index > view.last_index:
            raise Unavailable(f"index {index} is beyond the last index {view.last_index}")
        cached = view.cached_term(index)
        if cached is not None:
            return cached
        return self._env.read(lambda txn: self._term_in(txn, index))

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at least one if the range is non-empty, within ``max_bytes``."""
        view = self._view
        if lo <= view.floor_index:
            raise Compacted(f"index {lo} is compacted (first {view.floor_index + 1})")
        if hi > view.last_index + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {view.last_index}")
        if lo >= hi:
            return []
        return self._env.read(lambda txn: self._range_in(txn, lo, hi, max_bytes))

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # =============================================================== log writes
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """One transaction, one fsync: snapshot, then entries, then hard state."""
        del sync  # every commit is synced (module rules)
        if hard_state is None and not entries and snapshot is None:
            return
        for a, b in itertools.pairwise(entries):
            assert b.index == a.index + 1, "entries must be contiguous"
        header = self._check_data(snapshot) if snapshot is not None else None
        encoded = [(u64(e.index), codec.encode_entry(e)) for e in entries]
        raw_hard = codec.encode_hard_state(hard_state) if hard_state is not None else None

        def body(txn: Txn) -> LogView:
            view = self._view
            if snapshot is not None:
                view = self._install_in(txn, view, snapshot, header)
            if entries:
                view = self._append_in(txn, view, entries, encoded)
            if raw_hard is not None:
                txn.put(META_HARD_STATE, raw_hard, db=self._meta)
            return view

        def publish(view: LogView) -> None:
            self._view = view
            if hard_state is not None:
                self._hard = hard_state
            if snapshot is not None:
                self._snapshot = snapshot
                self._applied = snapshot.meta.index

        self._env.write(body, publish)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """Replace log, state-machine tables and applied index by ``snapshot``, atomically."""
        self.save(None, (), snapshot)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot taken locally by ``create_snapshot`` (tables and log untouched)."""
        self._check_data(snapshot)
        meta = snapshot.meta

        def body(txn: Txn) -> None:
            assert meta.index >= self._snapshot.meta.index, "snapshot goes backwards"
            assert meta.index <= self._view.last_index, "snapshot beyond the log"
            assert meta.index <= self._applied, "snapshot of an unapplied index"
            if meta.index >= self._view.floor_index:
                assert self._term_in(txn, meta.index) == meta.term, "snapshot term differs"
            self._put_snapshot(txn, snapshot)

        self._env.write(body, lambda _: setattr(self, "_snapshot", snapshot))

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (covered by the snapshot)."""

        def body(txn: Txn) -> LogView:
            view = self._view
            if index <= view.floor_index:
                return view
            assert index <= view.last_index, f"compact {index} beyond last {view.last_index}"
            assert index <= self._snapshot.meta.index, "compact only what a snapshot covers"
            term = self._term_in(txn, index)
            cursor = txn.cursor(db=self._log)
            cursor.first()
            while cursor.key() and read_u64(cursor.key()) <= index:
                cursor.delete()
            txn.put(META_LOG_FLOOR, codec.encode_pair(index, term), db=self._meta)
            return view.compacted(index, term)

        self._env.write(body, lambda view: setattr(self, "_view", view))

    # ============================================================ state machine
    def applied_index(self) -> int:
        """Index of the last entry whose writes ``apply`` (or a snapshot) recorded."""
        return self._applied

    def apply(self, writes: Sequence[Write], applied_index: int) -> None:
        """Write state-machine rows (``value=None`` deletes) and the applied index, atomically."""
        assert len(writes) <= self.config.apply_writes_max, f"{len(writes)} writes in one apply"
        for w in writes:
            check_write(w)

        def body(txn: Txn) -> int:
            assert applied_index > self._applied, (
                f"applying {applied_index} again (applied {self._applied})"
            )
            assert applied_index <= self._view.last_index, "applying an entry not in the log"
            put_writes(txn, self._env.dbs, writes)
            txn.put(META_APPLIED_INDEX, codec.encode_nat(applied_index), db=self._meta)
            return applied_index

        self._env.write(body, lambda index: setattr(self, "_applied", index))

    def get(self, table: Table, key: bytes) -> bytes | None:
        """The value of ``key`` in ``table``, or None."""
        db = self._env.dbs[table.value]
        return self._env.read(lambda txn: txn.get(key, db=db))

    def scan(
        self,
        table: Table,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 1000,
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, value) pairs in key order with the given prefix, from
        ``start`` (inclusive) to ``end`` (exclusive). Continue a scan with
        ``start=tables.key_successor(last_key)``."""
        assert 0 < limit <= self.config.scan_items_max, f"limit {limit} out of bounds"
        db = self._env.dbs[table.value]
        return self._env.read(lambda txn: scan_table(txn, db, prefix, start, end, limit))

    def create_snapshot(self, index: int, term: int, conf: ConfState) -> Snapshot:
        """A consistent image of the tables at ``index`` (must be the applied index)."""

        def body(txn: Txn) -> bytes:
            applied = self._applied_in(txn)
            assert index == applied, f"snapshot at {index} but the tables are at {applied}"
            if index > 0:
                assert self._term_in(txn, index) == term, f"term {term} is not the term of {index}"
            return encode_image(index, term, table_records(txn, self._env.dbs))

        return Snapshot(SnapshotMeta(index, term, conf), self._env.read(body))

    # ================================================================== checks
    def verify(self) -> int:
        """Check every stored record (one read transaction); returns the entries checked.

        Raises ``CorruptEntry`` (naming the index), ``CorruptRecord`` or
        ``CorruptSnapshot`` at the first problem found.
        """
        return self._env.read(self._verify_in)

    def statistics(self) -> StoreStatistics:
        view = self._view
        map_bytes, used = self._env.map_bytes()
        return StoreStatistics(
            first_index=view.floor_index + 1,
            last_index=view.last_index,
            applied_index=self._applied,
            snapshot_index=self._snapshot.meta.index,
            commits=self._env.commits,
            map_grows=self._env.map_grows,
            map_bytes=map_bytes,
            map_bytes_used=used,
        )

    # =========================================================== transactions
    def _need(self, txn: Txn, db: Db, key: bytes, what: str) -> bytes:
        raw = txn.get(key, db=db)
        if raw is None:
            raise CorruptRecord(what, "missing")
        return raw

    def _floor_in(self, txn: Txn) -> tuple[int, int]:
        return codec.decode_pair(
            self._need(txn, self._meta, META_LOG_FLOOR, "log floor"), "log floor"
        )

    def _applied_in(self, txn: Txn) -> int:
        raw = self._need(txn, self._meta, META_APPLIED_INDEX, "applied index")
        return codec.decode_nat(raw, "applied index")

    def _last_in(self, txn: Txn, floor_index: int) -> int:
        cursor = txn.cursor(db=self._log)
        return read_u64(cursor.key()) if cursor.last() else floor_index

    def _missing(self, txn: Txn, index: int) -> NoReturn:
        """Explain, within ``txn``, why ``index`` is not in the log."""
        floor_index, _ = self._floor_in(txn)
        if index <= floor_index:
            raise Compacted(f"index {index} is compacted (first {floor_index + 1})")
        last = self._last_in(txn, floor_index)
        if index > last:
            raise Unavailable(f"index {index} is beyond the last index {last}")
        raise CorruptEntry(index, "missing from the log")

    def _term_in(self, txn: Txn, index: int) -> int:
        floor_index, floor_term = self._floor_in(txn)
        if index == floor_index:
            return floor_term
        raw = txn.get(u64(index), db=self._log)
        if raw is None:
            self._missing(txn, index)
        return codec.decode_entry(index, raw).term

    def _range_in(self, txn: Txn, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        total = 0
        cursor = txn.cursor(db=self._log)
        if cursor.set_range(u64(lo)):
            for key, value in cursor.iternext():
                index = read_u64(key)
                if index >= hi:
                    break
                if index != lo + len(out):
                    self._missing(txn, lo + len(out))
                entry = codec.decode_entry(index, value)
                total += entry.size()
                if max_bytes is not None and total > max_bytes and out:
                    return out  # the same rule as consensus.storage.limit_size
                out.append(entry)
        if lo + len(out) < hi:
            self._missing(txn, lo + len(out))
        return out

    def _append_in(
        self,
        txn: Txn,
        view: LogView,
        entries: Sequence[Entry],
        encoded: list[tuple[bytes, bytes]],
    ) -> LogView:
        after = view.appended(entries, self.config.term_runs_cached_max)  # asserts: no gap
        first = entries[0].index
        cursor = txn.cursor(db=self._log)
        if first <= view.last_index:
            assert first > self._applied, f"truncating at {first} below applied {self._applied}"
            removed = 0
            if cursor.set_key(u64(first)):
                while cursor.delete():
                    removed += 1
            if removed != view.last_index - first + 1:
                raise CorruptEntry(first, f"truncated {removed} entries from {first}")
        _, added = cursor.putmulti(encoded, append=True)
        assert added == len(encoded), "entries not appended at the end of the log"
        return after

    def _check_data(self, snapshot: Snapshot) -> ImageHeader | None:
        """The image header of ``snapshot.data``; None for the empty initial snapshot."""
        if snapshot.meta.index == 0 and not snapshot.data:
            return None
        return check_image(snapshot.data, snapshot.meta)

    def _put_snapshot(self, txn: Txn, snapshot: Snapshot) -> None:
        data = snapshot.data
        raw = codec.encode_snapshot_meta(snapshot.meta, len(data), zlib.crc32(data))
        txn.put(SNAPSHOT_META, raw, db=self._snap)
        txn.put(SNAPSHOT_DATA, data, db=self._snap)

    def _install_in(
        self, txn: Txn, view: LogView, snapshot: Snapshot, header: ImageHeader | None
    ) -> LogView:
        meta = snapshot.meta
        assert header is not None and meta.index > view.floor_index, "snapshot older than the log"
        assert meta.index >= self._applied, "a snapshot may not take the tables backwards"
        txn.drop(self._log, delete=False)
        txn.put(META_LOG_FLOOR, codec.encode_pair(meta.index, meta.term), db=self._meta)
        self._put_snapshot(txn, snapshot)
        replace_tables(txn, self._env.dbs, image_records(snapshot.data, header))
        txn.put(META_APPLIED_INDEX, codec.encode_nat(meta.index), db=self._meta)
        return LogView.at(meta.index, meta.term)

    # ============================================================ open / verify
    def _initialize(self, txn: Txn, conf: ConfState) -> None:
        put = txn.put
        put(META_SCHEMA_VERSION, codec.encode_nat(SCHEMA_VERSION), db=self._meta)
        put(META_HARD_STATE, codec.encode_hard_state(HardState()), db=self._meta)
        put(META_LOG_FLOOR, codec.encode_pair(0, 0), db=self._meta)
        put(META_APPLIED_INDEX, codec.encode_nat(0), db=self._meta)
        self._put_snapshot(txn, Snapshot(SnapshotMeta(0, 0, conf), b""))

    def _load(self, txn: Txn) -> _Loaded | None:
        """Read and validate everything but the middle of the log; None for a new store."""
        raw_version = txn.get(META_SCHEMA_VERSION, db=self._meta)
        if raw_version is None:
            if any(txn.stat(db)["entries"] for db in self._env.dbs.values()):
                raise SchemaError(f"{self._env.path} holds data but no schema version")
            return None
        version = codec.decode_nat(raw_version, "schema version")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            raise SchemaError(f"no migration from schema version {version} to {SCHEMA_VERSION}")
        hard = codec.decode_hard_state(self._need(txn, self._meta, META_HARD_STATE, "hard state"))
        floor_index, floor_term = self._floor_in(txn)
        applied = self._applied_in(txn)
        snapshot = self._read_snapshot(txn)
        view = self._check_log_ends(txn, floor_index, floor_term)
        if not floor_index <= snapshot.meta.index <= max(applied, floor_index):
            raise CorruptRecord("snapshot metadata", f"index {snapshot.meta.index} out of place")
        if hard.commit > view.last_index or applied > view.last_index:
            raise CorruptRecord(
                "hard state", f"commit {hard.commit} / applied {applied} beyond log"
            )
        return _Loaded(view, hard, snapshot, applied)

    def _read_snapshot(self, txn: Txn) -> Snapshot:
        raw = self._need(txn, self._snap, SNAPSHOT_META, "snapshot metadata")
        meta, size, crc = codec.decode_snapshot_meta(raw)
        data = self._need(txn, self._snap, SNAPSHOT_DATA, "snapshot data")
        if len(data) != size or zlib.crc32(data) != crc:
            raise CorruptSnapshot(f"stored snapshot data at index {meta.index} fails its checksum")
        snapshot = Snapshot(meta, data)
        self._check_data(snapshot)
        return snapshot

    def _check_log_ends(self, txn: Txn, floor_index: int, floor_term: int) -> LogView:
        """Validate the first entry, the tail and the entry count; the view they give."""
        cursor = txn.cursor(db=self._log)
        if not cursor.first():
            return LogView.at(floor_index, floor_term)
        first = read_u64(cursor.key())
        if first != floor_index + 1:
            raise CorruptEntry(floor_index + 1, f"missing: the log starts at {first}")
        head = codec.decode_entry(first, cursor.value())
        cursor.last()
        last = read_u64(cursor.key())
        if txn.stat(self._log)["entries"] != last - first + 1:
            raise CorruptEntry(first, f"entries missing between {first} and {last}")
        tail: list[Entry] = []
        for key, value in cursor.iterprev():
            tail.append(codec.decode_entry(read_u64(key), value))
            if len(tail) >= self.config.open_verify_entries or tail[-1].index == first:
                break
        tail.reverse()
        _check_terms([floor_term, head.term], first)
        _check_terms([head.term] + [e.term for e in tail], tail[0].index)
        base = LogView(floor_index, floor_term, tail[0].index - 1, ())
        return base.appended(tail, self.config.term_runs_cached_max)

    def _verify_in(self, txn: Txn) -> int:
        loaded = self._load(txn)
        if loaded is None:
            return 0
        view = loaded.view
        expected, term = view.floor_index + 1, view.floor_term
        cursor = txn.cursor(db=self._log)
        if cursor.first():
            for key, value in cursor.iternext():
                entry = codec.decode_entry(read_u64(key), value)
                if entry.index != expected:
                    raise CorruptEntry(expected, "missing from the log")
                if entry.term < term:
                    raise CorruptEntry(entry.index, f"term {entry.term} below {term} before it")
                expected, term = expected + 1, entry.term
        if expected != view.last_index + 1:
            raise CorruptEntry(expected, "missing from the log")
        for table in Table:  # every table row must be readable (LMDB page integrity)
            for _ in txn.cursor(db=self._env.dbs[table.value]).iternext(values=False):
                pass
        return expected - view.floor_index - 1


def _check_terms(terms: list[int], index: int) -> None:
    for a, b in itertools.pairwise(terms):
        if b < a:
            raise CorruptEntry(index, f"term {b} follows a later term {a}")


if TYPE_CHECKING:

    def _satisfies_the_protocol(store: LmdbLogStorage) -> LogStorage:
        return store  # mypy checks LmdbLogStorage against consensus.storage.LogStorage
