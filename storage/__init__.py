"""Rota's durable storage: one LMDB environment per node directory.

``LmdbLogStorage`` (``storage.log``) is the Raft log storage of
``consensus.storage.LogStorage`` plus the replicated state-machine tables, snapshot
images and node-local run output. Layout and key encodings are in
``storage.tables``; every bound is in ``storage.config.StoreConfig``; the error
hierarchy is drawn in ``storage.errors``.

Rules: storage imports only the standard library, ``consensus``, ``lmdb`` and
``msgpack``; transactions never leave this package.
"""

from storage.config import StoreConfig
from storage.errors import (
    CorruptRecord,
    CorruptSnapshot,
    SchemaError,
    SchemaTooNew,
    StorageFull,
    StoreError,
    StoreLocked,
)
from storage.image import SnapshotAssembler, SnapshotChunk, snapshot_chunks
from storage.log import LmdbLogStorage, StoreStatistics
from storage.output import OutputSlice, OutputStore, OutputSummary
from storage.state import Write
from storage.tables import Table

__all__ = [
    "CorruptRecord",
    "CorruptSnapshot",
    "LmdbLogStorage",
    "OutputSlice",
    "OutputStore",
    "OutputSummary",
    "SchemaError",
    "SchemaTooNew",
    "SnapshotAssembler",
    "SnapshotChunk",
    "StorageFull",
    "StoreConfig",
    "StoreError",
    "StoreLocked",
    "StoreStatistics",
    "Table",
    "Write",
    "snapshot_chunks",
]
