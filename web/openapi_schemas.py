"""The JSON Schemas of the API's bodies and parameters (OpenAPI 3.1 components).

Rules:
- Shapes are the SPEC's field names, exactly as ``node.modeljson`` reads and writes
  them; inputs are closed (``additionalProperties: false``: unknown fields are refused).
- Bounds restate the model's (``node.model``, ``node.schedule``), which ``web`` must
  not import; a test checks ``MODEL_BOUNDS`` against them. The server remains the
  judge: a value the schema allows may still be refused (an invalid cron expression,
  an unknown time zone) with a 422 naming the field.
- Schemas are plain dicts; ``web.openapi`` assembles them into the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from web.port import MEMBER_ROLES, MEMBER_STATES, NODE_ID_RE
from web.problems import KINDS, PROBLEM_BASE

Schema = dict[str, Any]

# The model's bounds as the schemas state them (checked against node/ by a test).
MODEL_BOUNDS: Final[dict[str, int | float]] = {
    "NAME_CHARS_MAX": 128,
    "NAMESPACE_CHARS_MAX": 63,
    "PRIORITY_MIN": 0,
    "PRIORITY_MAX": 9,
    "PRIORITY_DEFAULT": 5,
    "TIMEOUT_S_DEFAULT": 3600,
    "TIMEOUT_S_MAX": 7 * 24 * 3600,
    "ATTEMPTS_MAX": 100,
    "BACKOFF_S_MAX": 24 * 3600.0,
    "BACKOFF_MULTIPLIER_MAX": 10.0,
    "MISFIRE_WINDOW_S_MAX": 7 * 24 * 3600,
    "MISFIRE_CAP_MAX": 1000,
    "TAGS_MAX": 32,
    "DEPENDS_ON_MAX": 16,
    "METADATA_ENTRIES_MAX": 32,
    "COMMAND_ARGS_MAX": 256,
    "ENV_ENTRIES_MAX": 64,
    "URL_CHARS_MAX": 2048,
    "HEADERS_MAX": 32,
    "HANDLER_CHARS_MAX": 200,
    "EVERY_S_MAX": 366 * 24 * 3600,
    "JITTER_S_MAX": 3600,
    "PREVIEW_COUNT_MAX": 100,
    "TASKS_PER_BATCH_MAX": 1000,
}
JOB_ID_PATTERN: Final = r"^j[0-9a-f]{12}$"
RUN_ID_PATTERN: Final = r"^r[0-9a-f]{18}$"
RUN_STATES: Final = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
)
# ApiLimits.page_size_max by default, and the scheduler's own cap on a listing's page
# (node.queries.PAGE_SIZE_MAX) whatever the configuration says.
PAGE_SIZE_MAX_DEFAULT: Final = 500


# ---------------------------------------------------------------- components


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(props: Mapping[str, Schema], required: Iterable[str] = (), **extra: Any) -> Schema:
    return {
        "type": "object",
        "properties": dict(props),
        "required": sorted(required),
        "additionalProperties": False,
        **extra,
    }


def int_schema(lo: int, hi: int, **extra: Any) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi, **extra}


def _str_map(entries_max: int, key_pattern: str) -> Schema:
    return {
        "type": "object",
        "maxProperties": entries_max,
        "propertyNames": {"pattern": key_pattern},
        "additionalProperties": {"type": "string"},
    }


def _page(item: str, key: str = "items") -> Schema:
    return _obj(
        {key: {"type": "array", "items": ref(item)}, "next_cursor": _nullable({"type": "string"})},
        {key, "next_cursor"},
        description="One page; pass next_cursor back as ?cursor= for the next (null: last page).",
    )


B = MODEL_BOUNDS
INSTANT: Final[Schema] = {"type": "string", "format": "date-time"}
NODE_ID: Final[Schema] = {"type": "string", "pattern": f"^{NODE_ID_RE.pattern}$"}
JOB_ID: Final[Schema] = {"type": "string", "pattern": JOB_ID_PATTERN}
RUN_ID: Final[Schema] = {"type": "string", "pattern": RUN_ID_PATTERN}
TAGS: Final = _str_map(int(B["TAGS_MAX"]), r"^[a-z0-9][a-z0-9_.-]{0,62}$")

_SHELL = _obj(
    {
        "type": {"const": "shell"},
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": B["COMMAND_ARGS_MAX"],
            "description": "argv; runs in its own process group, killed on timeout",
        },
        "env": _str_map(int(B["ENV_ENTRIES_MAX"]), r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"),
        "cwd": {"type": "string", "pattern": "^/"},
    },
    {"type", "command"},
)
_HTTP = _obj(
    {
        "type": {"const": "http"},
        "method": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]},
        "url": {"type": "string", "maxLength": B["URL_CHARS_MAX"], "pattern": "^https?://"},
        "headers": _str_map(int(B["HEADERS_MAX"]), r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"),
        "body": {"type": "string"},
    },
    {"type", "url"},
    description="Success is a 2xx answer.",
)
_PYTHON = _obj(
    {
        "type": {"const": "python"},
        "handler": {
            "type": "string",
            "maxLength": B["HANDLER_CHARS_MAX"],
            "pattern": r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$",
            "description": "package.module:function, registered or allow-listed on the node",
        },
        "args": {"type": "object"},
    },
    {"type", "handler"},
)
_RETRY = _obj(
    {
        "max_attempts": int_schema(
            1, int(B["ATTEMPTS_MAX"]), description="counts the first attempt"
        ),
        "backoff_initial_s": {"type": "number", "minimum": 0, "maximum": B["BACKOFF_S_MAX"]},
        "backoff_multiplier": {
            "type": "number",
            "minimum": 1,
            "maximum": B["BACKOFF_MULTIPLIER_MAX"],
        },
        "backoff_max_s": {"type": "number", "minimum": 0, "maximum": B["BACKOFF_S_MAX"]},
        "jitter": {"type": "number", "minimum": 0, "maximum": 1},
    },
)
_JITTER = int_schema(0, int(B["JITTER_S_MAX"]))
_SCHEDULES: dict[str, Schema] = {
    "CronSchedule": _obj(
        {
            "cron": {
                "type": "string",
                "maxLength": 128,
                "description": "5 or 6 fields (seconds first) or a macro such as @hourly",
            },
            "tz": {"type": "string", "description": "IANA time zone; default UTC"},
            "jitter_s": _JITTER,
        },
        {"cron"},
    ),
    "EverySchedule": _obj(
        {
            "every_s": int_schema(1, int(B["EVERY_S_MAX"])),
            "phase_s": {"type": "integer", "minimum": 0, "description": "less than every_s"},
            "jitter_s": _JITTER,
        },
        {"every_s"},
    ),
    "AtSchedule": _obj({"at": {**INSTANT, "maxLength": 64}}, {"at"}),
    "AfterSchedule": _obj(
        {"after_s": int_schema(0, int(B["EVERY_S_MAX"]))},
        {"after_s"},
        description="Input only: shown as an `at` schedule once accepted.",
    ),
}
_JOB_FIELDS: dict[str, Schema] = {
    "name": {
        "type": "string",
        "minLength": 1,
        "maxLength": B["NAME_CHARS_MAX"],
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        "description": "unique per namespace",
    },
    "namespace": {
        "type": "string",
        "minLength": 1,
        "maxLength": B["NAMESPACE_CHARS_MAX"],
        "pattern": "^[a-z0-9][a-z0-9._-]*$",
        "default": "default",
    },
    "schedule": ref("Schedule"),
    "executor": ref("Executor"),
    "priority": int_schema(
        int(B["PRIORITY_MIN"]), int(B["PRIORITY_MAX"]), default=B["PRIORITY_DEFAULT"]
    ),
    "timeout_s": int_schema(1, int(B["TIMEOUT_S_MAX"]), default=B["TIMEOUT_S_DEFAULT"]),
    "retry": ref("Retry"),
    "concurrency": {"enum": ["allow", "forbid", "replace"], "default": "forbid"},
    "misfire": {"enum": ["skip", "run_once", "run_all"], "default": "run_once"},
    "misfire_window_s": int_schema(1, int(B["MISFIRE_WINDOW_S_MAX"]), default=60),
    "misfire_cap": int_schema(1, int(B["MISFIRE_CAP_MAX"]), default=10),
    "tags": {**TAGS, "description": "placement constraints against node tags"},
    "depends_on": {
        "type": "array",
        "items": JOB_ID,
        "maxItems": B["DEPENDS_ON_MAX"],
        "uniqueItems": True,
        "description": "job ids whose latest run must have succeeded",
    },
    "paused": {"type": "boolean", "default": False},
    "metadata": _str_map(int(B["METADATA_ENTRIES_MAX"]), "^[A-Za-z0-9][A-Za-z0-9._/-]*$"),
}
_SERVER_JOB_FIELDS: dict[str, Schema] = {
    "id": JOB_ID,
    "created_at": INSTANT,
    "updated_at": INSTANT,
    "next_fire_at": _nullable(INSTANT),
    "version": {"type": "integer", "minimum": 1, "description": "for If-Match on PUT/PATCH"},
}
_TASK_FIELDS = ("executor", "priority", "timeout_s", "retry", "tags")
_OUT_SCHEDULE = {"oneOf": [ref(n) for n in ("CronSchedule", "EverySchedule", "AtSchedule")]}
_MEMBER = _obj(
    {
        "id": NODE_ID,
        "role": {"enum": sorted(MEMBER_ROLES)},
        "api_address": _nullable({"type": "string"}),
        "state": {"enum": sorted(MEMBER_STATES)},
        "match_index": {"type": "integer", "minimum": 0},
        "applied_index": {"type": "integer", "minimum": 0},
        "queue_depth": {"type": "integer", "minimum": 0},
        "free_slots": {"type": "integer", "minimum": 0},
    },
    {
        "id",
        "role",
        "api_address",
        "state",
        "match_index",
        "applied_index",
        "queue_depth",
        "free_slots",
    },
)
_RUN = _obj(
    {
        "id": RUN_ID,
        "job_id": _nullable(JOB_ID),
        "scheduled_at": INSTANT,
        "attempt": {"type": "integer", "minimum": 1},
        "state": {"enum": list(RUN_STATES)},
        "node": _nullable(NODE_ID),
        "token": {"type": "integer", "minimum": 0, "description": "fencing token"},
        "queued_at": INSTANT,
        "started_at": _nullable(INSTANT),
        "finished_at": _nullable(INSTANT),
        "exit_code": _nullable({"type": "integer"}),
        "error": _nullable({"type": "string"}),
        "output_tail": _nullable({"type": "string"}),
    },
    {
        "id",
        "job_id",
        "scheduled_at",
        "attempt",
        "state",
        "node",
        "token",
        "queued_at",
        "started_at",
        "finished_at",
        "exit_code",
        "error",
        "output_tail",
    },
)
_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; clients switch on `type`.",
    "properties": {
        "type": {"enum": sorted(PROBLEM_BASE + k.slug for k in KINDS)},
        "title": {"type": "string"},
        "status": int_schema(400, 599),
        "detail": {"type": "string"},
        "field": {"type": "string", "description": "the failing field or parameter"},
        "leader": _nullable({"type": "string", "description": "not-leader: who leads"}),
    },
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": True,
}

SCHEMAS: Final[dict[str, Schema]] = {
    "Problem": _PROBLEM,
    "Health": _obj({"status": {"const": "ok"}}, {"status"}),
    "Ready": _obj({"status": {"const": "ready"}}, {"status"}),
    "Member": _MEMBER,
    "Cluster": _obj(
        {
            "leader": _nullable(NODE_ID),
            "term": {"type": "integer", "minimum": 0},
            "commit_index": {"type": "integer", "minimum": 0},
            "members": {
                "type": "array",
                "items": ref("Member"),
                "description": "every member, sorted by id: bounded by the cluster's size, "
                "so not paginated",
            },
        },
        {"leader", "term", "commit_index", "members"},
    ),
    "NodePage": _page("Member", "nodes"),
    "TransferLeader": _obj(
        {"target": {**_nullable(NODE_ID), "description": "a voter; absent or null: the best"}}
    ),
    "Leader": _obj({"leader": NODE_ID}, {"leader"}),
    "AddMember": _obj(
        {
            "id": NODE_ID,
            "address": {**_nullable({"type": "string"}), "description": "Raft host:port"},
        },
        {"id"},
    ),
    "SnapshotIndex": _obj({"index": {"type": "integer", "minimum": 0}}, {"index"}),
    "Empty": _obj({}, description="No fields: send nothing or {}."),
    **_SCHEDULES,
    "Schedule": {"oneOf": [ref(n) for n in _SCHEDULES]},
    "ShellExecutor": _SHELL,
    "HttpExecutor": _HTTP,
    "PythonExecutor": _PYTHON,
    "Executor": {
        "oneOf": [ref("ShellExecutor"), ref("HttpExecutor"), ref("PythonExecutor")],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                "shell": "#/components/schemas/ShellExecutor",
                "http": "#/components/schemas/HttpExecutor",
                "python": "#/components/schemas/PythonExecutor",
            },
        },
    },
    "Retry": _RETRY,
    "JobSpec": _obj(_JOB_FIELDS, {"name", "schedule", "executor"}),
    "JobPatch": _obj(
        {
            k: v if k in ("name", "schedule", "executor") else _nullable(v)
            for k, v in _JOB_FIELDS.items()
        },
        description="RFC 7396 merge patch onto the job's spec; null restores a default; "
        "schedule and executor are replaced whole.",
    ),
    "Job": _obj(
        {**_JOB_FIELDS, "schedule": _OUT_SCHEDULE, **_SERVER_JOB_FIELDS},
        set(_JOB_FIELDS) | set(_SERVER_JOB_FIELDS),
    ),
    "JobPage": _page("Job"),
    "NextFires": _obj(
        {"job_id": JOB_ID, "next": {"type": "array", "items": INSTANT}}, {"job_id", "next"}
    ),
    "PreviewRequest": _obj(
        {
            "schedule": ref("Schedule"),
            "count": int_schema(1, int(B["PREVIEW_COUNT_MAX"]), default=5),
        },
        {"schedule"},
    ),
    "SchedulePreview": _obj({"next": {"type": "array", "items": INSTANT}}, {"next"}),
    "Task": _obj({k: _JOB_FIELDS[k] for k in _TASK_FIELDS}, {"executor"}),
    "TaskBatch": _obj(
        {
            "tasks": {
                "type": "array",
                "items": ref("Task"),
                "minItems": 1,
                "maxItems": B["TASKS_PER_BATCH_MAX"],
            }
        },
        {"tasks"},
    ),
    "Run": _RUN,
    "Runs": _obj({"items": {"type": "array", "items": ref("Run")}}, {"items"}),
    "RunPage": _page("Run"),
    "Triggered": {
        "anyOf": [ref("Run"), ref("Empty")],
        "description": "the run created, or {} when the job's overlap policy made none",
    },
}

# ---------------------------------------------------------------- parameters

PATH_PARAMS: Final[dict[str, Schema]] = {
    "job_id": JOB_ID,
    "run_id": RUN_ID,
    "node_id": NODE_ID,
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 64},
    "filename": {"type": "string", "maxLength": 256},
}
QUERY_PARAMS: Final[dict[str, tuple[Schema, str]]] = {
    "limit": (
        int_schema(1, PAGE_SIZE_MAX_DEFAULT),
        "page size; at most the node's page_size_max (500 unless configured lower)",
    ),
    "cursor": ({"type": "string", "maxLength": 512}, "next_cursor of the previous page"),
    "consistency": (
        {"enum": ["linearizable", "stale"], "default": "linearizable"},
        "stale serves this node's local copy without a ReadIndex round trip",
    ),
    "namespace": (_JOB_FIELDS["namespace"], "only jobs in this namespace"),
    "name_prefix": ({"type": "string", "maxLength": 128}, "only jobs whose name starts so"),
    "state": ({"enum": list(RUN_STATES)}, "only runs in this state"),
    "job_id": (JOB_ID, "only runs of this job"),
    "node": (NODE_ID, "only runs placed on this node"),
    "count": (int_schema(1, int(B["PREVIEW_COUNT_MAX"]), default=5), "how many fire times"),
    "offset": ({"type": "integer", "minimum": 0}, "first byte of the output to send"),
    "access_token": ({"type": "string"}, "the bearer token, for EventSource (only here)"),
    "last_event_id": ({"type": "integer", "minimum": 0}, "as the Last-Event-ID header"),
    "follow": ({"enum": ["true", "false"], "default": "true"}, "keep streaming until the run ends"),
}
HEADER_PARAMS: Final[dict[str, Schema]] = {
    "If-Match": {"type": "string", "pattern": r'^"?[0-9]+"?$'},
    "Last-Event-ID": {"type": "string", "pattern": "^[0-9]+$"},
    "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 255},
}
