"""Node-local run output: a bounded, chunked byte stream per run (never replicated).

Policy (the choices, and why):
- Rolling tail: each run keeps its last ``output_bytes_max_per_run`` bytes. The end
  of a run's output is what explains a failure, and the replicated run record's short
  tail comes from here. Offsets are absolute (byte ``n`` of everything the run ever
  wrote) and never move; ``first_offset > 0`` notes that the head was dropped, and a
  read below it starts at ``first_offset`` (the reply says where it started).
- Chunks of at most ``output_chunk_bytes_max`` keyed by (run id, start offset), so
  dropping the head deletes whole chunks and rewrites at most one.
- Retention: at most ``output_runs_max`` runs — appending to a new run evicts the
  least recently written one — and ``prune(now_ms)`` drops runs not written for
  ``output_age_ms_max``, at most ``output_prune_runs_max`` per call. Times are always
  passed in (``now_ms``); nothing here reads a clock.
- Every append is one synced transaction in the node's environment, serialized with
  the Raft writes: the node should buffer output and append it in batches (say every
  100 ms per run), not line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage import codec
from storage.errors import CorruptRecord
from storage.tables import (
    DB_OUTPUT,
    DB_OUTPUT_AGE,
    DB_OUTPUT_RUNS,
    SEP,
    id_bytes,
    read_u64,
    u64,
)

if TYPE_CHECKING:
    from storage.env import Env, Txn


@dataclass(frozen=True, slots=True)
class OutputSummary:
    size: int  # bytes the run ever wrote: the offset of the next byte
    first_offset: int  # first byte still stored; > 0 when the head was dropped
    updated_ms: int  # time of the last append

    def __post_init__(self) -> None:
        assert 0 <= self.first_offset <= self.size, self


@dataclass(frozen=True, slots=True)
class OutputSlice:
    """``data`` is bytes ``[offset, offset + len(data))`` of the run's output."""

    offset: int
    data: bytes
    size: int
    first_offset: int

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.data)


def _decode_summary(raw: bytes) -> OutputSummary:
    try:
        size, first, updated = (codec.nat(v) for v in codec.unpack_array(raw, 3))
        if first > size:
            raise codec.Malformed(f"first offset {first} beyond size {size}")
        return OutputSummary(size, first, updated)
    except codec.Malformed as exc:
        codec.corrupt("output summary", exc)


class OutputStore:
    """Run output in the node's environment (sub-databases ``output*``)."""

    def __init__(self, env: Env) -> None:
        self._env = env
        self.config = env.config
        self._chunks = env.dbs[DB_OUTPUT]
        self._runs = env.dbs[DB_OUTPUT_RUNS]
        self._age = env.dbs[DB_OUTPUT_AGE]

    # ------------------------------------------------------------------ writes
    def append(self, run_id: str, chunk: bytes, *, now_ms: int) -> int:
        """Append ``chunk`` to the run's output; returns the run's new size in bytes."""
        cfg = self.config
        assert len(chunk) <= cfg.output_append_bytes_max, f"append of {len(chunk)} bytes"
        assert now_ms >= 0
        run = id_bytes(run_id)

        def body(txn: Txn) -> int:
            old = self._summary_in(txn, run)
            if old is None:
                if txn.stat(self._runs)["entries"] >= cfg.output_runs_max:
                    self._evict_oldest(txn)
                old = OutputSummary(0, 0, now_ms)
            else:
                txn.delete(u64(old.updated_ms) + run, db=self._age)
            size = old.size + len(chunk)
            first = max(old.first_offset, size - cfg.output_bytes_max_per_run)
            kept = chunk[max(0, first - old.size) :]
            step = cfg.output_chunk_bytes_max
            for at in range(0, len(kept), step):
                offset = size - len(kept) + at
                txn.put(run + SEP + u64(offset), kept[at : at + step], db=self._chunks)
            self._drop_head(txn, run, first)
            summary = OutputSummary(size, first, now_ms)
            txn.put(run, codec.pack([size, first, now_ms]), db=self._runs)
            txn.put(u64(now_ms) + run, b"", db=self._age)
            return summary.size

        return self._env.write(body)

    def prune(self, now_ms: int) -> int:
        """Drop runs idle for ``output_age_ms_max`` (and any beyond ``output_runs_max``),
        at most ``output_prune_runs_max`` per call; returns how many were dropped."""
        cfg = self.config
        horizon = u64(max(0, now_ms - cfg.output_age_ms_max))

        def body(txn: Txn) -> int:
            excess = max(0, txn.stat(self._runs)["entries"] - cfg.output_runs_max)
            cursor = txn.cursor(db=self._age)
            victims: list[bytes] = []
            for key in cursor.iternext(values=False):
                if len(victims) >= cfg.output_prune_runs_max:
                    break
                if key[:8] >= horizon and len(victims) >= excess:
                    break
                victims.append(key)
            for key in victims:
                self._delete_run(txn, key[8:], read_u64(key))
            return len(victims)

        return self._env.write(body)

    def delete(self, run_id: str) -> bool:
        """Forget a run's output; False if there was none."""
        run = id_bytes(run_id)

        def body(txn: Txn) -> bool:
            summary = self._summary_in(txn, run)
            if summary is None:
                return False
            self._delete_run(txn, run, summary.updated_ms)
            return True

        return self._env.write(body)

    # ------------------------------------------------------------------- reads
    def summary(self, run_id: str) -> OutputSummary | None:
        run = id_bytes(run_id)
        return self._env.read(lambda txn: self._summary_in(txn, run))

    def read(self, run_id: str, offset: int, max_bytes: int) -> OutputSlice | None:
        """Up to ``max_bytes`` from ``offset`` (or from the first byte still stored);
        None if the run has no output."""
        assert 0 < max_bytes <= self.config.output_read_bytes_max, f"max_bytes {max_bytes}"
        assert offset >= 0
        run = id_bytes(run_id)
        return self._env.read(lambda txn: self._read_in(txn, run, offset, max_bytes))

    def tail(self, run_id: str, n_bytes: int) -> bytes:
        """The last ``n_bytes`` (at most) of the run's stored output; b"" if none."""
        assert 0 < n_bytes <= self.config.output_read_bytes_max, f"n_bytes {n_bytes}"
        run = id_bytes(run_id)

        def body(txn: Txn) -> bytes:
            summary = self._summary_in(txn, run)
            if summary is None:
                return b""
            start = max(summary.first_offset, summary.size - n_bytes)
            out = self._read_in(txn, run, start, n_bytes)
            return out.data if out is not None else b""

        return self._env.read(body)

    def run_count(self) -> int:
        return self._env.read(lambda txn: txn.stat(self._runs)["entries"])

    # ------------------------------------------------------------ transactions
    def _summary_in(self, txn: Txn, run: bytes) -> OutputSummary | None:
        raw = txn.get(run, db=self._runs)
        return None if raw is None else _decode_summary(raw)

    def _read_in(self, txn: Txn, run: bytes, offset: int, max_bytes: int) -> OutputSlice | None:
        summary = self._summary_in(txn, run)
        if summary is None:
            return None
        start = min(max(offset, summary.first_offset), summary.size)
        prefix = run + SEP
        cursor = txn.cursor(db=self._chunks)
        # The chunk holding ``start`` is the last one that begins at or before it.
        key = prefix + u64(start)
        if not cursor.set_range(key) or cursor.key() != key:
            stepped = cursor.prev() if cursor.key() else cursor.last()
            if not stepped or not cursor.key().startswith(prefix):
                cursor.set_range(key)
        parts: list[bytes] = []
        pos, want = start, min(max_bytes, summary.size - start)
        while want > 0 and cursor.key().startswith(prefix):
            at = read_u64(cursor.key(), len(prefix))
            value = cursor.value()
            if at > pos or at + len(value) <= pos:
                raise CorruptRecord("run output", f"{run!r}: no chunk holds byte {pos}")
            piece = value[pos - at : pos - at + want]
            parts.append(piece)
            pos, want = pos + len(piece), want - len(piece)
            if not cursor.next():
                break
        if want > 0:
            raise CorruptRecord("run output", f"{run!r}: output ends before byte {pos}")
        return OutputSlice(start, b"".join(parts), summary.size, summary.first_offset)

    def _drop_head(self, txn: Txn, run: bytes, first: int) -> None:
        """Delete stored bytes below offset ``first`` (whole chunks, then trim one)."""
        prefix = run + SEP
        cursor = txn.cursor(db=self._chunks)
        if not cursor.set_range(prefix):
            return
        while cursor.key().startswith(prefix):
            at = read_u64(cursor.key(), len(prefix))
            if at >= first:
                return
            value = cursor.value()
            cursor.delete()
            if at + len(value) > first:
                txn.put(prefix + u64(first), value[first - at :], db=self._chunks)
                return

    def _delete_run(self, txn: Txn, run: bytes, updated_ms: int) -> None:
        prefix = run + SEP
        cursor = txn.cursor(db=self._chunks)
        if cursor.set_range(prefix):
            while cursor.key().startswith(prefix) and cursor.delete():
                pass
        txn.delete(run, db=self._runs)
        txn.delete(u64(updated_ms) + run, db=self._age)

    def _evict_oldest(self, txn: Txn) -> None:
        cursor = txn.cursor(db=self._age)
        if cursor.first():
            key = cursor.key()
            self._delete_run(txn, key[8:], read_u64(key))
