"""Transaction-level operations on the state-machine tables (used by ``storage.log``).

Rules:
- Each function takes an open transaction from ``Env.read``/``Env.write`` and does
  not keep it: these are the bodies of the store's methods, never called from outside
  ``storage/``.
- A write is ``(table, key, value)``; ``value=None`` deletes the key (absent is fine).
- Scans are ordered by key and bounded by their caller's ``limit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from storage.image import Record
from storage.tables import KEY_BYTES_MAX, Table

if TYPE_CHECKING:
    from storage.env import Db, Txn

Write = tuple[Table, bytes, bytes | None]
_BATCH_RECORDS = 4096  # records handed to LMDB per putmulti call while loading


def check_write(write: Write) -> None:
    table, key, value = write
    assert isinstance(table, Table), f"not a table: {table!r}"
    assert 0 < len(key) <= KEY_BYTES_MAX, f"key of {len(key)} bytes outside [1, {KEY_BYTES_MAX}]"
    assert value is None or isinstance(value, bytes), f"value must be bytes or None: {value!r}"


def put_writes(txn: Txn, dbs: Mapping[str, Db], writes: Iterable[Write]) -> None:
    for table, key, value in writes:
        db = dbs[table.value]
        if value is None:
            txn.delete(key, db=db)
        else:
            txn.put(key, value, db=db)


def scan_table(
    txn: Txn,
    db: Db,
    prefix: bytes,
    start: bytes | None,
    end: bytes | None,
    limit: int,
) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` items with ``key.startswith(prefix)`` and ``start <= key < end``."""
    lo = prefix if start is None or start < prefix else start
    out: list[tuple[bytes, bytes]] = []
    cursor = txn.cursor(db=db)
    if not cursor.set_range(lo):
        return out
    for key, value in cursor.iternext():
        if not key.startswith(prefix) or (end is not None and key >= end):
            break
        out.append((key, value))
        if len(out) >= limit:
            break
    return out


def table_records(txn: Txn, dbs: Mapping[str, Db]) -> Iterator[Record]:
    """Every record of every table, in snapshot order (``Table`` order, then key)."""
    for table in Table:
        cursor = txn.cursor(db=dbs[table.value])
        if cursor.first():
            for key, value in cursor.iternext():
                yield table, key, value


def replace_tables(txn: Txn, dbs: Mapping[str, Db], records: Iterable[Record]) -> int:
    """Empty every table, then load ``records`` (sorted per table); returns the count."""
    for table in Table:
        txn.drop(dbs[table.value], delete=False)
    count = 0
    current: Table | None = None
    batch: list[tuple[bytes, bytes]] = []
    for table, key, value in records:
        if table is not current:
            count += _append_sorted(txn, dbs, current, batch)
            current, batch = table, []
        batch.append((key, value))
        if len(batch) >= _BATCH_RECORDS:
            count += _append_sorted(txn, dbs, current, batch)
            batch = []
    count += _append_sorted(txn, dbs, current, batch)
    return count


def _append_sorted(
    txn: Txn, dbs: Mapping[str, Db], table: Table | None, batch: Sequence[tuple[bytes, bytes]]
) -> int:
    if table is None or not batch:
        return 0
    _, added = txn.cursor(db=dbs[table.value]).putmulti(batch, append=True)
    assert added == len(batch), f"{table.value}: records not in ascending key order"
    return added
