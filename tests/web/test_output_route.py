"""``GET /api/v1/runs/{id}/output``: the stored output, streamed while the run runs."""

from __future__ import annotations

import httpx
import trio

from tests.web.apphelpers import Harness, assert_problem, live_server
from web.security import Role

RUN = "r000000000001000000"


async def test_the_output_so_far_without_follow() -> None:
    h = Harness()
    h.scheduler.outputs[RUN] = (b"hello\nworld\n", False)
    status, headers, body = await h.call(
        "GET", f"/api/v1/runs/{RUN}/output?follow=false", role=Role.VIEWER
    )
    assert status == 200 and body == "hello\nworld\n"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Rota-Output-Node"] == "n1" and headers["Rota-Output-Offset"] == "0"
    status, _, body = await h.call("GET", f"/api/v1/runs/{RUN}/output?offset=6&follow=false")
    assert status == 200 and body == "world\n"


async def test_bad_input_and_unknown_runs_are_problems() -> None:
    h = Harness()
    h.scheduler.missing_runs.add(RUN)
    assert_problem(*await h.call("GET", f"/api/v1/runs/{RUN}/output"), 404, "not-found")
    h.scheduler.missing_runs.clear()
    for query, code in (
        ("offset=-1", 422),
        ("offset=x", 422),
        ("follow=no", 422),
        ("since=3", 422),
    ):
        status, headers, _ = await h.call("GET", f"/api/v1/runs/{RUN}/output?{query}")
        assert status == code and headers["Content-Type"].startswith("application/problem+json")
    status, _, _ = await h.call("GET", f"/api/v1/runs/{RUN}/output", role=None)
    assert status == 401


async def test_follow_streams_until_the_run_has_ended() -> None:
    h = Harness()
    h.scheduler.outputs[RUN] = (b"one\n", False)
    received: list[bytes] = []
    path = f"/api/v1/runs/{RUN}/output"
    async with (
        live_server(h.app) as base,
        httpx.AsyncClient(base_url=base) as client,
        client.stream("GET", path, headers=h.auth(Role.VIEWER)) as response,
    ):
        assert response.status_code == 200
        chunks = response.aiter_raw()
        received.append(await chunks.__anext__())
        h.scheduler.outputs[RUN] = (b"one\ntwo\n", False)  # the run writes more
        received.append(await chunks.__anext__())
        h.scheduler.outputs[RUN] = (b"one\ntwo\n", True)  # and ends
        with trio.fail_after(10):
            async for chunk in chunks:
                received.append(chunk)
    assert b"".join(received) == b"one\ntwo\n"
    offsets = [arg[1] for name, arg in h.scheduler.calls if name == "read_output"]  # type: ignore[index]
    assert offsets[0] == 0 and 4 in offsets and offsets[-1] == 8


async def test_a_followed_stream_ends_when_the_server_stops() -> None:
    h = Harness()
    h.scheduler.outputs[RUN] = (b"still running\n", False)  # it never ends by itself
    path = f"/api/v1/runs/{RUN}/output"
    async with (
        live_server(h.app) as base,
        httpx.AsyncClient(base_url=base) as client,
        client.stream("GET", path, headers=h.auth(Role.VIEWER)) as response,
    ):
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"still running\n"
        h.app.extensions["rota"].stopping.set()  # what serve() sets on shutdown
        with trio.fail_after(10):
            rest = [chunk async for chunk in chunks]
    assert rest == []
