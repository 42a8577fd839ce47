"""The on-disk layout: sub-database names, the schema version, and key encodings.

One LMDB environment per node directory holds these named sub-databases:

==============  =============================================  ===========================
sub-database    key                                            value
==============  =============================================  ===========================
``log``         u64 index                                      msgpack ``[term, type,
                                                               data, crc32]``
``meta``        ``schema_version`` / ``hard_state`` /          msgpack (see ``storage.log``)
                ``log_floor`` / ``applied_index``
``snapshot``    ``meta`` / ``data``                            msgpack meta / image bytes
``jobs``        job id                                         job record (opaque bytes)
``runs``        run id                                         run record (opaque bytes)
``fires``       job id, NUL, u64 scheduled_at ms               run id: at most one Fire
                                                               per (job, slot)
``next_fire``   u64 epoch ms, job id                           empty (an index)
``queue``       node id, NUL, u32 inverted priority,           empty (an index)
                u64 queued_at ms, run id
``output``      run id, NUL, u64 byte offset                   a chunk of run output
``output_runs`` run id                                         msgpack output summary
``output_age``  u64 last-write ms, run id                      empty (retention index)
==============  =============================================  ===========================

Rules:
- Integers in keys are big-endian and unsigned, so byte order is numeric order.
- Ids (job, run, node) are non-empty UTF-8 strings without NUL; where an id is
  followed by more key material, a NUL separates them so a prefix scan by id never
  matches a longer id that merely starts with it.
- The state-machine tables (``Table``) are replicated: their content is a function of
  the applied log and is what a snapshot image carries. ``log``, ``meta``,
  ``snapshot`` and the ``output*`` sub-databases are node-local.
- Changing any layout here bumps ``SCHEMA_VERSION``; a store written by a newer
  version refuses to open (``SchemaTooNew``).
"""

from __future__ import annotations

import enum
import struct

SCHEMA_VERSION = 1
KEY_BYTES_MAX = 511  # LMDB's compiled-in maximum key size
PRIORITY_MAX = 0xFFFF_FFFF
U64_MAX = (1 << 64) - 1

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
SEP = b"\x00"


class Table(enum.Enum):
    """The replicated state-machine tables, in snapshot order."""

    JOBS = "jobs"
    RUNS = "runs"
    FIRES = "fires"
    NEXT_FIRE = "next_fire"
    QUEUE = "queue"


# Node-local sub-databases (never in a snapshot).
DB_LOG = "log"
DB_META = "meta"
DB_SNAPSHOT = "snapshot"
DB_OUTPUT = "output"
DB_OUTPUT_RUNS = "output_runs"
DB_OUTPUT_AGE = "output_age"
LOCAL_DBS = (DB_LOG, DB_META, DB_SNAPSHOT, DB_OUTPUT, DB_OUTPUT_RUNS, DB_OUTPUT_AGE)
ALL_DBS = LOCAL_DBS + tuple(t.value for t in Table)

# Keys of the ``meta`` sub-database.
META_SCHEMA_VERSION = b"schema_version"
META_HARD_STATE = b"hard_state"
META_LOG_FLOOR = b"log_floor"
META_APPLIED_INDEX = b"applied_index"
# Keys of the ``snapshot`` sub-database.
SNAPSHOT_META = b"meta"
SNAPSHOT_DATA = b"data"


# ------------------------------------------------------------------ integers


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    """Big-endian u64: the byte order of these keys is their numeric order."""
    return _U64.pack(n)


def read_u64(b: bytes, offset: int = 0) -> int:
    value: int = _U64.unpack_from(b, offset)[0]
    return value


def key_successor(key: bytes) -> bytes:
    """The smallest key greater than ``key``: continue a scan after its last item."""
    return key + SEP


# ----------------------------------------------------------------------- ids


def id_bytes(ident: str) -> bytes:
    raw = ident.encode()
    assert raw and SEP not in raw, f"ids are non-empty and NUL-free: {ident!r}"
    return raw


def _check(key: bytes) -> bytes:
    assert len(key) <= KEY_BYTES_MAX, f"key of {len(key)} bytes exceeds {KEY_BYTES_MAX}"
    return key


def job_key(job_id: str) -> bytes:
    """``jobs``: job id → job record."""
    return _check(id_bytes(job_id))


def run_key(run_id: str) -> bytes:
    """``runs``: run id → run record."""
    return _check(id_bytes(run_id))


def fire_prefix(job_id: str) -> bytes:
    """Every ``fires`` key of one job starts with this."""
    return id_bytes(job_id) + SEP


def fire_key(job_id: str, scheduled_at_ms: int) -> bytes:
    """``fires``: (job, slot) → run id. Its presence means the slot already fired."""
    return _check(fire_prefix(job_id) + u64(scheduled_at_ms))


def decode_fire_key(key: bytes) -> tuple[str, int]:
    job, sep, at = key.partition(SEP)  # ids hold no NUL, so the first NUL separates
    assert sep == SEP and len(at) == 8, f"not a fires key: {key!r}"
    return job.decode(), read_u64(at)


def next_fire_key(at_ms: int, job_id: str) -> bytes:
    """``next_fire``: due time then job id, so a scan from the start yields due jobs first."""
    return _check(u64(at_ms) + id_bytes(job_id))


def next_fire_until(at_ms: int) -> bytes:
    """Exclusive scan end selecting every ``next_fire`` key due at or before ``at_ms``."""
    return u64(at_ms + 1)


def decode_next_fire_key(key: bytes) -> tuple[int, str]:
    assert len(key) > 8, f"not a next_fire key: {key!r}"
    return read_u64(key), key[8:].decode()


def queue_prefix(node_id: str) -> bytes:
    """Every ``queue`` key of one node starts with this."""
    return id_bytes(node_id) + SEP


def queue_key(node_id: str, priority: int, queued_at_ms: int, run_id: str) -> bytes:
    """``queue``: per node, highest priority first, then oldest first, then run id."""
    assert 0 <= priority <= PRIORITY_MAX, f"priority {priority} outside [0, {PRIORITY_MAX}]"
    inverted = PRIORITY_MAX - priority
    return _check(queue_prefix(node_id) + u32(inverted) + u64(queued_at_ms) + id_bytes(run_id))


def decode_queue_key(key: bytes) -> tuple[str, int, int, str]:
    """(node id, priority, queued_at ms, run id) of a ``queue`` key."""
    node, sep, rest = key.partition(SEP)
    assert sep == SEP and len(rest) > 12, f"not a queue key: {key!r}"
    priority = PRIORITY_MAX - _U32.unpack_from(rest)[0]
    return node.decode(), priority, read_u64(rest, 4), rest[12:].decode()
