"""The one LMDB environment of a node directory, and the only place transactions live.

Rules:
- Opened once per directory with ``sync=True, metasync=True``: a commit is durable
  when it returns. A second opener (another process, or another handle in this one)
  is refused with ``StoreLocked`` through an ``flock`` on ``rota.lock``.
- Callers never hold a transaction: they pass a function to ``read`` or ``write``,
  which opens the transaction, runs it, and ends it before returning. A write
  function may be run more than once (after the map grows), so it must have no
  effect outside the transaction; state derived from a write is published by the
  ``then`` callback, which runs after the commit while writers are still excluded.
- Threads: writes are serialized by a lock (one writer at a time, whichever thread).
  Reads run concurrently with each other and with a write (LMDB's MVCC). Growing the
  map needs no transaction open anywhere in the process, so a grow waits for running
  reads to finish and holds new ones back (``_Gate``).
- Map full: the transaction is aborted, the map doubles (up to
  ``map_bytes_max``) and the whole transaction is retried. Disk full (ENOSPC,
  EDQUOT, EFBIG, and EIO, which LMDB reports for a short write) or a map at its
  maximum raise ``StorageFull``; the aborted transaction left nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import lmdb

from storage.config import StoreConfig
from storage.errors import StorageFull, StoreLocked
from storage.tables import ALL_DBS

if TYPE_CHECKING:
    Txn: TypeAlias = lmdb.Transaction[bytes]
    Db: TypeAlias = lmdb._Database

T = TypeVar("T")

LOCK_FILE = "rota.lock"
# LMDB turns a short write (what a full disk usually produces) into EIO.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means "no room on the disk / in the file" (not a full map)."""
    if isinstance(exc, lmdb.DiskError):
        return True
    if isinstance(exc, lmdb.Error):
        return getattr(exc, "code", None) in _FULL_ERRNOS
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


class _Gate:
    """Shared for reads, exclusive for remapping: a tiny readers-writer lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _lock_directory(path: Path) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{path} is already open (another process or handle)") from None
    return fd


class Env:
    """An open node directory: named sub-databases, reads, retried writes."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.config = config
        self.map_grows = 0
        self.commits = 0
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        self._lock_fd = _lock_directory(path)
        try:
            self._env = lmdb.open(
                str(path),
                map_size=config.map_bytes_initial,
                max_dbs=len(ALL_DBS),
                sync=True,
                metasync=True,
                subdir=True,
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False
        try:
            self.dbs: dict[str, Db] = self.write(self._open_dbs)
        except BaseException:
            self.close()
            raise

    def _open_dbs(self, txn: Txn) -> dict[str, Db]:
        return {name: self._env.open_db(name.encode(), txn=txn) for name in ALL_DBS}

    # ------------------------------------------------------------------ access
    def read(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in a read transaction (a consistent view) and end it."""
        assert not self._closed, "store is closed"
        with self._gate.shared(), self._env.begin() as txn:
            return fn(txn)

    def write(self, fn: Callable[[Txn], T], then: Callable[[T], None] | None = None) -> T:
        """Run ``fn`` in one write transaction and commit it (one fsync).

        Retries the whole of ``fn`` after growing a full map; raises ``StorageFull``
        when the disk or the map maximum leaves no room. ``then(result)`` runs after
        the commit, before the next writer may start.
        """
        with self._write_lock:
            assert not self._closed, "store is closed"
            while True:
                txn = self._env.begin(write=True)
                try:
                    result = fn(txn)
                    txn.commit()
                except lmdb.MapFullError:
                    txn.abort()
                    self._grow()
                    continue
                except BaseException as exc:
                    txn.abort()
                    if is_disk_full(exc):
                        raise StorageFull(f"no room to commit in {self.path}: {exc}") from exc
                    raise
                self.commits += 1
                if then is not None:
                    then(result)
                return result

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        if current >= self.config.map_bytes_max:
            raise StorageFull(
                f"map of {self.path} is at its maximum ({self.config.map_bytes_max} bytes)"
            )
        with self._gate.exclusive():
            self._env.set_mapsize(min(self.config.map_bytes_max, current * 2))
        self.map_grows += 1

    # ------------------------------------------------------------------ admin
    def map_bytes(self) -> tuple[int, int]:
        """(map size, bytes in use) of the environment."""
        info = self._env.info()
        return info["map_size"], (info["last_pgno"] + 1) * self._env.stat()["psize"]

    def close(self) -> None:
        """Close the environment and release the directory (idempotent)."""
        with self._write_lock, self._gate.exclusive():
            if self._closed:
                return
            self._closed = True
            self._env.close()
            os.close(self._lock_fd)
