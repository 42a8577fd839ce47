"""The RBAC matrix, generated from ROUTES so that a new route is covered the day it is
added: every (method, route) x every role x every way a token can be wrong.

Expected: a bad or missing token is 401 (problem+json, a Bearer challenge) wherever a
token is needed; a good token of too low a role is 403; a good token of a sufficient
role is neither 401 nor 403 (whatever the request's own fate). Public routes answer
everyone alike. A route that takes the token in its query (EventSource) is also tried
that way.

Requests go to the app as raw ASGI calls that stop once the response has started, so a
streaming route (SSE, followed output) is judged by its status like any other.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
import trio

from tests.web.apphelpers import Harness
from tests.web.test_security import bad_token
from web.app import ROUTES, Access, Route
from web.problems import PROBLEM_CONTENT_TYPE
from web.security import ApiLimits, Role

BAD_TOKENS = (
    "expired",
    "wrong_audience",
    "wrong_key_known_kid",
    "alg_none",
    "wrong_issuer",
)
# A concrete value for each path parameter (any well-formed value will do: the role
# check comes before the route looks anything up).
SAMPLES = {
    "job_id": "j000000000001",
    "run_id": "r000000000001000000",
    "node_id": "n3",
    "name": "init.js",
    "filename": "missing.js",
}
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
CASES = [(m, r) for r in ROUTES for m in r.methods]


def _path(route: Route) -> str:
    return _PARAM.sub(lambda m: SAMPLES[m.group(1)], route.rule)


def _least_role(route: Route, limits: ApiLimits) -> Role | None:
    if isinstance(route.access, Role):
        return route.access
    if route.access is Access.METRICS:
        return None if limits.metrics_public else Role.VIEWER
    assert route.access is Access.PUBLIC, route.access
    return None


async def asgi_status(
    h: Harness, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    """Status and headers of one request, without waiting for the body to end."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }
    started: dict[str, Any] = {}
    sent_request = trio.Event()
    done = trio.Event()

    async def receive() -> dict[str, Any]:
        if not sent_request.is_set():
            sent_request.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
            done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.app, scope, receive, send)
            await done.wait()
            nursery.cancel_scope.cancel()
    decoded = {k.decode().lower(): v.decode() for k, v in started["headers"]}
    return started["status"], decoded


def _assert_unauthorized(status: int, headers: dict[str, str], where: str) -> None:
    assert status == 401, (status, where)
    assert headers["content-type"] == PROBLEM_CONTENT_TYPE, where
    assert headers["www-authenticate"].startswith('Bearer realm="rota"'), where


@pytest.mark.parametrize(("method", "route"), CASES, ids=[f"{m} {r.rule}" for m, r in CASES])
async def test_route_x_role_x_token(method: str, route: Route) -> None:
    allowed, refused = Harness(), Harness()  # refused requests must reach no port
    path = _path(route)
    least = _least_role(route, allowed.limits)
    where = f"{method} {path}"
    for role in Role:
        if least is None or role.allows(least):
            status, _ = await asgi_status(allowed, method, path, allowed.auth(role))
            assert status not in (401, 403), (status, where, role)
        else:
            status, headers = await asgi_status(refused, method, path, refused.auth(role))
            assert status == 403, (status, where, role)
            assert 'error="insufficient_scope"' in headers["www-authenticate"]
    for case, headers_in, target in _bad_attempts(refused, route, path):
        status, headers = await asgi_status(refused, method, target, headers_in)
        if least is None:
            assert status not in (401, 403), (status, where, case)
        else:
            _assert_unauthorized(status, headers, f"{where} with {case}")
    if least is not None:
        assert refused.port.calls == [] and refused.scheduler.calls == [], where


def _bad_attempts(h: Harness, route: Route, path: str) -> list[tuple[str, dict[str, str], str]]:
    """(what, headers, target) for no token and each bad token, in the header and, on a
    route that takes it there, in the query."""
    tokens = {case: bad_token(h, case) for case in BAD_TOKENS}
    attempts = [("no token", {}, path)]
    attempts += [(case, {"Authorization": f"Bearer {t}"}, path) for case, t in tokens.items()]
    if route.token_in_query:
        sep = "&" if "?" in path else "?"
        attempts += [
            (f"{case} in query", {}, f"{path}{sep}access_token={quote(t)}")
            for case, t in tokens.items()
        ]
    return attempts


def test_the_matrix_covers_every_route() -> None:
    assert {(m, r.rule) for m, r in CASES} == {(m, r.rule) for r in ROUTES for m in r.methods}
    for route in ROUTES:
        _path(route)  # every path parameter has a sample
