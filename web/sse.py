"""Server-Sent Events for ``GET /api/v1/events``: the wire format, the stream caps and
the response body that relays an ``EventsPort`` subscription.

Rules:
- Events: ``event: cluster`` (a ``ClusterSnapshot``: the ``/api/v1/cluster`` JSON plus
  ``node``, ``load``, ``queues``, ``stats``, ``applied_index``, ``steals``: recent steals
  as ``{at, from, to, runs}``; no ``id``), ``event: history`` (``{"points": [stats...]}``,
  oldest first, once at the start of a stream), ``event: run``
  (the run JSON; the batch's last event carries ``id: <raft index>``),
  ``event: run_deleted`` (``{"id": ...}``) and ``event: reset`` (reload everything).
- The body ends promptly when the server stops: every wait also watches the
  server's shutdown event, because hypercorn's graceful shutdown waits for open
  responses (DESIGN.md). It ends after a reset caused by the feed dropping a slow
  subscriber; the browser's EventSource reconnects with ``Last-Event-ID`` by itself.
- Streams are capped per token subject and in all (``StreamLimiter``); the lease is
  released when the body finishes, however it finishes (end, disconnect, cancel).
- Waiting costs nothing per event: ready events are drained without waiting and sent
  as one chunk of at most ``CHUNK_EVENTS_MAX``; only an empty channel is waited on.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from web import problems
from web.port import ClusterSnapshot, FeedEvent, FeedReceiver, History, Reset
from web.problems import ApiProblem

RETRY_MS = 2000  # what EventSource waits before reconnecting
KEEPALIVE_S = 15.0  # a comment line when nothing else was sent, so proxies keep it open
CHUNK_EVENTS_MAX = 256
EVENT_ID_DIGITS_MAX = 19
SLOW_RESET_REASON = "this stream fell too far behind; reload"


class StreamLimiter:
    """Open event streams, at most ``per_subject_max`` per token subject and ``total_max``
    in all. Not thread-safe: used from the event loop only."""

    def __init__(self, per_subject_max: int, total_max: int) -> None:
        assert 1 <= per_subject_max <= total_max, (per_subject_max, total_max)
        self.per_subject_max = per_subject_max
        self.total_max = total_max
        self._open: Counter[str] = Counter()

    def acquire(self, subject: str) -> Callable[[], None]:
        """Take a stream for ``subject``; returns its (idempotent) release. Raises an
        ``ApiProblem``: 429 past the per-subject cap, 503 past the total."""
        if self._open[subject] >= self.per_subject_max:
            raise ApiProblem(
                problems.RATE_LIMITED,
                f"at most {self.per_subject_max} event streams per client; close one first",
                headers={"Retry-After": "5"},
            )
        if self.total() >= self.total_max:
            raise ApiProblem(
                problems.UNAVAILABLE,
                f"this node serves at most {self.total_max} event streams",
                headers={"Retry-After": "5"},
            )
        self._open[subject] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[subject] -= 1
                if self._open[subject] <= 0:
                    del self._open[subject]

        return release

    def total(self) -> int:
        return sum(self._open.values())

    def open_for(self, subject: str) -> int:
        return self._open.get(subject, 0)


def parse_event_id(text: str | None) -> int | None:
    """A ``Last-Event-ID`` value: decimal digits, or None when absent or empty."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > EVENT_ID_DIGITS_MAX:
        raise problems.invalid_field("Last-Event-ID", "must be an event id this stream sent")
    return int(text)


def snapshot_json(s: ClusterSnapshot) -> dict[str, Any]:
    """The ``cluster`` event's data: ``/api/v1/cluster``'s JSON plus this node's view."""
    return {
        **dataclasses.asdict(s.cluster),
        "node": s.load.node,
        "load": dataclasses.asdict(s.load),
        "queues": [dataclasses.asdict(q) for q in s.queues],
        "stats": dataclasses.asdict(s.stats),
        "applied_index": s.applied_index,
        "steals": [
            {"at": e.at, "from": e.from_node, "to": e.to_node, "runs": e.runs} for e in s.steals
        ],
    }


def format_event(event: FeedEvent) -> str:
    """One event in the SSE wire format (data is one line of JSON)."""
    if isinstance(event, ClusterSnapshot):
        return _frame("cluster", json.dumps(snapshot_json(event), separators=(",", ":")))
    if isinstance(event, Reset):
        return _frame("reset", json.dumps({"reason": event.reason}))
    if isinstance(event, History):
        points = [dataclasses.asdict(p) for p in event.points]
        return _frame("history", json.dumps({"points": points}, separators=(",", ":")))
    data = event.json()
    id_line = f"id: {event.index}\n" if event.last_in_batch else ""
    if data is None:
        return id_line + _frame("run_deleted", json.dumps({"id": event.run_id}))
    return id_line + _frame("run", data)


def _frame(name: str, data: str) -> str:
    assert "\n" not in data, "SSE data must be one line here"
    return f"event: {name}\ndata: {data}\n\n"


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name


_STOP = _Signal("stop")  # the server is shutting down
_ENDED = _Signal("ended")  # the feed dropped us (too slow) or closed
_IDLE = _Signal("idle")  # nothing within the keepalive interval


async def _wait_next(
    channel: FeedReceiver, stopping: trio.Event, timeout_s: float
) -> FeedEvent | _Signal:
    """The next event, or why there is none: whichever of receive / shutdown / timeout
    comes first. (A helper, so no ``yield`` ever sits inside its nursery.)"""
    got: list[FeedEvent | _Signal] = []

    async def receive(cancel: Callable[[], None]) -> None:
        try:
            got.append(await channel.receive())
        except (trio.EndOfChannel, trio.ClosedResourceError):
            got.append(_ENDED)
        cancel()

    async def stop(cancel: Callable[[], None]) -> None:
        await stopping.wait()
        got.append(_STOP)
        cancel()

    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, nursery.cancel_scope.cancel)
            nursery.start_soon(stop, nursery.cancel_scope.cancel)
    return got[0] if got else _IDLE


async def stream_body(
    channel: FeedReceiver,
    stopping: trio.Event,
    release: Callable[[], None],
    *,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The response body: relay ``channel`` until shutdown, a drop, or disconnect."""
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while not stopping.is_set():
            chunk: list[str] = []
            ended = False
            while len(chunk) < CHUNK_EVENTS_MAX:
                try:
                    chunk.append(format_event(channel.receive_nowait()))
                except trio.WouldBlock:
                    break
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    ended = True
                    break
            if not chunk and not ended:
                got = await _wait_next(channel, stopping, keepalive_s)
                if got is _STOP:
                    return
                if got is _IDLE:
                    chunk.append(": keepalive\n\n")
                elif got is _ENDED:
                    ended = True
                else:
                    assert not isinstance(got, _Signal)
                    chunk.append(format_event(got))
            if ended:
                chunk.append(format_event(Reset(SLOW_RESET_REASON)))
            yield "".join(chunk).encode()
            if ended:
                return
    finally:
        channel.close()
        release()
