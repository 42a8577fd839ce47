"""GET /api/v1/events over the in-memory feed: framing, auth, resume, caps, shutdown."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio.testing

from tests.web.apphelpers import Harness, assert_problem, live_server
from web.port import Reset, StealEvent
from web.problems import PROBLEM_CONTENT_TYPE
from web.security import ApiLimits, Role
from web.sse import SLOW_RESET_REASON, StreamLimiter, parse_event_id
from web.testing import FakeEventFeed, FakeRunEvent, fake_snapshot

RUN = {"id": "r00000000000a000000", "job_id": "j1", "state": "running"}


def parse(text: str) -> list[dict[str, Any]]:
    """SSE text -> events as dicts of their fields (comments and retry kept apart)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            events.append(fields)
    return events


class Stream:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.text = ""

    async def read_until(self, needle: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        with trio.fail_after(timeout_s):
            while needle not in self.text:
                self.text += (await self.conn.receive()).decode()
        return parse(self.text)

    async def read_to_end(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        with trio.fail_after(timeout_s):
            while True:
                try:
                    self.text += (await self.conn.receive()).decode()
                except trio.EndOfChannel:
                    return parse(self.text)


@asynccontextmanager
async def open_stream(
    h: Harness,
    path: str = "/api/v1/events",
    *,
    headers: dict[str, str] | None = None,
    role: Role | None = Role.VIEWER,
) -> AsyncIterator[Stream]:
    """A stream through Quart's in-process test connection. It is ended by the server's
    shutdown event at exit: that test connection waits for a body's end even after a
    disconnect (a real disconnect is tested over hypercorn below)."""
    all_headers = {**(h.auth(role) if role else {}), **(headers or {})}
    h.app.extensions["rota"].stopping = trio.Event()
    async with h.app.test_client().request(path, headers=all_headers) as conn:
        await conn.send_complete()
        stream = Stream(conn)
        try:
            yield stream
        finally:
            h.app.extensions["rota"].stopping.set()
            await stream.read_to_end()


def harness(**feed: Any) -> Harness:
    h = Harness(events=FakeEventFeed(**feed))
    h.events.publish(fake_snapshot(h.port))
    return h


async def test_stream_starts_with_the_snapshot_then_relays_run_events() -> None:
    h = harness()
    async with open_stream(h) as s:
        events = await s.read_until("event: cluster")
        assert events[0] == {"retry": "2000"}
        assert s.conn.headers["Content-Type"].startswith("text/event-stream")
        assert s.conn.headers["Cache-Control"] == "no-store"
        snap = json.loads(events[1]["data"])
        assert {"leader", "term", "commit_index", "members"} <= set(snap)
        assert snap["leader"] == "n1" and snap["node"] == "n1"
        assert snap["load"]["free_slots"] == 4 and snap["stats"]["window_s"] == 1.0
        h.events.publish(FakeRunEvent(50, RUN["id"], RUN, last_in_batch=False))
        h.events.publish(FakeRunEvent(50, "r2", None))
        events = await s.read_until("run_deleted")
    run, deleted = events[2], events[3]
    assert run["event"] == "run" and "id" not in run and json.loads(run["data"]) == RUN
    assert deleted == {"id": "50", "event": "run_deleted", "data": '{"id": "r2"}'}


async def test_history_comes_first_and_snapshots_carry_steals() -> None:
    h = harness()
    stats = fake_snapshot(h.port).stats
    h.events.history = [dataclasses.replace(stats, at_s=float(t), runs_finished=t) for t in (1, 2)]
    steal = StealEvent("2027-01-15T08:00:00Z", "n1", "n2", 3)
    h.events.publish(dataclasses.replace(fake_snapshot(h.port), steals=(steal,)))
    async with open_stream(h) as s:
        events = await s.read_until("event: cluster")
    assert [e.get("event") for e in events[1:]] == ["history", "cluster"]
    points = json.loads(events[1]["data"])["points"]
    assert [(p["at_s"], p["runs_finished"]) for p in points] == [(1.0, 1), (2.0, 2)]
    assert json.loads(events[2]["data"])["steals"] == [
        {"at": "2027-01-15T08:00:00Z", "from": "n1", "to": "n2", "runs": 3}
    ]


async def test_token_may_come_in_the_query_on_this_route_only() -> None:
    h = harness()
    token = h.token(Role.VIEWER)
    async with open_stream(h, f"/api/v1/events?access_token={token}", role=None) as s:
        assert (await s.read_until("event: cluster"))[1]["event"] == "cluster"
        assert s.conn.status_code == 200
    status, headers, body = await h.call("GET", f"/api/v1/cluster?access_token={token}", role=None)
    assert_problem(status, headers, body, 401, "unauthorized")
    assert token not in json.dumps(body)


async def test_stream_needs_a_token() -> None:
    h = harness()
    assert_problem(*await h.call("GET", "/api/v1/events", role=None), 401, "unauthorized")
    status, headers, body = await h.call("GET", "/api/v1/events?access_token=nope", role=None)
    assert_problem(status, headers, body, 401, "unauthorized")
    assert h.events.subscribed == []


async def test_last_event_id_resumes_and_an_old_one_resets() -> None:
    h = harness()
    for index in (10, 11, 12):
        h.events.publish(FakeRunEvent(index, f"r{index}", {"id": f"r{index}"}))
    async with open_stream(h, headers={"Last-Event-ID": "10"}) as s:
        events = await s.read_until("id: 12")
    assert [e.get("id") for e in events if e.get("event") == "run"] == ["11", "12"]
    h.events.evicted_through = 11
    async with open_stream(h, "/api/v1/events?last_event_id=10") as s:
        events = await s.read_until("event: reset")
    assert h.events.subscribed == [10, 10]
    assert [e["event"] for e in events[1:]] == ["cluster", "reset"]


async def test_a_bad_last_event_id_is_a_field_error() -> None:
    h = harness()
    got = await h.call("GET", "/api/v1/events", headers={"Last-Event-ID": "x1"}, role=Role.VIEWER)
    assert_problem(*got, 422, "invalid-field")
    assert got[2]["field"] == "Last-Event-ID"
    assert parse_event_id("") is None and parse_event_id(" 7 ") == 7


async def test_streams_per_client_are_capped_and_released_on_disconnect() -> None:
    h = Harness(limits=ApiLimits(sse_streams_per_subject_max=2, sse_streams_max=3))
    headers = h.auth(Role.VIEWER)
    async with live_server(h.app) as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(3):
            async with (
                client.stream("GET", "/api/v1/events", headers=headers) as a,
                client.stream("GET", "/api/v1/events", headers=headers) as b,
            ):
                assert (a.status_code, b.status_code) == (200, 200)
                third = await client.get("/api/v1/events", headers=headers)
                assert third.status_code == 429
                assert third.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
                assert third.headers["Retry-After"] == "5"
            # Disconnected: the server notices, releases both leases, unsubscribes.
            with trio.fail_after(5):
                while h.events.open_subscribers():
                    await trio.sleep(0.01)


async def test_shutdown_ends_open_streams_over_hypercorn() -> None:
    h = harness()
    async with (
        live_server(h.app) as url,
        httpx.AsyncClient(base_url=url) as client,
        client.stream("GET", "/api/v1/events", headers=h.auth(Role.VIEWER)) as response,
    ):
        chunks = response.aiter_text()
        assert "retry" in await chunks.__anext__()
        started = trio.current_time()
        h.app.extensions["rota"].stopping.set()
        with trio.fail_after(2):
            async for _ in chunks:
                pass
        assert trio.current_time() - started < 1.0


def test_stream_limiter_caps_each_subject_and_the_total() -> None:
    limiter = StreamLimiter(per_subject_max=2, total_max=3)
    a1, _a2 = limiter.acquire("a"), limiter.acquire("a")
    _b1 = limiter.acquire("b")
    for subject, status in (("a", 429), ("c", 503)):
        try:
            limiter.acquire(subject)
        except Exception as e:
            assert getattr(e, "status", None) == status
        else:
            raise AssertionError("not capped")
    a1()
    a1()  # idempotent
    assert (limiter.open_for("a"), limiter.total()) == (1, 2)
    limiter.acquire("c")


async def test_a_dropped_slow_subscriber_gets_a_reset_and_the_stream_ends() -> None:
    h = harness(buffer_max=3)
    async with open_stream(h) as s:
        await s.read_until("event: cluster")
        for i in range(10):  # nobody reads meanwhile: the feed drops the subscriber
            h.events.publish(FakeRunEvent(100 + i, f"r{i}", {"id": f"r{i}"}))
        events = await s.read_to_end()
    assert events[-1]["event"] == "reset"
    assert json.loads(events[-1]["data"]) == {"reason": SLOW_RESET_REASON}


async def test_a_reset_from_the_feed_is_passed_on() -> None:
    h = harness()
    async with open_stream(h) as s:
        await s.read_until("event: cluster")
        h.events.publish(Reset("snapshot installed"))
        events = await s.read_until("event: reset")
    assert json.loads(events[-1]["data"]) == {"reason": "snapshot installed"}


async def test_shutdown_ends_the_stream_at_once(autojump_clock: trio.testing.MockClock) -> None:
    h = harness()
    async with open_stream(h) as s:
        await s.read_until("event: cluster")
        started = trio.current_time()
        h.app.extensions["rota"].stopping.set()
        await s.read_to_end()
        assert trio.current_time() - started < 0.1


async def test_an_idle_stream_sends_keepalives(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()  # no snapshot published: nothing to say
    async with open_stream(h) as s:
        started = trio.current_time()
        await s.read_until(": keepalive", timeout_s=30)
        assert 14.9 <= trio.current_time() - started <= 15.5
