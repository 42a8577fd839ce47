"""JSON forms of the model: API input validated into specs, and records rendered out.

Rules:
- Input is a plain JSON-like value (from ``json.loads``). Unknown fields, wrong types,
  out-of-range values and oversized strings raise ``ValidationError`` naming the field
  with dots and brackets (``retry.max_attempts``, ``executor.command[0]``). Range
  checks live once, in the model's ``__post_init__``; this module checks shapes and
  prefixes the names.
- Server-set fields (``id``, ``version``, ...) in a body are refused as read-only.
- A Python handler must be in the allow-list the caller passes (the node's
  configuration plus its registered entry points); the state machine never sees it.
- Output uses exactly the SPEC field names; instants are RFC 3339 strings in UTC
  (``node.schedule.format_ms``), ``null`` when unset.
- PATCH is an RFC 7396 merge onto the job's current spec, done before proposing,
  except that ``schedule`` and ``executor`` are replaced whole: their fields depend on
  their kind, so merging two kinds would only make an invalid mix.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final, TypeVar

from node.checks import check_str
from node.model import (
    IDEMPOTENCY_KEY_CHARS_MAX,
    ExecutorSpec,
    HttpSpec,
    Job,
    JobSpec,
    MisfirePolicy,
    PythonSpec,
    RetryPolicy,
    Run,
    ShellSpec,
    TaskSpec,
    ValidationError,
    plain_json,
)
from node.schedule import Schedule, ScheduleError, format_ms, parse_schedule, schedule_to_json

JOB_FIELDS: Final = frozenset(
    {
        "name",
        "namespace",
        "schedule",
        "executor",
        "priority",
        "timeout_s",
        "retry",
        "concurrency",
        "misfire",
        "misfire_window_s",
        "misfire_cap",
        "tags",
        "depends_on",
        "paused",
        "metadata",
    }
)
JOB_READ_ONLY_FIELDS: Final = frozenset(
    {"id", "created_at", "updated_at", "next_fire_at", "version"}
)
TASK_FIELDS: Final = frozenset({"executor", "priority", "timeout_s", "retry", "tags"})
RETRY_FIELDS: Final = frozenset(
    {"max_attempts", "backoff_initial_s", "backoff_multiplier", "backoff_max_s", "jitter"}
)
EXECUTOR_FIELDS: Final[dict[str, frozenset[str]]] = {
    "shell": frozenset({"type", "command", "env", "cwd"}),
    "http": frozenset({"type", "method", "url", "headers", "body"}),
    "python": frozenset({"type", "handler", "args"}),
}
EXECUTOR_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "shell": frozenset({"command"}),
    "http": frozenset({"url"}),
    "python": frozenset({"handler"}),
}
# Fields passed to the model as they are (the model checks them).
SIMPLE_JOB_FIELDS: Final = frozenset(
    {"name", "namespace", "priority", "timeout_s", "concurrency", "paused", "tags", "metadata"}
)
MISFIRE_FIELDS: Final = {"misfire": "policy", "misfire_window_s": "window_s", "misfire_cap": "cap"}
WHOLE_ON_PATCH: Final = frozenset({"schedule", "executor"})

T = TypeVar("T")


def _object(
    value: object, name: str, allowed: Collection[str], read_only: Collection[str] = ()
) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValidationError(name, "must be a JSON object")
    for key in value:
        inner = f"{name}.{key}" if name else str(key)
        if key in read_only:
            raise ValidationError(inner, "is read-only (set by the server)")
        if key not in allowed:
            raise ValidationError(inner, "unknown field")
    return value


def _built(where: str, build: Callable[..., T], /, **fields: object) -> T:
    """Construct a model value from checked-shape fields, naming its errors inside
    ``where``. The constructor's ``__post_init__`` checks every type and range."""
    try:
        return build(**fields)
    except ValidationError as e:
        raise (e.within(where) if where else e) from None


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValidationError(name, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValidationError(f"{name}[{i}]", "must be a string")
    return tuple(value)


# ---------------------------------------------------------------- input


def executor_from_json(value: object, handlers: Collection[str]) -> ExecutorSpec:
    """An executor object; errors are named ``executor.*``."""
    if not isinstance(value, dict):
        raise ValidationError("executor", "must be a JSON object")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in EXECUTOR_FIELDS:
        raise ValidationError("executor.type", f"must be one of {sorted(EXECUTOR_FIELDS)}")
    obj = _object(value, "executor", EXECUTOR_FIELDS[kind])
    missing = sorted(EXECUTOR_REQUIRED[kind] - obj.keys())
    if missing:
        raise ValidationError(f"executor.{missing[0]}", "is required")
    fields = {k: v for k, v in obj.items() if k != "type"}
    spec: ExecutorSpec
    if kind == "shell":
        fields["command"] = _str_list(obj["command"], "executor.command")
        spec = _built("executor", ShellSpec, **fields)
    elif kind == "http":
        spec = _built("executor", HttpSpec, **fields)
    else:
        spec = _built("executor", PythonSpec, **fields)
        if spec.handler not in handlers:
            raise ValidationError("executor.handler", f"{spec.handler!r} is not an allowed handler")
    return spec


def retry_from_json(value: object) -> RetryPolicy:
    return _built("retry", RetryPolicy, **_object(value, "retry", RETRY_FIELDS))


def schedule_from_json(value: object, now_ms: int) -> Schedule:
    """A job's ``schedule`` (``now_ms`` resolves ``after_s``); errors name the field."""
    try:
        return parse_schedule(value, now_ms)
    except ScheduleError as e:
        raise ValidationError(e.field, e.message) from None


def job_spec_from_json(obj: object, *, handlers: Collection[str], now_ms: int) -> JobSpec:
    """A job body (POST/PUT). ``now_ms`` resolves ``{"after_s": N}`` to an instant."""
    body = _object(obj, "", JOB_FIELDS, JOB_READ_ONLY_FIELDS)
    for required in ("name", "schedule", "executor"):
        if required not in body:
            raise ValidationError(required, "is required")
    fields = {k: v for k, v in body.items() if k in SIMPLE_JOB_FIELDS}
    misfire = {k: body[k] for k in MISFIRE_FIELDS if k in body}
    return _built(
        "",
        JobSpec,
        schedule=schedule_from_json(body["schedule"], now_ms),
        executor=executor_from_json(body["executor"], handlers),
        retry=retry_from_json(body.get("retry", {})),
        misfire=_built("", MisfirePolicy, **{MISFIRE_FIELDS[k]: v for k, v in misfire.items()}),
        depends_on=_str_list(body.get("depends_on", []), "depends_on"),
        **fields,
    )


def task_spec_from_json(obj: object, *, handlers: Collection[str]) -> TaskSpec:
    """An ad-hoc task body (``POST /tasks``, or one item of ``/tasks:batch``)."""
    body = _object(obj, "", TASK_FIELDS)
    if "executor" not in body:
        raise ValidationError("executor", "is required")
    fields = {k: v for k, v in body.items() if k in SIMPLE_JOB_FIELDS}
    return _built(
        "",
        TaskSpec,
        executor=executor_from_json(body["executor"], handlers),
        retry=retry_from_json(body.get("retry", {})),
        **fields,
    )


def merge_patch(base: object, patch: object) -> object:
    """RFC 7396 JSON merge patch (``null`` deletes; objects merge; anything else replaces)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def job_spec_from_patch(
    job: Job, patch: object, *, handlers: Collection[str], now_ms: int
) -> JobSpec:
    """The spec a PATCH asks for: ``patch`` merged onto ``job``'s current spec."""
    body = _object(patch, "", JOB_FIELDS, JOB_READ_ONLY_FIELDS)
    base = spec_to_json(job.spec)
    for key in WHOLE_ON_PATCH & body.keys():
        base.pop(key)
    return job_spec_from_json(merge_patch(base, body), handlers=handlers, now_ms=now_ms)


def idempotency_key_from_header(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header of ``POST /tasks``: printable ASCII, bounded."""
    if value is None:
        return None
    key = check_str(value, "Idempotency-Key", IDEMPOTENCY_KEY_CHARS_MAX)
    if not key.isascii() or not key.isprintable():
        raise ValidationError("Idempotency-Key", "must be printable ASCII")
    return key


# ---------------------------------------------------------------- output


def _instant(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def _number(x: float) -> float | int:
    return int(x) if x.is_integer() else x


def executor_to_json(spec: ExecutorSpec) -> dict[str, object]:
    """The executor object as the API shows it and as ``node.executors`` takes it."""
    match spec:
        case ShellSpec():
            out: dict[str, object] = {"type": "shell", "command": list(spec.command)}
            out["env"] = dict(spec.env)
            if spec.cwd is not None:
                out["cwd"] = spec.cwd
            return out
        case HttpSpec():
            out = {"type": "http", "method": spec.method, "url": spec.url}
            out["headers"] = dict(spec.headers)
            if spec.body is not None:
                out["body"] = spec.body
            return out
        case PythonSpec():
            return {"type": "python", "handler": spec.handler, "args": plain_json(spec.args)}


def retry_to_json(retry: RetryPolicy) -> dict[str, object]:
    return {
        "max_attempts": retry.max_attempts,
        "backoff_initial_s": _number(retry.backoff_initial_s),
        "backoff_multiplier": _number(retry.backoff_multiplier),
        "backoff_max_s": _number(retry.backoff_max_s),
        "jitter": _number(retry.jitter),
    }


def spec_to_json(spec: JobSpec) -> dict[str, object]:
    """The user-settable fields of a job: what PUT takes and PATCH merges onto."""
    return {
        "name": spec.name,
        "namespace": spec.namespace,
        "schedule": schedule_to_json(spec.schedule),
        "executor": executor_to_json(spec.executor),
        "priority": spec.priority,
        "timeout_s": spec.timeout_s,
        "retry": retry_to_json(spec.retry),
        "concurrency": spec.concurrency,
        "misfire": spec.misfire.policy,
        "misfire_window_s": spec.misfire.window_s,
        "misfire_cap": spec.misfire.cap,
        "tags": dict(spec.tags),
        "depends_on": list(spec.depends_on),
        "paused": spec.paused,
        "metadata": dict(spec.metadata),
    }


def job_to_json(job: Job) -> dict[str, object]:
    """A job as ``GET /jobs/{id}`` shows it."""
    return {
        "id": job.id,
        **spec_to_json(job.spec),
        "created_at": format_ms(job.created_at),
        "updated_at": format_ms(job.updated_at),
        "next_fire_at": _instant(job.next_fire_at),
        "version": job.version,
    }


def run_to_json(run: Run) -> dict[str, object]:
    """A run as ``GET /runs/{id}`` shows it."""
    return {
        "id": run.id,
        "job_id": run.job_id,
        "scheduled_at": format_ms(run.scheduled_at),
        "attempt": run.attempt,
        "state": run.state,
        "node": run.node,
        "token": run.token,
        "queued_at": format_ms(run.queued_at),
        "started_at": _instant(run.started_at),
        "finished_at": _instant(run.finished_at),
        "exit_code": run.exit_code,
        "error": run.error,
        "output_tail": run.output_tail,
    }


__all__ = [
    "executor_from_json",
    "executor_to_json",
    "idempotency_key_from_header",
    "job_spec_from_json",
    "job_spec_from_patch",
    "job_to_json",
    "merge_patch",
    "retry_from_json",
    "retry_to_json",
    "run_to_json",
    "spec_to_json",
    "task_spec_from_json",
]
