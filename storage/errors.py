"""The typed errors of Rota's durable store, one hierarchy with the log-storage seam's.

Every error the store raises on purpose derives from ``consensus.storage.StorageError``,
so a caller that only knows the ``LogStorage`` Protocol can still catch them all. The
first three come from the seam (``consensus/storage.py``); the rest are the LMDB
store's own::

    StorageError                  (consensus.storage)
     ├── Compacted                the requested index lies below the first index
     ├── Unavailable              the requested index lies beyond the last index
     ├── CorruptEntry             a stored log entry fails its checksum (names the index)
     └── StoreError               the LMDB store's own failures
          ├── StorageFull         disk full, file too big, a short write (EIO), or the map
          │                       reached its maximum; the transaction was rolled back:
          │                       nothing half-written
          ├── StoreLocked         another process (or handle) holds the node directory
          ├── SchemaError         the directory was written by an incompatible schema
          │    └── SchemaTooNew   ... by a newer schema version than this code knows
          ├── CorruptRecord       a non-log record (hard state, snapshot metadata,
          │                       output index) fails to decode or breaks an invariant
          └── CorruptSnapshot     a snapshot image fails its framing, header or checksum

Rules: programming errors (a gap in appended entries, a key that is too long, a limit
out of its bound) are ``assert``-ed, not raised as these types: they are bugs, and the
process should crash on them. These types are operating conditions a caller handles.
"""

from __future__ import annotations

from consensus.storage import Compacted, CorruptEntry, StorageError, Unavailable

__all__ = [
    "Compacted",
    "CorruptEntry",
    "CorruptRecord",
    "CorruptSnapshot",
    "SchemaError",
    "SchemaTooNew",
    "StorageError",
    "StorageFull",
    "StoreError",
    "StoreLocked",
    "Unavailable",
]


class StoreError(StorageError):
    """Base of the errors specific to the LMDB store."""


class StorageFull(StoreError):
    """No room to commit: the disk is full, the file may not grow, or the map hit its
    configured maximum. The transaction was aborted; the store is unchanged."""


class StoreLocked(StoreError):
    """The node directory is already open (by another process or another handle)."""


class SchemaError(StoreError):
    """The directory's schema cannot be served by this code."""


class SchemaTooNew(SchemaError):
    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the store was written by schema version {found}; this code supports up to "
            f"{supported}: upgrade Rota before opening it"
        )
        self.found = found
        self.supported = supported


class CorruptRecord(StoreError):
    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"stored {what} is corrupt: {detail}")
        self.what = what


class CorruptSnapshot(StoreError):
    """A snapshot image is malformed or fails its checksum; nothing was installed."""
