"""Snapshot images: the state-machine tables as one checksummed, streamable byte string.

For the LMDB store, ``Snapshot.data`` is exactly such an image (or ``b""`` for the
initial snapshot at index 0, which carries no state). Layout::

    offset 0        MAGIC  b"ROTASNAP"                          8 bytes
    8               header length H, big-endian u32             4 bytes
    12              header: msgpack [frame_version, schema_version, index, term,
                             [table names...], record_count, body_bytes, body_crc32]
    12 + H          CRC-32 of the header bytes, big-endian u32  4 bytes
    16 + H          body: record_count msgpack arrays [table_no, key, value]

Rules:
- Records come table by table in the header's order, keys strictly ascending within
  a table, so an installer can append them without sorting and a reader can check
  order as it goes.
- The header is complete after its first ``16 + H`` bytes, so a receiver rejects a
  wrong image (bad magic, newer schema, wrong index/term, oversize) from the first
  chunk, long before the whole body has arrived.
- Nothing from an image is trusted until the body's CRC matches: ``decode_image``
  checks it before yielding the first record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgpack

from consensus.snapshots import next_chunk
from consensus.types import Snapshot, SnapshotMeta
from storage.codec import Malformed, blob, nat, pack, text, unpack_array
from storage.errors import CorruptSnapshot, SchemaTooNew
from storage.tables import SCHEMA_VERSION, Table

MAGIC = b"ROTASNAP"
FRAME_VERSION = 1
_U32 = struct.Struct(">I")
_PREFIX_BYTES = len(MAGIC) + _U32.size
HEADER_BYTES_MAX = 64 << 10

Record = tuple[Table, bytes, bytes]


@dataclass(frozen=True, slots=True)
class ImageHeader:
    schema_version: int
    index: int
    term: int
    tables: tuple[Table, ...]
    record_count: int
    body_bytes: int
    body_crc: int
    header_bytes: int  # offset of the body within the image


def encode_image(index: int, term: int, records: Iterable[Record]) -> bytes:
    """The image of ``records`` (table by table in ``Table`` order, keys ascending)."""
    tables = tuple(Table)
    number = {t: i for i, t in enumerate(tables)}
    packer = msgpack.Packer(use_bin_type=True)
    body = bytearray()
    count = 0
    last: tuple[int, bytes] | None = None
    for table, key, value in records:
        here = (number[table], key)
        assert last is None or here > last, f"records out of order at {table.value}:{key!r}"
        last = here
        body += packer.pack([here[0], key, value])
        count += 1
    header = pack(
        [
            FRAME_VERSION,
            SCHEMA_VERSION,
            index,
            term,
            [t.value for t in tables],
            count,
            len(body),
            zlib.crc32(body),
        ]
    )
    assert len(header) <= HEADER_BYTES_MAX
    return b"".join(
        (MAGIC, _U32.pack(len(header)), header, _U32.pack(zlib.crc32(header)), bytes(body))
    )


def read_header(prefix: bytes) -> ImageHeader | None:
    """Parse the header from the first bytes of an image; None if more bytes are needed."""
    if len(prefix) < _PREFIX_BYTES:
        if not MAGIC.startswith(prefix[: len(MAGIC)]):
            raise CorruptSnapshot("not a snapshot image (bad magic)")
        return None
    if prefix[: len(MAGIC)] != MAGIC:
        raise CorruptSnapshot("not a snapshot image (bad magic)")
    (size,) = _U32.unpack_from(prefix, len(MAGIC))
    if size > HEADER_BYTES_MAX:
        raise CorruptSnapshot(f"header of {size} bytes exceeds {HEADER_BYTES_MAX}")
    end = _PREFIX_BYTES + size
    if len(prefix) < end + _U32.size:
        return None
    raw = prefix[_PREFIX_BYTES:end]
    if zlib.crc32(raw) != _U32.unpack_from(prefix, end)[0]:
        raise CorruptSnapshot("header checksum mismatch")
    try:
        frame, schema, index, term, names, count, body_bytes, body_crc = unpack_array(raw, 8)
        if nat(frame) != FRAME_VERSION:
            raise Malformed(f"unknown frame version {frame}")
        if not isinstance(names, list):
            raise Malformed("table list is not a list")
        header = ImageHeader(
            schema_version=nat(schema),
            index=nat(index),
            term=nat(term),
            tables=tuple(Table(text(n)) for n in names),
            record_count=nat(count),
            body_bytes=nat(body_bytes),
            body_crc=nat(body_crc),
            header_bytes=end + _U32.size,
        )
    except (Malformed, ValueError) as exc:
        raise CorruptSnapshot(f"bad header: {exc}") from None
    if header.schema_version > SCHEMA_VERSION:
        raise SchemaTooNew(header.schema_version, SCHEMA_VERSION)
    return header


def check_image(data: bytes, meta: SnapshotMeta) -> ImageHeader:
    """Validate framing, header and body checksum of ``data`` as the image of ``meta``."""
    header = read_header(data)
    if header is None:
        raise CorruptSnapshot(f"image truncated in its header ({len(data)} bytes)")
    if (header.index, header.term) != (meta.index, meta.term):
        raise CorruptSnapshot(
            f"image is of index {header.index} term {header.term}, "
            f"snapshot says index {meta.index} term {meta.term}"
        )
    body = memoryview(data)[header.header_bytes :]
    if len(body) != header.body_bytes:
        raise CorruptSnapshot(f"body is {len(body)} bytes, header says {header.body_bytes}")
    if zlib.crc32(body) != header.body_crc:
        raise CorruptSnapshot("body checksum mismatch")
    return header


def image_records(data: bytes, header: ImageHeader) -> Iterator[Record]:
    """The records of an image already passed through ``check_image``."""
    unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=len(data) + 1)
    unpacker.feed(memoryview(data)[header.header_bytes :])
    last: tuple[int, bytes] | None = None
    count = 0
    for obj in unpacker:
        try:
            if not isinstance(obj, list) or len(obj) != 3:
                raise Malformed("record is not a [table, key, value] array")
            number, key, value = nat(obj[0]), blob(obj[1]), blob(obj[2])
            if number >= len(header.tables) or not key or (last and (number, key) <= last):
                raise Malformed(f"record {count} is out of order or names no table")
        except Malformed as exc:
            raise CorruptSnapshot(str(exc)) from None
        last = (number, key)
        count += 1
        yield header.tables[number], key, value
    if count != header.record_count:
        raise CorruptSnapshot(f"image holds {count} records, header says {header.record_count}")


# ------------------------------------------------------------------ streaming


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Bytes ``[offset, offset + len(data))`` of a snapshot's image."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


def snapshot_chunks(snapshot: Snapshot, chunk_bytes: int) -> Iterator[SnapshotChunk]:
    """The image in order, in chunks of at most ``chunk_bytes`` (the last one ``done``)."""
    offset = 0
    while True:
        data, done = next_chunk(snapshot.data, offset, chunk_bytes)
        yield SnapshotChunk(snapshot.meta, offset, data, done)
        if done:
            return
        offset += len(data)


class SnapshotAssembler:
    """Rebuilds a snapshot from ``snapshot_chunks``, validating as early as it can.

    Chunks must arrive in order, for one snapshot. The header is checked as soon as it
    is complete (magic, schema, index/term against ``meta``, size bound); the body's
    checksum when the last chunk arrives. Any violation raises ``CorruptSnapshot``.
    """

    def __init__(self, meta: SnapshotMeta, image_bytes_max: int) -> None:
        assert image_bytes_max > 0
        self.meta = meta
        self.image_bytes_max = image_bytes_max
        self._buffer = bytearray()
        self._header: ImageHeader | None = None

    def next_offset(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: SnapshotChunk) -> Snapshot | None:
        """Take the next chunk; returns the validated snapshot once ``done``."""
        if chunk.meta != self.meta:
            raise CorruptSnapshot(f"chunk of another snapshot ({chunk.meta.index})")
        if chunk.offset != len(self._buffer):
            raise CorruptSnapshot(f"chunk at {chunk.offset}, expected {len(self._buffer)}")
        if len(self._buffer) + len(chunk.data) > self.image_bytes_max:
            raise CorruptSnapshot(f"image exceeds {self.image_bytes_max} bytes")
        self._buffer += chunk.data
        if self._header is None:
            self._header = read_header(bytes(self._buffer[: _PREFIX_BYTES + HEADER_BYTES_MAX]))
            if self._header is not None:
                self._check_header(self._header)
        if not chunk.done:
            return None
        data = bytes(self._buffer)
        check_image(data, self.meta)
        return Snapshot(self.meta, data)

    def _check_header(self, header: ImageHeader) -> None:
        if (header.index, header.term) != (self.meta.index, self.meta.term):
            raise CorruptSnapshot(f"image of index {header.index}, expected {self.meta.index}")
        if header.header_bytes + header.body_bytes > self.image_bytes_max:
            raise CorruptSnapshot(f"image of {header.body_bytes} bytes exceeds the bound")
