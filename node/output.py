"""Run output as every node serves it: read from the node that holds it.

Output is node-local (``storage.output``): the node that executed a run keeps its
bytes; the replicated run record keeps only a short tail. Any node answers
``GET /api/v1/runs/{id}/output`` by looking up the run's node in its replica and
reading there: from its own store, or over the authenticated peer transport
(``output.read``).

Rules:
- Reads are bounded (``OUTPUT_READ_BYTES_MAX`` per call) and run in a worker thread
  (LMDB never blocks the event loop).
- ``done`` is decided by the holding node: the run has ended (in its replica) more
  than ``FLUSH_SETTLE_MS`` ago, so the output buffer's last flush has landed, and the
  read reached the end of what is stored.
- Wire form of ``output.read``: request ``[run_id, offset, max_bytes]``, reply
  ``[0, data, offset, first_offset, done]`` or ``[1, code, detail]`` (msgpack); a
  malformed request gets an error reply, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import trio

from node.model import TERMINAL_STATES
from node.scheduler import SchedulerStateMachine, now_ms
from node.service import Rpc
from storage.output import OutputSlice
from web.port import NotFound, OutputChunk, Unavailable

OUTPUT_READ_BYTES_MAX = 64 << 10
FLUSH_SETTLE_MS = 1500  # > the output buffer's flush interval (0.5 s) plus a write
REMOTE_READ_TIMEOUT_S = 5.0
RUN_ID_CHARS_MAX = 64


class RunOutputs:
    """Reads run output here or on the node that holds it (``SchedulerPort.read_output``)."""

    def __init__(
        self,
        node_id: str,
        sm: SchedulerStateMachine,
        read_local: Callable[[str, int, int], OutputSlice | None],
        rpc: Rpc,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.node_id = node_id
        self.sm = sm
        self._read_local = read_local
        self._rpc = rpc
        self._clock_ms = clock_ms
        rpc.on_request("output.read", self._serve)

    async def read(self, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        assert offset >= 0 and max_bytes >= 1, (offset, max_bytes)
        max_bytes = min(max_bytes, OUTPUT_READ_BYTES_MAX)
        run = self.sm.state.run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        if run.node is None:
            return OutputChunk(b"", offset, 0, run.state in TERMINAL_STATES, None)
        if run.node == self.node_id:
            return await self._local(run_id, offset, max_bytes)
        return await self._remote(run.node, run_id, offset, max_bytes)

    async def _local(self, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        piece = await trio.to_thread.run_sync(self._read_local, run_id, offset, max_bytes)
        run = self.sm.state.run(run_id)
        if run is None:  # deleted, or this replica has not heard of it yet
            raise NotFound(f"no run {run_id!r} on {self.node_id}")
        settled = (
            run.state in TERMINAL_STATES
            and self._clock_ms() - (run.finished_at or 0) > FLUSH_SETTLE_MS
        )
        if piece is None:
            return OutputChunk(b"", offset, 0, settled, self.node_id)
        done = settled and piece.next_offset >= piece.size
        return OutputChunk(piece.data, piece.offset, piece.first_offset, done, self.node_id)

    async def _remote(self, node: str, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        body = _pack([run_id, offset, max_bytes])
        try:
            raw = await self._rpc.request(node, "output.read", body, REMOTE_READ_TIMEOUT_S)
            reply = msgpack.unpackb(raw)
        except Exception as e:  # the transport's errors: unreachable, timeout, garbage
            detail = f"node {node}, which holds this run's output, did not answer: {e}"
            raise Unavailable(detail) from e
        match reply:
            case [0, bytes(data), int(start), int(first), bool(done)] if 0 <= first <= start:
                return OutputChunk(data, start, first, done, node)
            case [1, "not_found", str(detail)]:
                raise NotFound(detail)
            case _:
                raise Unavailable(f"node {node} answered an output read with something else")

    async def _serve(self, peer: str, raw: bytes) -> bytes:
        try:
            request = msgpack.unpackb(raw)
        except Exception:
            request = None
        match request:
            case [str(run_id), int(offset), int(max_bytes)] if (
                len(run_id) <= RUN_ID_CHARS_MAX and offset >= 0 and max_bytes >= 1
            ):
                pass
            case _:
                return _pack([1, "invalid", "expected [run_id, offset, max_bytes]"])
        try:
            chunk = await self._local(run_id, offset, min(max_bytes, OUTPUT_READ_BYTES_MAX))
        except NotFound as e:
            return _pack([1, "not_found", e.detail])
        return _pack([0, chunk.data, chunk.offset, chunk.first_offset, chunk.done])


def _pack(reply: list[object]) -> bytes:
    packed: bytes = msgpack.packb(reply)
    return packed
