"""Every kind of error is application/problem+json, matches the document's Problem
schema and is a status the document lists for that operation; listings are capped by
the node's page size; a path with '//' is a plain 404, not an HTML redirect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.web.apphelpers import Harness, assert_problem
from tests.web.realnode import fingerprint, real_scheduler
from web import openapi
from web.app import ROUTES
from web.security import ApiLimits, Role

DOC = openapi.document(ROUTES)
PROBLEM = {"$ref": "#/components/schemas/Problem", "components": DOC["components"]}
SHELL = {"type": "shell", "command": ["/bin/true"]}
BIG = {"name": "x", "schedule": {"every_s": 60}, "executor": SHELL, "metadata": {"a": "b" * 4000}}

# (method, rule, path, request kwargs, status, problem slug)
ERRORS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    (
        "POST",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"data": "{", "headers": {"Content-Type": "application/json"}},
        400,
        "malformed-json",
    ),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"json": [1]}, 400, "bad-request"),
    (
        "POST",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"data": "{}", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported-media-type",
    ),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"json": BIG}, 413, "payload-too-large"),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"json": {"name": "x"}}, 422, "invalid-field"),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"role": None}, 401, "unauthorized"),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"role": Role.VIEWER}, 403, "forbidden"),
    ("GET", "/api/v1/jobs", "/api/v1/jobs?limit=3", {}, 422, "invalid-field"),
    ("GET", "/api/v1/runs", "/api/v1/runs?limit=3", {}, 422, "invalid-field"),
    (
        "GET",
        "/api/v1/jobs/<job_id>/runs",
        "/api/v1/jobs/j000000000001/runs?limit=3",
        {},
        422,
        "invalid-field",
    ),
    ("GET", "/api/v1/jobs/<job_id>", "/api/v1/jobs/j000000000009", {}, 404, "not-found"),
    ("DELETE", "/api/v1/jobs/<job_id>", "/api/v1/jobs/nope", {}, 422, "invalid-field"),
    ("POST", "/api/v1/runs/<run_id>/cancel", "/api/v1/runs/nope/cancel", {}, 422, "invalid-field"),
    (
        "POST",
        "/api/v1/jobs/<job_id>/trigger",
        "/api/v1/jobs/nope/trigger",
        {},
        422,
        "invalid-field",
    ),
    (
        "GET",
        "/api/v1/runs/<run_id>",
        "/api/v1/runs/r000000000001000000?colour=red",
        {},
        422,
        "invalid-field",
    ),
]


@pytest.mark.parametrize(
    ("method", "rule", "path", "kwargs", "status", "slug"),
    ERRORS,
    ids=[f"{e[4]}-{e[2]}" for e in ERRORS],
)
async def test_each_error_is_a_documented_problem_and_changes_nothing(
    tmp_path: Path,
    method: str,
    rule: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    slug: str,
) -> None:
    limits = ApiLimits(max_body_bytes=2048, page_size_max=2)
    with real_scheduler(tmp_path, limits=limits) as (h, node):
        before = fingerprint(h, node)
        got = await h.call(method, path, **kwargs)
        assert_problem(*got, status, slug)
        jsonschema.validate(got[2], PROBLEM)
        documented = DOC["paths"][openapi.openapi_path(rule)][method.lower()]["responses"]
        assert str(status) in documented, (method, rule, status)
        assert fingerprint(h, node) == before


async def test_the_other_errors_are_problems_too() -> None:
    h = Harness(limits=ApiLimits(rate_limit_per_s=1, rate_limit_burst=1))
    problems = []
    for method, path, status, slug in [
        ("GET", "/api//v1/cluster", 404, "not-found"),  # not an HTML redirect to one '/'
        ("POST", "/api/v1/runs", 405, "method-not-allowed"),
        ("GET", "/api/v1/cluster", 429, "rate-limited"),  # the burst of 1 is spent
    ]:
        h.mono.now += 10 if status != 429 else 0  # a full bucket, except for the 429
        got = await h.call(method, path)
        assert_problem(*got, status, slug)
        problems.append(got[2])
    for problem in problems:
        jsonschema.validate(problem, PROBLEM)


async def test_listings_take_the_page_size_from_the_limits(tmp_path: Path) -> None:
    with real_scheduler(tmp_path, limits=ApiLimits(page_size_max=2)) as (h, _):
        for i in range(3):
            body = {"name": f"j{i}", "schedule": {"every_s": 60}, "executor": SHELL}
            assert (await h.call("POST", "/api/v1/jobs", json=body))[0] == 201
        status, _, page = await h.call("GET", "/api/v1/jobs")  # the default is capped too
        assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
        status, _, rest = await h.call("GET", f"/api/v1/jobs?cursor={page['next_cursor']}")
        assert [j["name"] for j in page["items"] + rest["items"]] == ["j0", "j1", "j2"]
        assert rest["next_cursor"] is None
