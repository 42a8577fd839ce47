"""Streaming a snapshot in bounded chunks, and reassembling it on the follower.

Rules: chunk ``k`` covers bytes ``[offset, offset + len(data))`` of the snapshot's
image; the last chunk carries ``done=True`` (an empty image is one empty, done
chunk). The receiver accepts chunks strictly in order and only for the snapshot it
is assembling (a chunk at offset 0 starts a new one); anything else is ignored
and the receiver's ``next_offset`` tells the sender where to resume.
"""

from __future__ import annotations

from consensus.types import InstallSnapshot, Snapshot, SnapshotMeta


def next_chunk(image: bytes, offset: int, chunk_bytes: int) -> tuple[bytes, bool]:
    """The chunk starting at ``offset`` and whether it is the last one."""
    assert 0 <= offset <= len(image) and chunk_bytes > 0
    data = image[offset : offset + chunk_bytes]
    return data, offset + len(data) >= len(image)


class SnapshotReceiver:
    """Holds at most one partially received snapshot."""

    def __init__(self) -> None:
        self.meta: SnapshotMeta | None = None
        self.buffer = bytearray()

    def clear(self) -> None:
        self.meta = None
        self.buffer = bytearray()

    def next_offset(self, meta: SnapshotMeta) -> int:
        return len(self.buffer) if meta == self.meta else 0

    def receive(self, m: InstallSnapshot) -> Snapshot | None:
        """Take one chunk; returns the whole snapshot when this chunk completes it."""
        if m.offset == 0 and m.meta != self.meta:
            self.meta = m.meta
            self.buffer = bytearray()
        if m.meta != self.meta or m.offset != len(self.buffer):
            return None  # out of order, duplicated, or from another snapshot
        self.buffer += m.data
        if not m.done:
            return None
        snap = Snapshot(m.meta, bytes(self.buffer))
        self.clear()
        return snap
