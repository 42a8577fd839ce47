"""The HTTP API of a node (cluster endpoints, health, metrics) on quart-trio and hypercorn.

Rules:
- Routes are declared once, in ``ROUTES``, each with the role it requires or an
  ``Access`` rule (public; metrics). Anything not declared public requires a verified token, including
  unknown paths: authentication runs before routing errors are reported, so a
  client without a token learns nothing but "401".
- Order per request: authenticate -> rate limit (per token) -> authorise (role) ->
  validate query and body -> call the port. Nothing reaches the port before all
  of its input has been validated, so rejected requests change nothing.
- Errors are raised (``ApiProblem`` or the port's typed errors) and rendered once,
  by ``problems.to_problem``, as ``application/problem+json``.
- Metrics use the route *template* (``/api/v1/cluster/members/<node_id>``) or
  ``unmatched`` as the label, and a fixed set of methods: cardinality is bounded
  by the route table.
- ``/metrics`` requires a viewer token unless ``ApiLimits.metrics_public``: the
  numbers reveal cluster topology and load, and Prometheus can send a bearer token.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hypercorn.config
import hypercorn.trio
import trio
from quart import Response, current_app, g, request
from quart.typing import ResponseReturnValue
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from web import dashboard, docs, openapi, problems, sse
from web.output import output_response
from web.port import (
    NODE_ID_DESCRIPTION,
    ClusterView,
    EventsPort,
    HttpMetrics,
    NodePort,
    SchedulerPort,
    format_host_port,
    is_node_id,
    parse_host_port,
)
from web.problems import ApiProblem, invalid_field
from web.security import (
    ApiLimits,
    InvalidToken,
    Principal,
    Role,
    TokenBucketLimiter,
    TokenVerifierPort,
)

UNMATCHED_ROUTE = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NODES_PAGE_SIZE_DEFAULT = 100
AUTHORIZATION_BYTES_MAX = 8192
GRACEFUL_TIMEOUT_S = 5.0


class Access(enum.Enum):
    """Access rules that are not a role."""

    PUBLIC = "public"  # no token
    METRICS = "metrics"  # public if ApiLimits.metrics_public, else a viewer token


@dataclass(frozen=True, slots=True)
class Route:
    """One route: its template, methods, who may call it, and its allowed query parameters."""

    rule: str
    methods: tuple[str, ...]
    access: Role | Access
    view: Callable[..., Awaitable[ResponseReturnValue]]
    query: frozenset[str] = frozenset()
    # The token may come as ``?access_token=`` (RFC 6750 2.3): only for EventSource,
    # which cannot send headers. See ``events``.
    token_in_query: bool = False


@dataclass(slots=True)
class AppState:
    """What the handlers reach through ``current_app``."""

    port: NodePort
    verifier: TokenVerifierPort
    metrics: HttpMetrics
    limits: ApiLimits
    limiter: TokenBucketLimiter | None
    policies: dict[str, Route]
    scheduler: SchedulerPort | None = None
    events: EventsPort | None = None
    streams: sse.StreamLimiter | None = None
    stopping: trio.Event = dataclasses.field(default_factory=trio.Event)  # set by ``serve``


def _state() -> AppState:
    return cast(AppState, current_app.extensions["rota"])


# ---------------------------------------------------------------- request hooks


async def _begin() -> None:
    g.started_s = time.perf_counter()


async def _authorize() -> None:
    """Default deny: authenticate, rate limit and authorise before anything else runs."""
    state = _state()
    rule = request.url_rule
    route = state.policies.get(rule.endpoint) if rule is not None else None
    required = _required_role(route, state.limits)
    if required is not None:
        g.principal = _admit(state, required)
    if route is not None:
        _check_query(route.query)


def _admit(state: AppState, required: Role) -> Principal:
    """Authenticate, rate limit, then authorise (so refused attempts also spend tokens)."""
    principal = _authenticate(state.verifier)
    if state.limiter is not None:
        wait_s = state.limiter.acquire(principal.token_key)
        if wait_s > 0:
            raise ApiProblem(
                problems.RATE_LIMITED,
                f"rate limit of {state.limits.rate_limit_per_s:g} requests/s per token exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
    if not principal.role.allows(required):
        raise ApiProblem(
            problems.FORBIDDEN,
            f"role {principal.role.value!r} may not do this; {required.value!r} required",
            headers={"WWW-Authenticate": 'Bearer realm="rota", error="insufficient_scope"'},
        )
    return principal


def _required_role(route: Route | None, limits: ApiLimits) -> Role | None:
    """The least role a request needs; None when it needs no token at all."""
    match route:
        case None:  # unknown path or method: authenticate first, then 404/405
            return Role.VIEWER
        case Route(access=Role() as role):
            return role
        case Route(access=Access.METRICS):
            return None if limits.metrics_public else Role.VIEWER
        case Route(access=Access.PUBLIC):
            return None
    raise AssertionError(f"unhandled access rule in {route}")


def _authenticate(verifier: TokenVerifierPort) -> Principal:
    header = request.headers.get("Authorization") or _query_bearer()
    if header is None:
        raise _unauthorized("missing bearer token", error=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(header) > AUTHORIZATION_BYTES_MAX:
        raise _unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    try:
        return verifier.verify(token)
    except InvalidToken as e:
        raise _unauthorized(e.reason) from None


def _query_bearer() -> str | None:
    """``access_token`` from the query as a bearer header, on routes that take it."""
    rule = request.url_rule
    route = _state().policies.get(rule.endpoint) if rule is not None else None
    token = request.args.get("access_token")
    if token is None or route is None or not route.token_in_query:
        return None
    return f"Bearer {token}"


def _unauthorized(reason: str, error: str | None = "invalid_token") -> ApiProblem:
    challenge = 'Bearer realm="rota"' + (f', error="{error}"' if error else "")
    return ApiProblem(problems.UNAUTHORIZED, reason, headers={"WWW-Authenticate": challenge})


async def _record(response: Response) -> Response:
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED_ROUTE
    method = request.method if request.method in METHODS else "OTHER"
    started_s = g.get("started_s", time.perf_counter())
    _state().metrics.observe_http(
        route, method, response.status_code, time.perf_counter() - started_s
    )
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _render_error(error: Exception) -> Response:
    problem = problems.to_problem(error)
    response = Response(
        problem.body(), status=problem.status, content_type=problems.PROBLEM_CONTENT_TYPE
    )
    response.headers.update(problem.headers)
    return response


# ---------------------------------------------------------------- input validation


def _check_query(allowed: frozenset[str]) -> None:
    for name in request.args:
        if name not in allowed:
            raise invalid_field(name, "unknown query parameter")


async def _read_json_object(fields: Mapping[str, Callable[[object], str | None]]) -> dict[str, Any]:
    """Parse the body as a JSON object with only ``fields``; each checker returns an error.

    An empty body is ``{}``. Required fields are checked by the caller via the checkers
    (a missing field is passed as ``None``)."""
    body = await _read_json_body()
    for name in body:
        if name not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise invalid_field(name, f"unknown field (allowed: {allowed})")
    for name, check in fields.items():
        error = check(body.get(name))
        if error is not None:
            raise invalid_field(name, error)
    return body


async def _read_json_body() -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty); its fields are the caller's to check."""
    try:
        raw = await request.get_data(as_text=False)
    except RequestEntityTooLarge:
        raise ApiProblem(
            problems.PAYLOAD_TOO_LARGE,
            f"request body exceeds {_state().limits.max_body_bytes} bytes",
        ) from None
    assert isinstance(raw, bytes)
    body: object = {}
    if raw.strip():
        if request.mimetype != "application/json":
            raise ApiProblem(
                problems.UNSUPPORTED_MEDIA_TYPE,
                f"body must be application/json, got {request.mimetype or 'no content type'!r}",
            )
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ApiProblem(problems.MALFORMED_JSON, f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiProblem(problems.BAD_REQUEST, "body must be a JSON object")
    return body


_NODE_ID_RULE = f"must be a node id: {NODE_ID_DESCRIPTION}"


def _node_id(required: bool) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if value is None:
            return "required" if required else None
        return None if is_node_id(value) else _NODE_ID_RULE

    return check


def _address(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string host:port"
    try:
        parse_host_port(value)
    except ValueError as e:
        return str(e)
    return None


def _page_limit(page_size_max: int) -> int:
    text = request.args.get("limit")
    if text is None:
        return min(NODES_PAGE_SIZE_DEFAULT, page_size_max)
    if not text.isdigit() or not 1 <= int(text) <= page_size_max:
        raise invalid_field("limit", f"must be an integer in [1, {page_size_max}], got {text!r}")
    return int(text)


def encode_cursor(after_id: str) -> str:
    """An opaque cursor resuming after ``after_id``."""
    return base64.urlsafe_b64encode(after_id.encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> str:
    try:
        after_id = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after_id = ""
    if not is_node_id(after_id):
        raise invalid_field("cursor", "not a cursor this API returned")
    return after_id


def _cluster_json(view: ClusterView) -> dict[str, Any]:
    return dataclasses.asdict(view)


# ---------------------------------------------------------------- handlers


async def healthz() -> ResponseReturnValue:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


async def readyz() -> ResponseReturnValue:
    """200 when a leader is known and this node is caught up, else 503."""
    if not _state().port.is_ready():
        raise ApiProblem(problems.NOT_READY, "no leader known or not caught up yet")
    return {"status": "ready"}


async def get_cluster() -> ResponseReturnValue:
    return _cluster_json(_state().port.cluster_view())


async def list_nodes() -> ResponseReturnValue:
    """Members sorted by id, a page at a time (``limit`` <= page_size_max, ``cursor``)."""
    state = _state()
    limit = _page_limit(state.limits.page_size_max)
    cursor = request.args.get("cursor")
    after_id = _decode_cursor(cursor) if cursor is not None else None
    members = [m for m in state.port.cluster_view().members if after_id is None or m.id > after_id]
    page = members[:limit]
    more = len(members) > limit
    return {
        "nodes": [dataclasses.asdict(m) for m in page],
        "next_cursor": encode_cursor(page[-1].id) if more else None,
    }


async def transfer_leader() -> ResponseReturnValue:
    body = await _read_json_object({"target": _node_id(required=False)})
    leader = await _state().port.transfer_leadership(body.get("target"))
    return {"leader": leader}


async def add_member() -> ResponseReturnValue:
    body = await _read_json_object({"id": _node_id(required=True), "address": _address})
    address = body.get("address")
    if address is not None:
        address = format_host_port(*parse_host_port(address))
    return _cluster_json(await _state().port.add_member(body["id"], address))


async def remove_member(node_id: str) -> ResponseReturnValue:
    if not is_node_id(node_id):
        raise invalid_field("node_id", _NODE_ID_RULE)
    await _read_json_object({})
    return _cluster_json(await _state().port.remove_member(node_id))


async def take_snapshot() -> ResponseReturnValue:
    await _read_json_object({})
    return {"index": await _state().port.take_snapshot()}


async def metrics() -> ResponseReturnValue:
    body, content_type = _state().metrics.render()
    return Response(body, content_type=content_type)


# ---------------------------------------------------------------- jobs, tasks, runs


def _scheduler() -> SchedulerPort:
    scheduler = _state().scheduler
    if scheduler is None:
        raise ApiProblem(problems.NOT_READY, "this node does not schedule work")
    return scheduler


def _stale() -> bool:
    value = request.args.get("consistency", "linearizable")
    if value not in ("linearizable", "stale"):
        raise invalid_field("consistency", "must be 'linearizable' or 'stale'")
    return value == "stale"


def _query() -> dict[str, str]:
    """A listing's query for the scheduler; ``limit`` checked against ``page_size_max``
    here, once for every listing (absent: the default, capped by the maximum)."""
    query = {k: v for k, v in request.args.items() if k != "consistency"}
    query["limit"] = str(_page_limit(_state().limits.page_size_max))
    return query


async def create_job() -> ResponseReturnValue:
    return await _scheduler().create_job(await _read_json_body()), 201


async def list_jobs() -> ResponseReturnValue:
    return await _scheduler().list_jobs(_query(), _stale())


async def get_job(job_id: str) -> ResponseReturnValue:
    return await _scheduler().get_job(job_id, _stale())


async def replace_job(job_id: str) -> ResponseReturnValue:
    body = await _read_json_body()
    return await _scheduler().update_job(job_id, body, request.headers.get("If-Match"), False)


async def patch_job(job_id: str) -> ResponseReturnValue:
    body = await _read_json_body()
    return await _scheduler().update_job(job_id, body, request.headers.get("If-Match"), True)


async def delete_job(job_id: str) -> ResponseReturnValue:
    await _read_json_object({})
    await _scheduler().delete_job(job_id)
    return "", 204


async def trigger_job(job_id: str) -> ResponseReturnValue:
    await _read_json_object({})
    return await _scheduler().job_action(job_id, "trigger"), 201


async def pause_job(job_id: str) -> ResponseReturnValue:
    await _read_json_object({})
    return await _scheduler().job_action(job_id, "pause")


async def resume_job(job_id: str) -> ResponseReturnValue:
    await _read_json_object({})
    return await _scheduler().job_action(job_id, "resume")


async def next_fires(job_id: str) -> ResponseReturnValue:
    text = request.args.get("count", "5")
    if not text.isdigit():
        raise invalid_field("count", f"must be a positive integer, got {text!r:.40}")
    return await _scheduler().next_fires(job_id, int(text), _stale())


async def preview_schedule() -> ResponseReturnValue:
    """The next fire times of a schedule not yet saved (the job form's live preview)."""
    return _scheduler().preview_schedule(await _read_json_body())


async def list_job_runs(job_id: str) -> ResponseReturnValue:
    return await _scheduler().list_runs(_query(), job_id, _stale())


async def submit_task() -> ResponseReturnValue:
    key = request.headers.get("Idempotency-Key")
    return await _scheduler().submit_task(await _read_json_body(), key), 201


async def submit_tasks() -> ResponseReturnValue:
    return await _scheduler().submit_tasks(await _read_json_body()), 201


async def list_runs() -> ResponseReturnValue:
    return await _scheduler().list_runs(_query(), None, _stale())


async def get_run(run_id: str) -> ResponseReturnValue:
    return await _scheduler().get_run(run_id, _stale())


async def cancel_run(run_id: str) -> ResponseReturnValue:
    await _read_json_object({})
    return await _scheduler().cancel_run(run_id)


async def run_output(run_id: str) -> ResponseReturnValue:
    """The run's output, streamed while the run runs (``web/output.py``)."""
    return await output_response(_scheduler(), run_id, request.args, _state().stopping)


async def openapi_json() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of ``ROUTES`` (public: it describes the API, no state)."""
    return _openapi_document(_state().limits.page_size_max)


@functools.cache
def _openapi_document(page_size_max: int) -> dict[str, Any]:
    return openapi.document(ROUTES, page_size_max=page_size_max)


async def events() -> ResponseReturnValue:
    """Server-Sent Events: snapshots and run changes (``web/sse.py``).

    The token may be ``?access_token=``: EventSource cannot set Authorization. It is
    safe enough here because hypercorn's access log is off (nothing logs URLs), the
    dashboard sends ``Referrer-Policy: no-referrer`` and nothing echoes the query; it
    is accepted on this route only, so a token in a link works nowhere else."""
    state = _state()
    if state.events is None or state.streams is None:
        raise ApiProblem(problems.NOT_READY, "this node has no event feed")
    last_id = sse.parse_event_id(
        request.headers.get("Last-Event-ID", request.args.get("last_event_id"))
    )
    release = state.streams.acquire(g.principal.subject)
    try:
        channel = state.events.subscribe(last_id)
    except BaseException:
        release()
        raise
    response = Response(
        sse.stream_body(channel, state.stopping, release), content_type="text/event-stream"
    )
    response.timeout = None  # Quart would cut the stream after 60 s
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # proxies: do not buffer the stream
    return response


_PAGE = frozenset({"cursor", "limit", "consistency"})
_READ = frozenset({"consistency"})

ROUTES: tuple[Route, ...] = (
    Route("/healthz", ("GET",), Access.PUBLIC, healthz),
    Route("/readyz", ("GET",), Access.PUBLIC, readyz),
    Route("/metrics", ("GET",), Access.METRICS, metrics),
    Route("/api/v1/cluster", ("GET",), Role.VIEWER, get_cluster),
    Route("/api/v1/nodes", ("GET",), Role.VIEWER, list_nodes, frozenset({"limit", "cursor"})),
    Route("/api/v1/cluster/transfer-leader", ("POST",), Role.ADMIN, transfer_leader),
    Route("/api/v1/cluster/members", ("POST",), Role.ADMIN, add_member),
    Route("/api/v1/cluster/members/<node_id>", ("DELETE",), Role.ADMIN, remove_member),
    Route("/api/v1/cluster/snapshot", ("POST",), Role.ADMIN, take_snapshot),
    Route("/api/v1/jobs", ("POST",), Role.OPERATOR, create_job),
    Route("/api/v1/jobs", ("GET",), Role.VIEWER, list_jobs, _PAGE | {"namespace", "name_prefix"}),
    Route("/api/v1/jobs/<job_id>", ("GET",), Role.VIEWER, get_job, _READ),
    Route("/api/v1/jobs/<job_id>", ("PUT",), Role.OPERATOR, replace_job),
    Route("/api/v1/jobs/<job_id>", ("PATCH",), Role.OPERATOR, patch_job),
    Route("/api/v1/jobs/<job_id>", ("DELETE",), Role.OPERATOR, delete_job),
    Route("/api/v1/jobs/<job_id>/trigger", ("POST",), Role.OPERATOR, trigger_job),
    Route("/api/v1/jobs/<job_id>/pause", ("POST",), Role.OPERATOR, pause_job),
    Route("/api/v1/jobs/<job_id>/resume", ("POST",), Role.OPERATOR, resume_job),
    Route("/api/v1/jobs/<job_id>/next", ("GET",), Role.VIEWER, next_fires, _READ | {"count"}),
    Route("/api/v1/jobs/<job_id>/runs", ("GET",), Role.VIEWER, list_job_runs, _PAGE),
    Route("/api/v1/schedules:preview", ("POST",), Role.VIEWER, preview_schedule),
    Route("/api/v1/tasks", ("POST",), Role.OPERATOR, submit_task),
    Route("/api/v1/tasks:batch", ("POST",), Role.OPERATOR, submit_tasks),
    Route("/api/v1/runs", ("GET",), Role.VIEWER, list_runs, _PAGE | {"state", "job_id", "node"}),
    Route("/api/v1/runs/<run_id>", ("GET",), Role.VIEWER, get_run, _READ),
    Route("/api/v1/runs/<run_id>/cancel", ("POST",), Role.OPERATOR, cancel_run),
    Route(
        "/api/v1/runs/<run_id>/output",
        ("GET",),
        Role.VIEWER,
        run_output,
        frozenset({"offset", "follow"}),
    ),
    Route("/api/v1/openapi.json", ("GET",), Access.PUBLIC, openapi_json),
    Route("/docs", ("GET",), Access.PUBLIC, docs.docs_page),
    Route("/docs/<name>", ("GET",), Access.PUBLIC, docs.docs_asset),
    Route(
        "/api/v1/events",
        ("GET",),
        Role.VIEWER,
        events,
        frozenset({"access_token", "last_event_id"}),
        token_in_query=True,
    ),
    Route("/", ("GET",), Access.PUBLIC, dashboard.dashboard),
    Route("/static/<path:filename>", ("GET",), Access.PUBLIC, dashboard.static_file),
)


def create_app(
    port: NodePort,
    verifier: TokenVerifierPort,
    metrics: HttpMetrics,
    limits: ApiLimits,
    *,
    scheduler: SchedulerPort | None = None,
    events: EventsPort | None = None,
    clock: Callable[[], float] = time.monotonic,
    extra_routes: Sequence[Route] = (),
) -> QuartTrio:
    """Build the app. ``clock`` (monotonic seconds) drives the rate limiter.
    ``extra_routes`` exist only when given (the fault-injection control, node/faults.py)."""
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.url_map.merge_slashes = False  # '//' would redirect with an HTML body; 404 instead
    # Objects keep the order they are built in (id first); sorting every key of a
    # 1,000-run batch answer cost the leader 1.5 us a run.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    limiter = None
    if limits.rate_limit_per_s > 0:
        limiter = TokenBucketLimiter(
            limits.rate_limit_per_s, limits.rate_limit_burst, limits.rate_limit_buckets_max, clock
        )
    policies: dict[str, Route] = {}
    for route in (*ROUTES, *extra_routes):
        endpoint = route.view.__name__
        app.add_url_rule(
            route.rule,
            endpoint,
            route.view,
            methods=list(route.methods),
            provide_automatic_options=False,
        )
        policies[endpoint] = route
    assert set(app.view_functions) == set(policies), "every endpoint must have a policy"
    app.extensions["rota"] = AppState(port, verifier, metrics, limits, limiter, policies, scheduler)
    if events is not None:
        app.extensions["rota"].events = events
        app.extensions["rota"].streams = sse.StreamLimiter(
            limits.sse_streams_per_subject_max, limits.sse_streams_max
        )
    app.before_request(_begin)
    app.before_request(_authorize)
    app.after_request(_record)
    app.register_error_handler(Exception, _render_error)
    return app


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout_s: float = GRACEFUL_TIMEOUT_S,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown`` is set; use as ``await nursery.start(serve, ...)``.

    ``task_status.started`` receives the bound URLs (``port=0`` picks a free port).
    HTTPS when ``certfile`` and ``keyfile`` are given. Open requests get
    ``graceful_timeout_s`` to finish after shutdown is triggered."""
    assert (certfile is None) == (keyfile is None), "certfile and keyfile go together"
    config = hypercorn.config.Config()
    config.bind = [format_host_port(host, port)]
    config.certfile = certfile
    config.keyfile = keyfile
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None  # requests are counted in metrics; never log headers
    config.errorlog = logging.getLogger("rota.hypercorn")
    cast(AppState, app.extensions["rota"]).stopping = shutdown  # event streams end on it
    await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
