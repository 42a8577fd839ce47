"""The OpenAPI document: complete for ROUTES, valid OpenAPI 3.1, consistent with the
model's bounds, and describing what the app really answers (checked with jsonschema
against responses of the app over a real one-node scheduler)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

import node.jobs
import node.model
import node.queries
import node.schedule
from node.modeljson import EXECUTOR_FIELDS, JOB_FIELDS, RETRY_FIELDS, TASK_FIELDS
from tests.web.apphelpers import Harness
from tests.web.realnode import real_scheduler
from web import openapi, openapi_schemas
from web.app import ROUTES, Access, Route, healthz
from web.problems import PROBLEM_CONTENT_TYPE
from web.security import ApiLimits, Role

SHELL = {"type": "shell", "command": ["/bin/echo", "hi"]}


async def _document(h: Harness) -> dict[str, Any]:
    status, headers, doc = await h.call("GET", "/api/v1/openapi.json", role=None)
    assert status == 200 and headers["Content-Type"] == "application/json"
    return doc  # type: ignore[no-any-return]


async def test_the_document_is_public_and_valid_openapi_3_1() -> None:
    doc = await _document(Harness())
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"]["bearerFormat"] == "JWT"


def test_every_route_is_documented_and_nothing_else() -> None:
    doc = openapi.document(ROUTES)
    declared = {(m.lower(), openapi.openapi_path(r.rule)) for r in ROUTES for m in r.methods}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == declared
    assert set(openapi.OPERATIONS) == {(m, r.rule) for r in ROUTES for m in r.methods}, (
        "OPERATIONS documents a route that no longer exists"
    )


def test_a_route_without_a_schema_fails() -> None:
    new = Route("/api/v1/brand-new", ("GET",), Role.VIEWER, healthz)
    with pytest.raises(openapi.Undocumented, match="GET /api/v1/brand-new"):
        openapi.document((*ROUTES, new))
    odd_query = Route("/healthz", ("GET",), Access.PUBLIC, healthz, frozenset({"colour"}))
    with pytest.raises(openapi.Undocumented, match="colour"):
        openapi.document((odd_query,))


def test_roles_and_security_come_from_the_route_table() -> None:
    doc = openapi.document(ROUTES)
    for route in ROUTES:
        for method in route.methods:
            op = doc["paths"][openapi.openapi_path(route.rule)][method.lower()]
            assert op["x-rota-role"] == route.access.value
            statuses = set(op["responses"])
            if isinstance(route.access, Role):
                assert op["security"] == [{"bearer": []}]
                assert {"401", "403", "429"} <= statuses
            elif route.access is Access.PUBLIC:
                assert op["security"] == [] and "401" not in statuses
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert set(response["content"]) == {PROBLEM_CONTENT_TYPE}


def test_the_page_size_maximum_is_the_nodes() -> None:
    doc = openapi.document(ROUTES, page_size_max=7)
    limit = next(
        p for p in doc["paths"]["/api/v1/runs"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"]["maximum"] == 7
    doc = openapi.document(ROUTES, page_size_max=10_000)
    for path, most in (("/api/v1/runs", 500), ("/api/v1/nodes", 10_000)):
        limit = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "limit")
        assert limit["schema"]["maximum"] == most, path
    assert ApiLimits().page_size_max == openapi_schemas.PAGE_SIZE_MAX_DEFAULT
    assert openapi_schemas.PAGE_SIZE_MAX_DEFAULT == node.queries.PAGE_SIZE_MAX


def test_schemas_restate_the_model_exactly() -> None:
    sources = (node.model, node.schedule, node.jobs)
    for name, value in openapi_schemas.MODEL_BOUNDS.items():
        actual = next(getattr(m, name) for m in sources if hasattr(m, name))
        assert actual == value, name
    assert re.fullmatch(openapi_schemas.JOB_ID_PATTERN.strip("^$"), "j00000000000a")
    assert f"^{node.model.JOB_ID_RE.pattern}$" == openapi_schemas.JOB_ID_PATTERN
    assert f"^{node.model.RUN_ID_RE.pattern}$" == openapi_schemas.RUN_ID_PATTERN
    assert set(openapi_schemas.RUN_STATES) == node.model.RUN_STATES
    schemas = openapi_schemas.SCHEMAS
    assert set(schemas["JobSpec"]["properties"]) == JOB_FIELDS
    assert set(schemas["JobPatch"]["properties"]) == JOB_FIELDS
    assert set(schemas["Task"]["properties"]) == TASK_FIELDS
    assert set(schemas["Retry"]["properties"]) == RETRY_FIELDS
    for kind, fields in EXECUTOR_FIELDS.items():
        assert set(schemas[f"{kind.capitalize()}Executor"]["properties"]) == fields, kind


# ---------------------------------------------------------------- real responses


class Checker:
    """Validates responses against the document's schema for (method, rule, status)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, method: str, rule: str, status: int, headers: Any, body: Any) -> None:
        op = self.doc["paths"][openapi.openapi_path(rule)][method.lower()]
        assert str(status) in op["responses"], (method, rule, status, body)
        self.seen.add((method, rule, status))
        content = op["responses"][str(status)].get("content")
        if content is None:
            assert body == "", body
            return
        media = headers["Content-Type"].split(";")[0]
        media = media if media in content else "*/*"  # an asset route serves any type
        assert media in content, (media, list(content))
        schema = {**content[media]["schema"], "components": self.doc["components"]}
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(body)


async def test_real_responses_match_the_schemas(tmp_path: Path) -> None:
    with real_scheduler(tmp_path) as (h, _):
        checker = Checker(await _document(h))

        async def call(method: str, rule: str, path: str | None = None, **kw: Any) -> Any:
            got = await h.call(method, path or rule, **kw)
            checker.check(method, rule, *got)
            return got[2]

        job = await call(
            "POST",
            "/api/v1/jobs",
            json={
                "name": "cron",
                "schedule": {"cron": "*/5 * * * *", "tz": "Europe/Berlin"},
                "executor": SHELL,
                "retry": {"max_attempts": 3},
                "tags": {"zone": "a"},
                "metadata": {"team": "x"},
            },
        )
        for i, schedule in enumerate(({"every_s": 30}, {"at": "2027-01-01T09:00:00+01:00"})):
            await call(
                "POST",
                "/api/v1/jobs",
                json={"name": f"j{i}", "schedule": schedule, "executor": SHELL},
            )
        http = {"type": "http", "url": "https://example.invalid/hook", "headers": {"X-A": "1"}}
        await call(
            "POST",
            "/api/v1/jobs",
            json={"name": "later", "schedule": {"after_s": 10}, "executor": http},
        )
        jid = job["id"]
        await call("GET", "/api/v1/jobs", "/api/v1/jobs?limit=2")
        await call("GET", "/api/v1/jobs/<job_id>", f"/api/v1/jobs/{jid}")
        await call("GET", "/api/v1/jobs/<job_id>/next", f"/api/v1/jobs/{jid}/next?count=3")
        await call("PATCH", "/api/v1/jobs/<job_id>", f"/api/v1/jobs/{jid}", json={"priority": 9})
        put = {"name": "cron", "schedule": {"every_s": 60}, "executor": SHELL}
        await call("PUT", "/api/v1/jobs/<job_id>", f"/api/v1/jobs/{jid}", json=put)
        await call(
            "PUT",
            "/api/v1/jobs/<job_id>",
            f"/api/v1/jobs/{jid}",
            json=put,
            headers={"If-Match": '"1"'},
        )  # 409: the version moved on
        run = await call("POST", "/api/v1/jobs/<job_id>/trigger", f"/api/v1/jobs/{jid}/trigger")
        await call("POST", "/api/v1/jobs/<job_id>/pause", f"/api/v1/jobs/{jid}/pause")
        await call("POST", "/api/v1/jobs/<job_id>/resume", f"/api/v1/jobs/{jid}/resume")
        await call("GET", "/api/v1/jobs/<job_id>/runs", f"/api/v1/jobs/{jid}/runs")
        await call("POST", "/api/v1/tasks", json={"executor": SHELL, "priority": 1})
        await call("POST", "/api/v1/tasks:batch", json={"tasks": [{"executor": SHELL}] * 2})
        await call("GET", "/api/v1/runs", "/api/v1/runs?state=queued&limit=1")
        await call("GET", "/api/v1/runs/<run_id>", f"/api/v1/runs/{run['id']}")
        await call("POST", "/api/v1/runs/<run_id>/cancel", f"/api/v1/runs/{run['id']}/cancel")
        await call("GET", "/api/v1/runs/<run_id>", "/api/v1/runs/r000000000000000999")  # 404
        await call("DELETE", "/api/v1/jobs/<job_id>", f"/api/v1/jobs/{jid}")
        await call("POST", "/api/v1/jobs", json={"name": "x", "schedule": {"cron": "61 * * * *"}})
        preview = {"schedule": {"cron": "*/5 * * * *", "tz": "Asia/Tokyo"}, "count": 3}
        await call("POST", "/api/v1/schedules:preview", json=preview)
        await call("POST", "/api/v1/schedules:preview", json={"schedule": {"cron": "* *"}})  # 422
        await _cluster_calls(call)
    assert {s for _, _, s in checker.seen} >= {200, 201, 204, 404, 409, 422}
    assert len({(m, r) for m, r, _ in checker.seen}) >= 28


async def _cluster_calls(call: Any) -> None:
    await call("GET", "/healthz", role=None)
    await call("GET", "/readyz", role=None)
    await call("GET", "/metrics")
    await call("GET", "/api/v1/cluster")
    await call("GET", "/api/v1/nodes", "/api/v1/nodes?limit=2")
    await call("POST", "/api/v1/cluster/members", json={"id": "n4", "address": "10.0.0.4:7000"})
    await call("DELETE", "/api/v1/cluster/members/<node_id>", "/api/v1/cluster/members/n4")
    await call("POST", "/api/v1/cluster/transfer-leader", json={"target": "n2"})
    await call("POST", "/api/v1/cluster/snapshot")
    await call("GET", "/api/v1/openapi.json", role=None)
    await call("GET", "/docs", role=None)
    await call("GET", "/docs/<name>", "/docs/init.js", role=None)
