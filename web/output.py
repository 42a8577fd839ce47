"""``GET /api/v1/runs/{id}/output``: a run's output as ``text/plain``, read through
``SchedulerPort.read_output`` from the node that holds it.

Rules: ``offset`` (default 0) is a byte offset; with ``follow`` (default ``true``)
the body streams until the holder says the run has ended, polling every
``OUTPUT_POLL_S`` while nothing new is there, for at most ``OUTPUT_STREAM_S_MAX``
(a follower reconnects at its offset after that) and never past the server's
shutdown. Headers say where the body starts (``Rota-Output-Offset``: past a dropped
head) and which node holds the output. Errors before the first byte are the port's
(``NotFound``, ``Unavailable``: problem+json); a holder lost mid-stream ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import trio
from quart import Response

from web.port import OutputChunk, PortError, SchedulerPort
from web.problems import invalid_field

OUTPUT_CHUNK_BYTES = 64 << 10
OUTPUT_POLL_S = 0.5
OUTPUT_STREAM_S_MAX = 3600.0
OFFSET_DIGITS_MAX = 15


async def output_response(
    scheduler: SchedulerPort, run_id: str, args: Mapping[str, str], stopping: trio.Event
) -> Response:
    offset_text = args.get("offset", "0")
    if not offset_text.isdigit() or len(offset_text) > OFFSET_DIGITS_MAX:
        raise invalid_field("offset", f"must be a byte offset (0 or more), got {offset_text!r:.40}")
    follow = args.get("follow", "true")
    if follow not in ("true", "false"):
        raise invalid_field("follow", "must be 'true' or 'false'")
    first = await scheduler.read_output(run_id, int(offset_text), OUTPUT_CHUNK_BYTES)
    headers = {
        "Rota-Output-Offset": str(first.offset),
        "Rota-Output-Node": first.node or "",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    body = _body(scheduler, run_id, first, follow == "true", stopping)
    response = Response(body, content_type="text/plain; charset=utf-8", headers=headers)
    response.timeout = None  # streams while the run runs (Quart's default cuts at 60 s)
    return response


async def _body(
    scheduler: SchedulerPort, run_id: str, chunk: OutputChunk, follow: bool, stopping: trio.Event
) -> AsyncIterator[bytes]:
    deadline = trio.current_time() + OUTPUT_STREAM_S_MAX
    while True:
        if chunk.data:
            yield chunk.data
        elif chunk.done or not follow or stopping.is_set() or trio.current_time() >= deadline:
            return
        else:
            with trio.move_on_after(OUTPUT_POLL_S):
                await stopping.wait()
        if chunk.done:
            return
        try:
            chunk = await scheduler.read_output(run_id, chunk.next_offset, OUTPUT_CHUNK_BYTES)
        except PortError:
            return  # the holder went away mid-stream: the client resumes at its offset
