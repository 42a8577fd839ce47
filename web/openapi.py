"""The OpenAPI 3.1 description of the HTTP API, generated from the app's route table.

Rules:
- The route table (``web.app.ROUTES``) says what exists, with which methods, roles and
  query parameters; this module says what each operation takes and returns. Each
  (method, rule) has one ``Operation`` in ``OPERATIONS`` and each query parameter one
  schema in ``QUERY_PARAMS`` (``web.openapi_schemas``). ``document`` refuses (``Undocumented``) a route or query
  parameter that has none, and a test builds the document from ``ROUTES``: a new route
  without a schema fails the suite, not a client.
- Security is derived, not restated: an operation's ``x-rota-role`` is the route's
  role (``viewer``/``operator``/``admin``) or access rule (``public``, ``metrics``),
  and its ``security`` follows from it. The error responses an operation may give are
  derived the same way (a token means 401/403/429, a body 400/413/415, a path
  parameter 404, ...). Every error is ``application/problem+json`` (``Problem``).
- Streaming responses (``text/event-stream``, a run's growing output) are marked
  ``x-rota-streaming``, so tools that wait for a body to end can leave them out.
- Pure and cheap: the document is a plain dict, built once per process by the app.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from web.openapi_schemas import (
    HEADER_PARAMS,
    PAGE_SIZE_MAX_DEFAULT,
    PATH_PARAMS,
    QUERY_PARAMS,
    SCHEMAS,
    Schema,
    int_schema,
    ref,
)
from web.problems import PROBLEM_CONTENT_TYPE

JSON = "application/json"


class Undocumented(Exception):
    """A route or query parameter in the route table has no schema here."""


class RouteLike(Protocol):
    """What ``document`` reads of a ``web.app.Route`` (kept structural: no import cycle)."""

    @property
    def rule(self) -> str: ...
    @property
    def methods(self) -> tuple[str, ...]: ...
    @property
    def access(self) -> Any: ...  # a Role or an Access: both are enums with a str value
    @property
    def query(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented operation. ``ok`` maps the success status to a component schema
    name (JSON) or to a media type (``"text/plain"`` ...); ``body`` names the request
    body's schema (``body_required`` says whether one must be sent); ``headers`` are
    request headers the operation reads; ``errors`` adds statuses beyond the derived;
    ``streaming`` marks a body that may not end soon (``text/event-stream`` always does)."""

    summary: str
    tag: str
    ok: Mapping[int, str]
    body: str | None = None
    body_required: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    errors: frozenset[int] = frozenset()
    description: str = ""
    streaming: bool = False


# ---------------------------------------------------------------- operations

_JOB_404 = frozenset({404})
OPERATIONS: Final[dict[tuple[str, str], Operation]] = {
    ("GET", "/healthz"): Operation("The process is alive", "health", {200: "Health"}),
    ("GET", "/readyz"): Operation(
        "A leader is known and this node is caught up",
        "health",
        {200: "Ready"},
        errors=frozenset({503}),
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics (text exposition format)",
        "health",
        {200: "text/plain"},
        description="Needs a viewer token unless the node sets metrics_public = true.",
    ),
    ("GET", "/api/v1/openapi.json"): Operation(
        "This document", "meta", {200: JSON}, description="Public: it describes, reveals nothing."
    ),
    ("GET", "/docs"): Operation("Interactive API documentation", "meta", {200: "text/html"}),
    ("GET", "/docs/<name>"): Operation(
        "A vendored asset of the documentation page", "meta", {200: "*/*"}
    ),
    ("GET", "/api/v1/cluster"): Operation(
        "Leader, term, commit index and every member", "cluster", {200: "Cluster"}
    ),
    ("GET", "/api/v1/nodes"): Operation("Members, a page at a time", "cluster", {200: "NodePage"}),
    ("POST", "/api/v1/cluster/transfer-leader"): Operation(
        "Hand leadership to a voter (the most caught-up one when no target is given)",
        "cluster",
        {200: "Leader"},
        body="TransferLeader",
        body_required=False,
        errors=_JOB_404,
    ),
    ("POST", "/api/v1/cluster/members"): Operation(
        "Add a member as a learner (promoted once caught up)",
        "cluster",
        {200: "Cluster"},
        body="AddMember",
    ),
    ("DELETE", "/api/v1/cluster/members/<node_id>"): Operation(
        "Remove a member from the Raft configuration",
        "cluster",
        {200: "Cluster"},
        body="Empty",
        body_required=False,
    ),
    ("POST", "/api/v1/cluster/snapshot"): Operation(
        "Snapshot the state machine and compact the log",
        "cluster",
        {200: "SnapshotIndex"},
        body="Empty",
        body_required=False,
    ),
    ("POST", "/api/v1/jobs"): Operation("Create a job", "jobs", {201: "Job"}, body="JobSpec"),
    ("GET", "/api/v1/jobs"): Operation(
        "Jobs by namespace and name, a page at a time", "jobs", {200: "JobPage"}
    ),
    ("GET", "/api/v1/jobs/<job_id>"): Operation("One job", "jobs", {200: "Job"}),
    ("PUT", "/api/v1/jobs/<job_id>"): Operation(
        "Replace a job's spec (compare-and-set on version)",
        "jobs",
        {200: "Job"},
        body="JobSpec",
        headers={"If-Match": "the version you read; default: the version this node applied"},
    ),
    ("PATCH", "/api/v1/jobs/<job_id>"): Operation(
        "Merge-patch a job's spec (compare-and-set on version)",
        "jobs",
        {200: "Job"},
        body="JobPatch",
        headers={"If-Match": "the version you read; default: the version this node applied"},
    ),
    ("DELETE", "/api/v1/jobs/<job_id>"): Operation(
        "Delete a job", "jobs", {204: ""}, body="Empty", body_required=False
    ),
    ("POST", "/api/v1/jobs/<job_id>/trigger"): Operation(
        "Run a job now", "jobs", {201: "Triggered"}, body="Empty", body_required=False
    ),
    ("POST", "/api/v1/jobs/<job_id>/pause"): Operation(
        "Pause a job's schedule", "jobs", {200: "Job"}, body="Empty", body_required=False
    ),
    ("POST", "/api/v1/jobs/<job_id>/resume"): Operation(
        "Resume a job's schedule", "jobs", {200: "Job"}, body="Empty", body_required=False
    ),
    ("GET", "/api/v1/jobs/<job_id>/next"): Operation(
        "Preview the job's next fire times", "jobs", {200: "NextFires"}
    ),
    ("POST", "/api/v1/schedules:preview"): Operation(
        "Preview the fire times of a schedule not yet saved",
        "jobs",
        {200: "SchedulePreview"},
        body="PreviewRequest",
        description="As a job created now with this schedule would fire. Nothing is "
        "changed; an invalid schedule is a 422 naming the field (schedule.cron, ...).",
    ),
    ("GET", "/api/v1/jobs/<job_id>/runs"): Operation(
        "The job's runs, newest first, a page at a time", "runs", {200: "RunPage"}
    ),
    ("POST", "/api/v1/tasks"): Operation(
        "Submit an ad-hoc task (one run)",
        "tasks",
        {201: "Run"},
        body="Task",
        headers={"Idempotency-Key": "a retried submission with the same key makes no new run"},
    ),
    ("POST", "/api/v1/tasks:batch"): Operation(
        "Submit up to 1,000 tasks in one entry: all or none",
        "tasks",
        {201: "Runs"},
        body="TaskBatch",
    ),
    ("GET", "/api/v1/runs"): Operation(
        "Runs, newest first, filtered, a page at a time",
        "runs",
        {200: "RunPage"},
        description="A filtered page examines a bounded number of runs; it may hold fewer "
        "than limit items and still have a next_cursor.",
    ),
    ("GET", "/api/v1/runs/<run_id>"): Operation("One run", "runs", {200: "Run"}),
    ("GET", "/api/v1/runs/<run_id>/output"): Operation(
        "The run's output (stdout and stderr), streamed while it runs",
        "runs",
        {200: "text/plain"},
        streaming=True,
        description="From byte `offset`; with follow=true (the default) the body grows until "
        "the run ends. Rota-Output-Offset says where it starts (a capped store drops the "
        "head), Rota-Output-Node which node holds it.",
    ),
    ("GET", "/api/v1/events"): Operation(
        "Server-Sent Events: cluster snapshots about once a second and run state changes",
        "events",
        {200: "text/event-stream"},
        headers={"Last-Event-ID": "resume after this event id (a Raft index)"},
        errors=frozenset({503}),  # too many streams on this node
        description="EventSource cannot send headers: this route alone also takes the "
        "bearer token as ?access_token=. Streams per client are capped.",
    ),
    ("GET", "/"): Operation("The dashboard", "dashboard", {200: "text/html"}),
    ("GET", "/static/<path:filename>"): Operation(
        "A vendored asset of the dashboard", "dashboard", {200: "*/*"}
    ),
    ("POST", "/api/v1/runs/<run_id>/cancel"): Operation(
        "Cancel a queued or running run", "runs", {200: "Run"}, body="Empty", body_required=False
    ),
}
STREAMING_TYPES: Final = frozenset({"text/event-stream"})
SCHEDULER_TAGS: Final = ("jobs", "tasks", "runs")
_RULE_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_ERROR_TEXT: Final[dict[int, str]] = {
    400: "malformed JSON, or a body that is not a JSON object",
    401: "no token, or a token that is malformed, expired or not ours",
    403: "the token's role is not enough",
    404: "no such object",
    409: "conflicts with the current state (version moved on, name taken, ...)",
    413: "body larger than max_body_bytes",
    415: "body is not application/json",
    422: "a field, path or query parameter is invalid (named in `field`)",
    429: "rate limit per token exceeded (see Retry-After)",
    500: "a bug; details are in the node's log",
    503: "no leader, no quorum, timed out or not ready (see Retry-After)",
}


def openapi_path(rule: str) -> str:
    """``/jobs/<job_id>`` as OpenAPI spells it: ``/jobs/{job_id}``."""
    return _RULE_PARAM.sub(r"{\1}", rule)


def document(routes: Iterable[RouteLike], *, page_size_max: int = PAGE_SIZE_MAX_DEFAULT) -> Schema:
    """The OpenAPI 3.1 document for ``routes``; raises ``Undocumented`` for any gap."""
    paths: dict[str, dict[str, Schema]] = {}
    missing: list[str] = []
    for route in routes:
        for method in route.methods:
            op = OPERATIONS.get((method, route.rule))
            unknown = sorted(route.query - QUERY_PARAMS.keys())
            if op is None or unknown:
                missing.append(f"{method} {route.rule}" + (f" query {unknown}" if unknown else ""))
                continue
            item = paths.setdefault(openapi_path(route.rule), {})
            item[method.lower()] = _operation(route, method, op, page_size_max)
    if missing:
        raise Undocumented("no OpenAPI schema for: " + "; ".join(missing))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Rota",
            "version": _version(),
            "description": INFO_DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "EdDSA (Ed25519) JWT from `rota token create --role ROLE`; "
                    "roles rank viewer < operator < admin.",
                }
            },
        },
        "tags": [{"name": t} for t in sorted({op.tag for op in OPERATIONS.values()})],
    }


INFO_DESCRIPTION: Final = (
    "Every node serves this API and forwards writes to the Raft leader. Reads are "
    "linearizable unless `?consistency=stale`. Errors are `application/problem+json` "
    "(RFC 9457) with a stable `type`. Lists that can grow are paginated by an opaque "
    "`cursor` with `limit` up to the node's maximum page size. Bodies are bounded by "
    "`max_body_bytes` and requests by a per-token rate limit. `x-rota-role` on each "
    "operation is the least role it needs."
)


def _operation(route: RouteLike, method: str, op: Operation, page_size_max: int) -> Schema:
    role = str(route.access.value)
    names = _RULE_PARAM.findall(route.rule)
    params = [_path_param(n) for n in names]
    if op.tag in SCHEDULER_TAGS:  # the scheduler's listings have their own cap as well
        page_size_max = min(page_size_max, PAGE_SIZE_MAX_DEFAULT)
    params += [_query_param(n, page_size_max) for n in sorted(route.query)]
    params += [
        {"name": h, "in": "header", "required": False, "schema": HEADER_PARAMS[h], "description": d}
        for h, d in op.headers.items()
    ]
    out: Schema = {
        "operationId": _operation_id(method, route.rule),
        "summary": op.summary,
        "tags": [op.tag],
        "x-rota-role": role,
        "security": _security(role),
        "parameters": params,
        "responses": {
            **{str(s): _ok_response(kind) for s, kind in op.ok.items()},
            **{str(s): _error_response(s) for s in sorted(_errors(role, method, op, names))},
        },
    }
    if op.description:
        out["description"] = op.description
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {JSON: {"schema": ref(op.body)}},
        }
    if op.streaming or any(kind in STREAMING_TYPES for kind in op.ok.values()):
        out["x-rota-streaming"] = True
    return out


def _security(role: str) -> list[dict[str, list[str]]]:
    if role == "public":
        return []
    if role == "metrics":
        return [{"bearer": []}, {}]  # a viewer token, or none when metrics_public
    return [{"bearer": []}]


def _operation_id(method: str, rule: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", _RULE_PARAM.sub(r"by_\1", rule)).strip("_")
    return f"{method.lower()}_{words.removeprefix('api_v1_')}"


def _errors(role: str, method: str, op: Operation, path_params: list[str]) -> set[int]:
    """The error statuses an operation can answer, from what it takes and touches."""
    statuses = {422, 500} | set(op.errors)  # 422: e.g. an unknown query parameter, anywhere
    if role != "public":
        statuses |= {401, 403, 429}
    if op.body is not None:
        statuses |= {400, 413, 415}
    if path_params:
        statuses |= {404}
    if op.tag in SCHEDULER_TAGS:
        statuses |= {404, 503}  # unknown ids; no leader confirmed the read
    if method != "GET" and op.tag in (*SCHEDULER_TAGS, "cluster"):
        statuses |= {409, 503}  # conflicts with the state; outcome unknown or no quorum
    return statuses


def _ok_response(kind: str) -> Schema:
    if kind == "":
        return {"description": "done; no body"}
    if kind == JSON:
        return {"description": "OK", "content": {JSON: {"schema": {"type": "object"}}}}
    if "/" in kind:
        return {"description": "OK", "content": {kind: {"schema": {"type": "string"}}}}
    return {"description": "OK", "content": {JSON: {"schema": ref(kind)}}}


def _error_response(status: int) -> Schema:
    return {
        "description": _ERROR_TEXT.get(status, "error"),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": ref("Problem")}},
    }


def _path_param(name: str) -> Schema:
    if name not in PATH_PARAMS:
        raise Undocumented(f"no schema for path parameter {name!r}")
    return {"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}


def _query_param(name: str, page_size_max: int) -> Schema:
    schema, text = QUERY_PARAMS[name]
    if name == "limit":
        schema = int_schema(1, page_size_max)
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _version() -> str:
    try:
        return importlib.metadata.version("rota")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
