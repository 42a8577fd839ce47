"""The peer transport's moving parts below its policy: bounds, counters, queues, connections.

``node/transport.py`` decides who to dial, what a frame means and how RPCs are
matched; this module only moves bytes. A ``Connection`` is one authenticated
stream with two loops: the reader feeds a ``FrameDecoder`` and hands each frame
to the transport's ``dispatch``; the writer drains a ``SendQueue`` into one
``send_all`` per wakeup. Whichever loop ends first ends both, and ``run``
returns why.

Rules:
- Bounded: a queue in frames and bytes, a write batch in bytes, a write in time,
  a frame in bytes (checked on the length prefix, before the body is buffered).
- A peer's fault (bad bytes, a misdirected frame, a stalled write) ends the
  connection with ``Ended(protocol_error=True)``; an I/O failure or EOF ends it
  with ``protocol_error=False``. Neither is raised. Exceptions from ``dispatch``
  are bugs and propagate.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from consensus.types import NodeId
from node.wire import (
    MAX_FRAME_BYTES_DEFAULT,
    MAX_FRAME_BYTES_LIMIT,
    Frame,
    FrameDecoder,
    WireError,
)

RECEIVE_CHUNK_BYTES: Final = 64 << 10
IO_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Every bound of the transport, with its unit in its name."""

    max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT
    send_queue_frames_max: int = 4096  # per peer
    send_queue_bytes_max: int = 64 << 20  # per peer (and per inbound connection's responses)
    write_batch_bytes_max: int = 1 << 20
    inbound_connections_max: int = 256  # authenticated or still authenticating
    requests_outstanding_max: int = 1024  # this node waiting for answers, over all peers
    requests_serving_max: int = 64  # handlers running at once, per inbound connection
    connect_timeout_s: float = 5.0
    handshake_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    log_lines_per_s_max: float = 10.0  # about peers' connections and failures

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name}: must be positive")
        if not 64 <= self.max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
            raise ValueError(f"max_frame_bytes: must be in [64, {MAX_FRAME_BYTES_LIMIT}]")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s: must not exceed backoff_max_s")


@dataclass(slots=True)
class PeerCounters:
    """Monotonic counts for one peer (a statistics snapshot holds a copy)."""

    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0  # queue full, unencodable, or lost with a failed write
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0  # outbound connections established
    connect_failures: int = 0  # outbound attempts refused, timed out or not authenticated
    disconnects: int = 0  # established outbound connections that ended


class SendQueue:
    """Encoded frames waiting for a connection, bounded in frames and bytes.

    Each item carries the id of the request it holds (0 for other frames), so the
    transport knows which requests a lost connection had already sent."""

    def __init__(self, frames_max: int, bytes_max: int) -> None:
        self.frames_max, self.bytes_max = frames_max, bytes_max
        self.items: deque[tuple[bytes, int]] = deque()
        self.bytes = 0
        self._nonempty = trio.Event()

    def put(self, data: bytes, req_id: int = 0) -> bool:
        """Queue ``data``; False (and nothing queued) when either bound would be exceeded."""
        if len(self.items) >= self.frames_max or self.bytes + len(data) > self.bytes_max:
            return False
        self.items.append((data, req_id))
        self.bytes += len(data)
        self._nonempty.set()
        return True

    async def take_batch(self, bytes_max: int) -> list[tuple[bytes, int]]:
        """At least one item (waiting for it), then more while under ``bytes_max``."""
        while not self.items:
            if self._nonempty.is_set():
                self._nonempty = trio.Event()
            await self._nonempty.wait()
        batch: list[tuple[bytes, int]] = []
        size = 0
        while self.items and (not batch or size + len(self.items[0][0]) <= bytes_max):
            item = self.items.popleft()
            batch.append(item)
            size += len(item[0])
        self.bytes -= size
        return batch


@dataclass(frozen=True, slots=True)
class Ended:
    """Why a connection ended; ``protocol_error`` when the peer broke the protocol."""

    reason: str
    protocol_error: bool = False


# dispatch(conn, frame) acts on one inbound frame and returns a protocol problem or None.
Dispatch = Callable[["Connection", Frame], "str | None"]
# on_send(conn, req_ids) is told which requests a batch carries, just before it is written.
OnSend = Callable[["Connection", list[int]], None]


@dataclass(eq=False, slots=True)
class Connection:
    """One authenticated connection, in either direction (see the module doc)."""

    peer: NodeId
    outbound: bool  # we dialled it
    stream: trio.abc.Stream
    queue: SendQueue
    counters: PeerCounters  # shared with the peer's other connections
    where: str  # for logs: who and which address
    limits: TransportLimits
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    nursery: trio.Nursery | None = None  # while running: tasks that die with the connection
    sent_requests: set[int] = field(default_factory=set)  # owned by the transport
    serving: int = 0  # handlers running for requests that arrived here

    async def run(self, dispatch: Dispatch, on_send: OnSend) -> Ended:
        """Read and write until either side ends; why it ended."""
        ended: list[Ended] = []
        async with trio.open_nursery() as nursery:
            self.nursery = nursery

            async def until_done(loop: Callable[[], Awaitable[Ended]]) -> None:
                ended.append(await loop())
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_done, lambda: self._read_loop(dispatch))
            nursery.start_soon(until_done, lambda: self._write_loop(on_send))
        return ended[0]

    async def _read_loop(self, dispatch: Dispatch) -> Ended:
        decoder = FrameDecoder(self.limits.max_frame_bytes)
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_CHUNK_BYTES)
            except IO_ERRORS as e:
                return Ended(f"receive failed: {e!r}")
            if not data:
                return Ended("closed by the peer")
            self.counters.bytes_received += len(data)
            decoder.feed(data)
            try:
                while (frame := decoder.next_frame()) is not None:
                    self.counters.frames_received += 1
                    if (problem := dispatch(self, frame)) is not None:
                        return Ended(problem, protocol_error=True)
            except WireError as e:
                return Ended(f"malformed frame: {e}", protocol_error=True)

    async def _write_loop(self, on_send: OnSend) -> Ended:
        while True:
            batch = await self.queue.take_batch(self.limits.write_batch_bytes_max)
            on_send(self, [req_id for _, req_id in batch if req_id])
            data = b"".join(item for item, _ in batch)
            try:
                with trio.fail_after(self.limits.write_timeout_s):
                    await self.stream.send_all(data)
            except trio.TooSlowError:
                self.counters.frames_dropped += len(batch)
                return Ended("write stalled", protocol_error=True)
            except IO_ERRORS as e:
                self.counters.frames_dropped += len(batch)
                return Ended(f"send failed: {e!r}")
            self.counters.frames_sent += len(batch)
            self.counters.bytes_sent += len(data)
