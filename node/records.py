"""msgpack encodings of model values: the specs inside commands on the Raft log, and
the job and run records the state machine persists.

Rules:
- Positional arrays, never maps of field names (DESIGN: arrays on the wire). Enums
  travel as their string names. A record starts with its format number.
- Decoding trusts nothing: every shape and type is checked and a mismatch raises
  ``DecodeError``; specs are then rebuilt through their constructors, which apply the
  same validation as the API (a failure is a ``DecodeError`` too). Job and run
  records assert their invariants when rebuilt (a broken one is a bug).
- Canonical: equal values encode to equal bytes (maps are written with sorted keys),
  so replicas can be compared byte for byte.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Final, TypeVar, cast

import msgpack

from node.memo import Memo
from node.model import (
    RUN_KINDS,
    RUN_STATES,
    ExecutorSpec,
    HttpSpec,
    Job,
    JobSpec,
    MisfirePolicy,
    PythonSpec,
    RetryPolicy,
    Run,
    RunKind,
    RunState,
    ShellSpec,
    TaskSpec,
    ValidationError,
    plain_json,
)
from node.schedule import AtSchedule, CronSchedule, EverySchedule, Schedule

RECORD_FORMAT: Final = 1
T = TypeVar("T")
INTERN_CHARS_MAX: Final = 64  # command words this short are shared between records


class DecodeError(ValueError):
    """Bytes or a decoded value that are not what they claim to be."""


# ---------------------------------------------------------------- primitives


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(raw: bytes) -> object:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise DecodeError(f"not msgpack: {e}") from None


def array(value: object, length: int, what: str) -> list[object]:
    if not isinstance(value, list) or len(value) != length:
        raise DecodeError(f"{what}: expected an array of {length}, got {value!r:.60}")
    return value


def as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{what}: expected an integer, got {value!r:.40}")
    return value


def as_opt_int(value: object, what: str) -> int | None:
    return None if value is None else as_int(value, what)


def as_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string, got {value!r:.40}")
    return value


def as_opt_str(value: object, what: str) -> str | None:
    return None if value is None else as_str(value, what)


def as_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"{what}: expected a boolean, got {value!r:.40}")
    return value


def as_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{what}: expected a number, got {value!r:.40}")
    return float(value)


def as_map(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map, got {value!r:.40}")
    return value


def as_str_map(value: object, what: str) -> dict[str, str]:
    return {k: as_str(v, what) for k, v in as_map(value, what).items()}


def as_str_tuple(value: object, what: str) -> tuple[str, ...]:
    """Short items are interned: commands repeat the same words across many jobs."""
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected an array of strings, got {value!r:.40}")
    return tuple(_interned(as_str(v, what)) for v in value)


# Decoded parts by their raw form (``node.memo``): records and commands repeat the
# same schedules, executors, policies and task specs; each is validated and built once
# and then shared by every record that has it.
_SCHEDULES: Memo[Schedule] = Memo()
_EXECUTORS: Memo[ExecutorSpec] = Memo()
_RETRIES: Memo[RetryPolicy] = Memo()
_MISFIRES: Memo[MisfirePolicy] = Memo()
_TASK_SPECS: Memo[TaskSpec] = Memo()


def _interned(text: str) -> str:
    return sys.intern(text) if len(text) <= INTERN_CHARS_MAX else text


def built(what: str, build: Callable[..., T], /, *args: object) -> T:
    """Rebuild a spec through its validating constructor."""
    try:
        return build(*args)
    except ValidationError as e:
        raise DecodeError(f"{what}: {e}") from None


def _sorted_map(m: Mapping[str, object]) -> dict[str, object]:
    if not m:
        return {}  # the common case (no tags, metadata or env): skip the sort
    return {k: plain_json(m[k]) for k in sorted(m)}


# ---------------------------------------------------------------- parts


def schedule_out(s: Schedule) -> list[object]:
    match s:
        case CronSchedule():
            return ["cron", s.cron, s.tz, s.jitter_s]
        case EverySchedule():
            return ["every", s.every_s, s.phase_s, s.jitter_s]
        case AtSchedule():
            return ["at", s.at_ms]


def schedule_in(value: object) -> Schedule:
    return _SCHEDULES.get(value, _schedule_in)


def _schedule_in(value: object) -> Schedule:
    if not isinstance(value, list) or not value:
        raise DecodeError(f"schedule: expected an array, got {value!r:.40}")
    kind = value[0]
    if kind == "cron":
        _, expr, tz, jitter = array(value, 4, "schedule")
        parts = (as_str(expr, "schedule.cron"), as_str(tz, "schedule.tz"))
        return CronSchedule(*parts, as_int(jitter, "schedule.jitter_s"))
    if kind == "every":
        _, every, phase, jitter = array(value, 4, "schedule")
        ints = (as_int(v, "schedule") for v in (every, phase, jitter))
        return EverySchedule(*ints)
    if kind == "at":
        return AtSchedule(as_int(array(value, 2, "schedule")[1], "schedule.at"))
    raise DecodeError(f"schedule: unknown kind {kind!r:.20}")


def executor_out(e: ExecutorSpec) -> list[object]:
    match e:
        case ShellSpec():
            return ["shell", list(e.command), _sorted_map(e.env), e.cwd]
        case HttpSpec():
            return ["http", e.method, e.url, _sorted_map(e.headers), e.body]
        case PythonSpec():
            return ["python", e.handler, _sorted_map(e.args)]


def executor_in(value: object) -> ExecutorSpec:
    return _EXECUTORS.get(value, _executor_in)


def _executor_in(value: object) -> ExecutorSpec:
    if not isinstance(value, list) or not value:
        raise DecodeError(f"executor: expected an array, got {value!r:.40}")
    kind = value[0]
    if kind == "shell":
        _, command, env, cwd = array(value, 4, "executor")
        return built(
            "executor", ShellSpec, as_str_tuple(command, "command"), as_map(env, "env"), cwd
        )
    if kind == "http":
        _, method, url, headers, body = array(value, 5, "executor")
        return built("executor", HttpSpec, url, method, as_map(headers, "headers"), body)
    if kind == "python":
        _, handler, args = array(value, 3, "executor")
        return built("executor", PythonSpec, handler, as_map(args, "args"))
    raise DecodeError(f"executor: unknown type {kind!r:.20}")


def retry_out(r: RetryPolicy) -> list[object]:
    return [r.max_attempts, r.backoff_initial_s, r.backoff_multiplier, r.backoff_max_s, r.jitter]


def retry_in(value: object) -> RetryPolicy:
    return _RETRIES.get(value, lambda v: built("retry", RetryPolicy, *array(v, 5, "retry")))


def misfire_out(m: MisfirePolicy) -> list[object]:
    return [m.policy, m.window_s, m.cap]


def misfire_in(value: object) -> MisfirePolicy:
    return _MISFIRES.get(value, lambda v: built("misfire", MisfirePolicy, *array(v, 3, "misfire")))


# ---------------------------------------------------------------- specs


def job_spec_out(s: JobSpec) -> list[object]:
    return [
        s.name,
        s.namespace,
        schedule_out(s.schedule),
        executor_out(s.executor),
        s.priority,
        s.timeout_s,
        retry_out(s.retry),
        s.concurrency,
        misfire_out(s.misfire),
        _sorted_map(s.tags),
        list(s.depends_on),
        s.paused,
        _sorted_map(s.metadata),
    ]


def job_spec_in(value: object) -> JobSpec:
    v = array(value, 13, "job spec")
    return built(
        "job spec",
        JobSpec,
        v[0],
        schedule_in(v[2]),
        executor_in(v[3]),
        v[1],
        v[4],
        v[5],
        retry_in(v[6]),
        v[7],
        misfire_in(v[8]),
        as_map(v[9], "tags"),
        as_str_tuple(v[10], "depends_on"),
        v[11],
        as_map(v[12], "metadata"),
    )


def task_spec_out(s: TaskSpec) -> list[object]:
    return [
        executor_out(s.executor),
        s.priority,
        s.timeout_s,
        retry_out(s.retry),
        _sorted_map(s.tags),
    ]


def task_spec_in(value: object) -> TaskSpec:
    return _TASK_SPECS.get(value, _task_spec_in)


def _task_spec_in(value: object) -> TaskSpec:
    v = array(value, 5, "task spec")
    executor, retry, tags = executor_in(v[0]), retry_in(v[3]), as_map(v[4], "tags")
    return built("task spec", TaskSpec, executor, v[1], v[2], retry, tags)


# ---------------------------------------------------------------- records


def job_out(j: Job) -> list[object]:
    return [
        RECORD_FORMAT,
        j.id,
        job_spec_out(j.spec),
        j.created_at,
        j.updated_at,
        j.version,
        j.last_slot_ms,
        j.next_slot_ms,
        j.next_fire_at,
        j.skipped_slots,
    ]


def job_in(value: object) -> Job:
    v = array(value, 10, "job")
    if v[0] != RECORD_FORMAT:
        raise DecodeError(f"job: unknown record format {v[0]!r:.20}")
    return Job(
        as_str(v[1], "job.id"),
        job_spec_in(v[2]),
        as_int(v[3], "job.created_at"),
        as_int(v[4], "job.updated_at"),
        as_int(v[5], "job.version"),
        as_int(v[6], "job.last_slot_ms"),
        as_opt_int(v[7], "job.next_slot_ms"),
        as_opt_int(v[8], "job.next_fire_at"),
        as_int(v[9], "job.skipped_slots"),
    )


def run_out(r: Run) -> list[object]:
    return [
        RECORD_FORMAT,
        r.id,
        r.job_id,
        r.kind,
        r.origin_id,
        r.scheduled_at,
        r.attempt,
        r.state,
        r.node,
        r.token,
        r.queued_at,
        r.priority,
        r.timeout_s,
        executor_out(r.executor),
        retry_out(r.retry),
        _sorted_map(r.tags),
        r.started_at,
        r.finished_at,
        r.exit_code,
        r.error,
        r.output_tail,
        r.not_before,
        r.submit_key,
    ]


def run_in(value: object) -> Run:
    v = array(value, 23, "run")
    if v[0] != RECORD_FORMAT:
        raise DecodeError(f"run: unknown record format {v[0]!r:.20}")
    kind, state = as_str(v[3], "run.kind"), as_str(v[7], "run.state")
    if kind not in RUN_KINDS or state not in RUN_STATES:
        raise DecodeError(f"run: unknown kind or state {kind!r:.20} {state!r:.20}")
    return Run(
        as_str(v[1], "run.id"),
        as_opt_str(v[2], "run.job_id"),
        cast(RunKind, kind),
        as_str(v[4], "run.origin_id"),
        as_int(v[5], "run.scheduled_at"),
        as_int(v[6], "run.attempt"),
        cast(RunState, state),
        as_opt_str(v[8], "run.node"),
        as_int(v[9], "run.token"),
        as_int(v[10], "run.queued_at"),
        as_int(v[11], "run.priority"),
        as_int(v[12], "run.timeout_s"),
        executor_in(v[13]),
        retry_in(v[14]),
        as_str_map(v[15], "run.tags"),
        as_opt_int(v[16], "run.started_at"),
        as_opt_int(v[17], "run.finished_at"),
        as_opt_int(v[18], "run.exit_code"),
        as_opt_str(v[19], "run.error"),
        as_str(v[20], "run.output_tail"),
        as_opt_int(v[21], "run.not_before"),
        as_opt_str(v[22], "run.submit_key"),
    )


def encode_job(job: Job) -> bytes:
    return pack(job_out(job))


def decode_job(raw: bytes) -> Job:
    return job_in(unpack(raw))


def encode_run(run: Run) -> bytes:
    return pack(run_out(run))


def decode_run(raw: bytes) -> Run:
    return run_in(unpack(raw))


__all__ = [
    "DecodeError",
    "decode_job",
    "decode_run",
    "encode_job",
    "encode_run",
    "job_spec_in",
    "job_spec_out",
    "pack",
    "task_spec_in",
    "task_spec_out",
    "unpack",
]
