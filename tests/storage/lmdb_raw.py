"""Test helpers: raw LMDB access to a closed store's directory (to damage it on purpose)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from storage.tables import ALL_DBS


@contextmanager
def raw_env(path: Path) -> Iterator[tuple[lmdb.Environment, dict[str, lmdb._Database]]]:
    env = lmdb.open(str(path), max_dbs=len(ALL_DBS), map_size=1 << 30)
    try:
        dbs = {name: env.open_db(name.encode()) for name in ALL_DBS}
        yield env, dbs
    finally:
        env.close()


def rewrite(path: Path, db: str, key: bytes, change: Callable[[bytes], bytes | None]) -> None:
    """Replace the value at ``key`` in sub-database ``db`` by ``change(value)`` (None deletes)."""
    with raw_env(path) as (env, dbs), env.begin(write=True) as txn:
        old = txn.get(key, db=dbs[db])
        assert old is not None, f"{db}:{key!r} is not stored"
        new = change(old)
        if new is None:
            txn.delete(key, db=dbs[db])
        else:
            txn.put(key, new, db=dbs[db])


def flip_byte(position: int) -> Callable[[bytes], bytes]:
    def change(value: bytes) -> bytes:
        b = bytearray(value)
        b[position % len(b)] ^= 0x5A
        return bytes(b)

    return change
