"""The scheduler's data model: jobs, runs and what they carry, validated when built.

Theory: a ``JobSpec`` is everything a user sets on a job; a ``Job`` is a spec plus what
the replicated state machine keeps about it (identity, version, the fire cursor). A
``Run`` is one attempt at one slot of a job (or at an ad-hoc task). Runs carry a copy
of the executor, retry policy, priority, timeout and tags they were created with, so
a later job update never changes work already scheduled.

Rules:
- Every value here is a frozen, slotted dataclass. Specs (``JobSpec``, ``TaskSpec`` and
  their parts) check their own fields in ``__post_init__`` and raise ``ValidationError``
  naming the field; a parent prefixes the name of the part (``retry.max_attempts``).
  So a spec decoded from the log is checked by the same code as one from the API.
- ``Job`` and ``Run`` are built only by the state machine; their invariants are
  ``assert``ed (a broken one is a bug, not bad input).
- Maps are stored as read-only ``MappingProxyType`` copies with sorted keys.
- Times are int epoch milliseconds; durations in specs are seconds (``*_s``) as the
  API spells them. Every bound carries its unit in its name.
- Pure: no clock, no randomness, no I/O. The API layer (``node.modeljson``) turns JSON
  into these values; ``node.records`` turns them into msgpack arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from node.checks import (
    EMPTY_STR_MAP,
    ValidationError,
    check_bool,
    check_int,
    check_number,
    check_optional_str,
    check_str,
    check_str_map,
)
from node.schedule import (
    EPOCH_MS_MAX,
    AtSchedule,
    CronSchedule,
    EverySchedule,
    Schedule,
    ScheduleError,
    parse_schedule,
    schedule_to_json,
)

# ---------------------------------------------------------------- bounds

NAME_CHARS_MAX: Final = 128
NAMESPACE_CHARS_MAX: Final = 63
PRIORITY_MIN: Final = 0
PRIORITY_MAX: Final = 9
PRIORITY_DEFAULT: Final = 5
TIMEOUT_S_DEFAULT: Final = 3600
TIMEOUT_S_MAX: Final = 7 * 24 * 3600
ATTEMPTS_MAX: Final = 100
BACKOFF_S_MAX: Final = 24 * 3600.0
BACKOFF_MULTIPLIER_MAX: Final = 10.0
MISFIRE_WINDOW_S_MAX: Final = 7 * 24 * 3600
MISFIRE_CAP_MAX: Final = 1000
TAGS_MAX: Final = 32
TAG_VALUE_CHARS_MAX: Final = 255
DEPENDS_ON_MAX: Final = 16
METADATA_ENTRIES_MAX: Final = 32
METADATA_KEY_CHARS_MAX: Final = 64
METADATA_VALUE_CHARS_MAX: Final = 512
COMMAND_ARGS_MAX: Final = 256
COMMAND_CHARS_MAX: Final = 64 << 10  # all arguments together
ENV_ENTRIES_MAX: Final = 64
ENV_VALUE_CHARS_MAX: Final = 4096
PATH_CHARS_MAX: Final = 4096
URL_CHARS_MAX: Final = 2048
HEADERS_MAX: Final = 32
HEADER_VALUE_CHARS_MAX: Final = 4096
BODY_CHARS_MAX: Final = 64 << 10
HANDLER_CHARS_MAX: Final = 200
ARGS_JSON_CHARS_MAX: Final = 16 << 10
ARGS_DEPTH_MAX: Final = 8
JSON_INT_MAX: Final = 2**53  # integers every JSON reader (and msgpack) takes exactly
ERROR_CHARS_MAX: Final = 1024
OUTPUT_TAIL_CHARS_MAX: Final = 4096
IDEMPOTENCY_KEY_CHARS_MAX: Final = 255
NODE_CHARS_MAX: Final = 63

# ---------------------------------------------------------------- vocabularies

RunState = Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"]
RUN_STATES: Final[frozenset[str]] = frozenset(get_args(RunState))
ACTIVE_STATES: Final[frozenset[str]] = frozenset({"queued", "running"})
TERMINAL_STATES: Final[frozenset[str]] = RUN_STATES - ACTIVE_STATES
OUTCOMES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "timed_out"})  # a worker's
RETRYABLE_STATES: Final[frozenset[str]] = frozenset({"failed", "timed_out"})

Concurrency = Literal["allow", "forbid", "replace"]
CONCURRENCIES: Final[frozenset[str]] = frozenset(get_args(Concurrency))
MisfireKind = Literal["skip", "run_once", "run_all"]
MISFIRE_KINDS: Final[frozenset[str]] = frozenset(get_args(MisfireKind))
# How a run came to be: a scheduled slot (``Fire``/``SkipSlots``), a manual trigger,
# or an ad-hoc task. Only scheduled runs own their slot (see ``Run.idempotency_key``).
RunKind = Literal["scheduled", "manual", "task"]
RUN_KINDS: Final[frozenset[str]] = frozenset(get_args(RunKind))
HTTP_METHODS: Final[frozenset[str]] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
)

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAMESPACE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
# The same tag names as node configuration (node.config.TAG_KEY_RE), which this pure
# module cannot import: node.config pulls in sockets and key files.
TAG_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
JOB_ID_RE: Final = re.compile(r"j[0-9a-f]{12}")
RUN_ID_RE: Final = re.compile(r"r[0-9a-f]{18}")
ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
HANDLER_RE: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
METADATA_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
RESERVED_ENV_PREFIX: Final = "ROTA_"  # the executor sets ROTA_* itself
RESERVED_HEADER_PREFIX: Final = "rota-"
RESERVED_ARG: Final = "rota"  # Python handlers get the run's identity as ``rota=``


def _frozen_set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a field of a frozen dataclass


def empty_map() -> Mapping[str, str]:
    return EMPTY_STR_MAP


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and RUN_ID_RE.fullmatch(value) is not None


def job_id_for(index: int) -> str:
    """Job ids come from the Raft index of the ``CreateJob`` entry: equal on every replica."""
    assert 0 < index < 16**12, index
    return f"j{index:012x}"


def run_id_for(index: int, seq: int) -> str:
    """The ``seq``-th run created by the entry at ``index``; ids sort in creation order."""
    assert 0 < index < 16**12 and 0 <= seq < 16**6, (index, seq)
    return f"r{index:012x}{seq:06x}"


def check_schedule(value: object, name: str = "schedule") -> Schedule:
    """A schedule value (as decoded) re-checked by ``node.schedule``'s own validation,
    the single definition of a valid schedule."""
    if not isinstance(value, CronSchedule | EverySchedule | AtSchedule):
        raise ValidationError(name, f"not a schedule: {value!r:.60}")
    if isinstance(value, AtSchedule):
        check_int(value.at_ms, f"{name}.at", 0, EPOCH_MS_MAX)
        return value
    try:
        again = parse_schedule(schedule_to_json(value), 0)
    except ScheduleError as e:
        raise ValidationError(e.field.replace("schedule", name, 1), e.message) from e
    if again != value:
        raise ValidationError(name, f"not a canonical schedule: {value!r:.60}")
    return again


# ---------------------------------------------------------------- executor specs


@dataclass(frozen=True, slots=True)
class ShellSpec:
    """``{"type": "shell", "command": [...], "env": {...}, "cwd": "/..."}``."""

    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=empty_map)
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.command, tuple) or not 1 <= len(self.command) <= COMMAND_ARGS_MAX:
            raise ValidationError("command", f"must be a list of 1 to {COMMAND_ARGS_MAX} strings")
        for i, arg in enumerate(self.command):
            check_str(arg, f"command[{i}]", COMMAND_CHARS_MAX, empty_ok=i > 0)
        if sum(len(a) for a in self.command) > COMMAND_CHARS_MAX:
            raise ValidationError("command", f"must total at most {COMMAND_CHARS_MAX} characters")
        env = check_str_map(self.env, "env", ENV_ENTRIES_MAX, ENV_KEY_RE, 128, ENV_VALUE_CHARS_MAX)
        for key in env:
            if key.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValidationError(f"env.{key}", "ROTA_* variables are set by Rota")
        _frozen_set(self, "env", env)
        if self.cwd is not None and not check_str(self.cwd, "cwd", PATH_CHARS_MAX).startswith("/"):
            raise ValidationError("cwd", "must be an absolute path")


@dataclass(frozen=True, slots=True)
class HttpSpec:
    """``{"type": "http", "method": "POST", "url": "...", "headers": {...}, "body": "..."}``."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=empty_map)
    body: str | None = None

    def __post_init__(self) -> None:
        if check_str(self.method, "method", 8) not in HTTP_METHODS:
            raise ValidationError("method", f"must be one of {sorted(HTTP_METHODS)}")
        url = check_str(self.url, "url", URL_CHARS_MAX)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError as e:
            raise ValidationError("url", f"not a URL: {e}") from e
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError("url", "must be an http:// or https:// URL with a host")
        if any(c in url for c in " \r\n\t"):
            raise ValidationError("url", "must not contain whitespace")
        headers = check_str_map(
            self.headers, "headers", HEADERS_MAX, HEADER_NAME_RE, 128, HEADER_VALUE_CHARS_MAX
        )
        for key, value in headers.items():
            if key.lower().startswith(RESERVED_HEADER_PREFIX):
                raise ValidationError(f"headers.{key}", "Rota-* headers are set by Rota")
            if "\r" in value or "\n" in value:
                raise ValidationError(f"headers.{key}", "must not contain line breaks")
        _frozen_set(self, "headers", headers)
        check_optional_str(self.body, "body", BODY_CHARS_MAX)


@dataclass(frozen=True, slots=True)
class PythonSpec:
    """``{"type": "python", "handler": "pkg.mod:func", "args": {...}}``.

    Whether the handler is allowed is a node's configuration, checked by the API
    (``node.modeljson``) when the job or task is submitted, not here: the state machine
    must not depend on any node's configuration."""

    handler: str
    args: Mapping[str, object] = field(default_factory=empty_map)

    def __post_init__(self) -> None:
        check_str(self.handler, "handler", HANDLER_CHARS_MAX, HANDLER_RE)
        if not isinstance(self.args, Mapping):
            raise ValidationError("args", "must be an object")
        if RESERVED_ARG in self.args:
            raise ValidationError(f"args.{RESERVED_ARG}", "is set by Rota (the run's identity)")
        _check_json(self.args, "args", 0)
        if _json_chars(self.args) > ARGS_JSON_CHARS_MAX:
            raise ValidationError("args", f"must encode to at most {ARGS_JSON_CHARS_MAX} chars")
        _frozen_set(self, "args", types.MappingProxyType(dict(sorted(self.args.items()))))


def _check_json(value: object, name: str, depth: int) -> None:
    if depth > ARGS_DEPTH_MAX:
        raise ValidationError(name, f"nests deeper than {ARGS_DEPTH_MAX}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > JSON_INT_MAX:
            raise ValidationError(name, f"integers must be within ±{JSON_INT_MAX}")
        return
    if isinstance(value, str):
        check_str(value, name, ARGS_JSON_CHARS_MAX, empty_ok=True)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(name, "must be a finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{name}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(name, "object keys must be strings")
            check_str(key, name, ARGS_JSON_CHARS_MAX)
            _check_json(item, f"{name}.{key}", depth + 1)
        return
    raise ValidationError(name, f"is not a JSON value: {type(value).__name__}")


def _json_chars(value: object) -> int:
    return len(json.dumps(value, default=dict, separators=(",", ":")))


def plain_json(value: object) -> object:
    """A copy with read-only mappings turned into dicts (for JSON and msgpack)."""
    if isinstance(value, Mapping):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    return value


ExecutorSpec = ShellSpec | HttpSpec | PythonSpec
EXECUTOR_TYPES: Final[dict[type, str]] = {
    ShellSpec: "shell",
    HttpSpec: "http",
    PythonSpec: "python",
}


def check_executor(value: object) -> ExecutorSpec:
    if not isinstance(value, ShellSpec | HttpSpec | PythonSpec):
        raise ValidationError("executor", f"not an executor: {value!r:.60}")
    return value


# ---------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed or timed-out run is tried again (``max_attempts`` counts the first).

    Delay before attempt n+1 (``retry_delay_ms``): ``min(initial * multiplier^(n-1),
    max)``, scaled down by up to ``jitter`` (a fraction in [0, 1])."""

    max_attempts: int = 1
    backoff_initial_s: float = 10.0
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.max_attempts, "max_attempts", 1, ATTEMPTS_MAX)
        initial = check_number(self.backoff_initial_s, "backoff_initial_s", 0, BACKOFF_S_MAX)
        mult = check_number(
            self.backoff_multiplier, "backoff_multiplier", 1, BACKOFF_MULTIPLIER_MAX
        )
        top = check_number(self.backoff_max_s, "backoff_max_s", 0, BACKOFF_S_MAX)
        if top < initial:
            raise ValidationError("backoff_max_s", "must be at least backoff_initial_s")
        _frozen_set(self, "backoff_initial_s", initial)
        _frozen_set(self, "backoff_multiplier", mult)
        _frozen_set(self, "backoff_max_s", top)
        _frozen_set(self, "jitter", check_number(self.jitter, "jitter", 0, 1))


@dataclass(frozen=True, slots=True)
class MisfirePolicy:
    """What a leader does with slots it finds unfired more than ``window_s`` after they
    were due: ``skip`` them all, ``run_once`` (the latest only) or ``run_all`` (the
    latest ``cap``). Slots within the window are merely late and fire. The window is at
    least a second: a slot is always fired a little after it is due."""

    policy: MisfireKind = "run_once"
    window_s: int = 60
    cap: int = 10

    def __post_init__(self) -> None:
        if self.policy not in MISFIRE_KINDS:
            raise ValidationError("misfire", f"must be one of {sorted(MISFIRE_KINDS)}")
        check_int(self.window_s, "misfire_window_s", 1, MISFIRE_WINDOW_S_MAX)
        check_int(self.cap, "misfire_cap", 1, MISFIRE_CAP_MAX)


def retry_delay_ms(policy: RetryPolicy, run_id: str, attempt: int) -> int:
    """Backoff after attempt ``attempt`` of a run failed: deterministic, no RNG.

    The exponent is taken by repeated multiplication (IEEE basic operations give the
    same bits on every platform; ``pow`` comes from the C library and need not), and
    the jitter fraction comes from a hash of (run id, attempt)."""
    assert attempt >= 1, attempt
    delay_s = policy.backoff_initial_s
    for _ in range(attempt - 1):
        if delay_s >= policy.backoff_max_s:
            break
        delay_s *= policy.backoff_multiplier
    delay_s = min(delay_s, policy.backoff_max_s)
    digest = hashlib.blake2b(f"{run_id}:{attempt}".encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2.0**64  # in [0, 1)
    return int(delay_s * (1.0 - policy.jitter * fraction) * 1000.0)


def _check_tags(value: object, name: str = "tags") -> Mapping[str, str]:
    return check_str_map(value, name, TAGS_MAX, TAG_KEY_RE, 63, TAG_VALUE_CHARS_MAX)


def _check_common(spec: JobSpec | TaskSpec) -> None:
    """Fields shared by jobs and tasks: the parts a run copies."""
    check_executor(spec.executor)
    check_int(spec.priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
    check_int(spec.timeout_s, "timeout_s", 1, TIMEOUT_S_MAX)
    if not isinstance(spec.retry, RetryPolicy):
        raise ValidationError("retry", "must be a retry policy")
    _frozen_set(spec, "tags", _check_tags(spec.tags))


# ---------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a user sets on a job (SPEC "Jobs"); the unit of create and update."""

    name: str
    schedule: Schedule
    executor: ExecutorSpec
    namespace: str = "default"
    priority: int = PRIORITY_DEFAULT
    timeout_s: int = TIMEOUT_S_DEFAULT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: Concurrency = "forbid"
    misfire: MisfirePolicy = field(default_factory=MisfirePolicy)
    tags: Mapping[str, str] = field(default_factory=empty_map)
    depends_on: tuple[str, ...] = ()
    paused: bool = False
    metadata: Mapping[str, str] = field(default_factory=empty_map)

    def __post_init__(self) -> None:
        check_str(self.name, "name", NAME_CHARS_MAX, NAME_RE)
        check_str(self.namespace, "namespace", NAMESPACE_CHARS_MAX, NAMESPACE_RE)
        check_schedule(self.schedule)
        _check_common(self)
        if self.concurrency not in CONCURRENCIES:
            raise ValidationError("concurrency", f"must be one of {sorted(CONCURRENCIES)}")
        if not isinstance(self.misfire, MisfirePolicy):
            raise ValidationError("misfire", "must be a misfire policy")
        deps = self.depends_on
        if not isinstance(deps, tuple) or len(deps) > DEPENDS_ON_MAX:
            raise ValidationError("depends_on", f"must list at most {DEPENDS_ON_MAX} job ids")
        for i, dep in enumerate(deps):
            if not is_job_id(dep):
                raise ValidationError(f"depends_on[{i}]", f"not a job id: {dep!r:.40}")
        if len(set(deps)) != len(deps):
            raise ValidationError("depends_on", "lists a job twice")
        check_bool(self.paused, "paused")
        metadata = check_str_map(
            self.metadata,
            "metadata",
            METADATA_ENTRIES_MAX,
            METADATA_KEY_RE,
            METADATA_KEY_CHARS_MAX,
            METADATA_VALUE_CHARS_MAX,
        )
        _frozen_set(self, "metadata", metadata)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """An ad-hoc run (``POST /tasks``): an executor and how to run it, no schedule."""

    executor: ExecutorSpec
    priority: int = PRIORITY_DEFAULT
    timeout_s: int = TIMEOUT_S_DEFAULT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tags: Mapping[str, str] = field(default_factory=empty_map)

    def __post_init__(self) -> None:
        _check_common(self)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the state machine keeps it.

    The fire cursor ``last_slot_ms``: every slot at or before it is accounted for
    (fired, or skipped and counted in ``skipped_slots``); it never moves backwards, so
    no (job, slot) can fire twice even across schedule changes. At creation it is the
    instant before the schedule takes effect. ``next_slot_ms`` is the first slot after
    the cursor (None when paused or when the schedule has no more slots) and
    ``next_fire_at`` is when it is due: the slot plus the schedule's jitter."""

    id: str
    spec: JobSpec
    created_at: int
    updated_at: int
    version: int
    last_slot_ms: int
    next_slot_ms: int | None
    next_fire_at: int | None
    skipped_slots: int = 0

    def __post_init__(self) -> None:
        assert is_job_id(self.id), self.id
        assert isinstance(self.spec, JobSpec)
        assert self.version >= 1 and self.skipped_slots >= 0, (self.version, self.skipped_slots)
        assert (self.next_slot_ms is None) == (self.next_fire_at is None), self
        if self.next_slot_ms is not None and self.next_fire_at is not None:
            assert self.last_slot_ms < self.next_slot_ms <= self.next_fire_at, self
        assert not (self.spec.paused and self.next_slot_ms is not None), self


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt at one slot of a job, or at an ad-hoc task.

    ``token`` is the fencing token: the Raft index of the entry that created or last
    (re)assigned the run. ``origin_id`` is the id of attempt 1 of this chain of
    attempts. ``submit_key`` is the client's Idempotency-Key of a task (attempt 1
    only, while the key is retained)."""

    id: str
    job_id: str | None
    kind: RunKind
    origin_id: str
    scheduled_at: int
    attempt: int
    state: RunState
    node: str | None
    token: int
    queued_at: int
    priority: int
    timeout_s: int
    executor: ExecutorSpec
    retry: RetryPolicy
    tags: Mapping[str, str] = field(default_factory=empty_map)
    started_at: int | None = None
    finished_at: int | None = None
    exit_code: int | None = None
    error: str | None = None
    output_tail: str = ""
    not_before: int | None = None
    submit_key: str | None = None

    def __post_init__(self) -> None:
        assert is_run_id(self.id) and is_run_id(self.origin_id), (self.id, self.origin_id)
        assert self.kind in RUN_KINDS and self.state in RUN_STATES, (self.kind, self.state)
        assert (self.job_id is None) == (self.kind == "task"), self
        assert self.job_id is None or is_job_id(self.job_id), self.job_id
        assert 1 <= self.attempt <= ATTEMPTS_MAX and self.token >= 1, self
        assert (self.attempt == 1) == (self.origin_id == self.id), self
        assert self.state != "running" or (self.node is not None and self.started_at is not None)
        assert (self.state in TERMINAL_STATES) == (self.finished_at is not None), self
        assert self.submit_key is None or (self.kind == "task" and self.attempt == 1), self
        assert len(self.output_tail) <= OUTPUT_TAIL_CHARS_MAX, len(self.output_tail)

    @property
    def idempotency_key(self) -> str:
        """Passed to the executor; changes with every attempt.

        A scheduled run is ``job_id:scheduled_at:attempt`` (at most one Fire per
        slot makes that unique). Manual and ad-hoc runs have no slot of their own, so
        the id of their first attempt stands in for the job id."""
        owner = self.job_id if self.kind == "scheduled" else self.origin_id
        assert owner is not None
        return idempotency_key(owner, self.scheduled_at, self.attempt)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def idempotency_key(owner: str, scheduled_at_ms: int, attempt: int) -> str:
    """The executor's idempotency key: ``owner:scheduled_at_ms:attempt``."""
    return f"{owner}:{scheduled_at_ms}:{attempt}"


def deadline_ms(run: Run) -> int | None:
    """When a running run's own timeout expires (before any grace)."""
    return None if run.started_at is None else run.started_at + run.timeout_s * 1000


__all__ = [
    "ACTIVE_STATES",
    "OUTCOMES",
    "RETRYABLE_STATES",
    "RUN_STATES",
    "TERMINAL_STATES",
    "Concurrency",
    "ExecutorSpec",
    "HttpSpec",
    "Job",
    "JobSpec",
    "MisfireKind",
    "MisfirePolicy",
    "PythonSpec",
    "RetryPolicy",
    "Run",
    "RunKind",
    "RunState",
    "ShellSpec",
    "TaskSpec",
    "ValidationError",
    "deadline_ms",
    "idempotency_key",
    "is_job_id",
    "is_run_id",
    "job_id_for",
    "plain_json",
    "retry_delay_ms",
    "run_id_for",
]
