"""The commands of the replicated scheduler state machine, their results, and codecs.

Theory: everything that changes scheduler state is one of these commands, committed
through Raft and applied by ``node.state.SchedulerState.apply`` on every replica.
Time-based decisions are made by the leader and carried in the command: ``now_ms``
is the proposing leader's clock, the only clock the state machine ever sees.

Commands (closed union ``Command``)::

    job writes      CreateJob UpdateJob DeleteJob SetPaused TriggerJob
    ad-hoc tasks    SubmitTasks
    leader, time    Fire SkipSlots TimeoutRun NodeGone Assign
    workers         Start Complete Steal
    users           CancelRun

Rules:
- One frozen, slotted dataclass per command; each checks its fields when built
  (``ValidationError``), so a command decoded from the log is checked by the same
  code that built it. Batches are bounded by ``BATCH_ITEMS_MAX``.
- Wire form: a msgpack array ``[tag, field...]`` in dataclass field order; tags are
  fixed forever (append new ones, never renumber). ``decode_command`` raises
  ``CommandDecodeError`` for anything malformed; the caller applies nothing for it.
  ``SubmitTasks`` is written with tag 16: its tasks as a table of the distinct specs
  and one index per task (a batch repeats a few specs; each is written, decoded
  and checked once); tag 6, the plain list, is still read.
- Results are small: ``Ok(ids, ignored)`` or ``Rejected(code, detail, field)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

from node.checks import check_bool, check_int, check_optional_str, check_str
from node.model import (
    ERROR_CHARS_MAX,
    IDEMPOTENCY_KEY_CHARS_MAX,
    MISFIRE_KINDS,
    OUTCOMES,
    OUTPUT_TAIL_CHARS_MAX,
    JobSpec,
    MisfireKind,
    TaskSpec,
    ValidationError,
    is_job_id,
    is_run_id,
)
from node.records import (
    DecodeError,
    array,
    as_bool,
    as_int,
    as_opt_int,
    as_opt_str,
    as_str,
    as_str_tuple,
    job_spec_in,
    job_spec_out,
    pack,
    task_spec_in,
    task_spec_out,
    unpack,
)
from node.schedule import EPOCH_MS_MAX
from web.port import is_node_id

BATCH_ITEMS_MAX: Final = 1000  # fire items, run ids or tasks in one command
COMMAND_BYTES_MAX: Final = 4 << 20  # a quarter of a peer frame (node.wire: 16 MiB)
VERSION_MAX: Final = 2**53
SKIP_COUNT_MAX: Final = 2**53
TOKEN_MAX: Final = 2**63 - 1
EXIT_CODE_MIN: Final = -(2**31)
EXIT_CODE_MAX: Final = 2**31 - 1

Outcome = Literal["succeeded", "failed", "timed_out"]


class CommandDecodeError(DecodeError):
    """Bytes that are not a well-formed command."""


class CommandTooLarge(ValueError):
    """A command whose encoding exceeds ``COMMAND_BYTES_MAX`` (split the batch)."""


# ---------------------------------------------------------------- checks


def _now(value: object) -> None:
    check_int(value, "now_ms", 0, EPOCH_MS_MAX)


def _job_id(value: object, name: str = "job_id") -> None:
    if not is_job_id(value):
        raise ValidationError(name, f"not a job id: {value!r:.40}")


def _run_id(value: object, name: str = "run_id") -> None:
    if not is_run_id(value):
        raise ValidationError(name, f"not a run id: {value!r:.40}")


def _node(value: object, name: str = "node") -> None:
    if not is_node_id(value):
        raise ValidationError(name, f"not a node id: {value!r:.40}")


def _batch(value: object, name: str, *, empty_ok: bool = False) -> tuple[object, ...]:
    if not isinstance(value, tuple) or len(value) > BATCH_ITEMS_MAX:
        raise ValidationError(name, f"must be a tuple of at most {BATCH_ITEMS_MAX} items")
    if not value and not empty_ok:
        raise ValidationError(name, "must not be empty")
    return value


def _run_ids(value: object, name: str = "run_ids") -> None:
    items = _batch(value, name)
    for i, run_id in enumerate(items):
        _run_id(run_id, f"{name}[{i}]")
    if len(set(items)) != len(items):
        raise ValidationError(name, "lists a run twice")


def _token(value: object) -> None:
    check_int(value, "token", 1, TOKEN_MAX)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class CreateJob:
    spec: JobSpec
    now_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.spec, JobSpec):
            raise ValidationError("spec", "must be a job spec")
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """Replace a job's spec if its version is still ``expected_version`` (CAS).
    A PATCH is merged onto the spec before it is proposed."""

    job_id: str
    spec: JobSpec
    expected_version: int
    now_ms: int

    def __post_init__(self) -> None:
        _job_id(self.job_id)
        if not isinstance(self.spec, JobSpec):
            raise ValidationError("spec", "must be a job spec")
        check_int(self.expected_version, "expected_version", 1, VERSION_MAX)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class DeleteJob:
    job_id: str
    expected_version: int | None
    now_ms: int

    def __post_init__(self) -> None:
        _job_id(self.job_id)
        if self.expected_version is not None:
            check_int(self.expected_version, "expected_version", 1, VERSION_MAX)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class SetPaused:
    job_id: str
    paused: bool
    now_ms: int

    def __post_init__(self) -> None:
        _job_id(self.job_id)
        check_bool(self.paused, "paused")
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class TriggerJob:
    """A manual run now; it obeys the job's overlap policy and dependencies."""

    job_id: str
    now_ms: int

    def __post_init__(self) -> None:
        _job_id(self.job_id)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class SubmitTasks:
    """Ad-hoc runs; ``idempotency_keys[i]`` (or None) belongs to ``tasks[i]``."""

    tasks: tuple[TaskSpec, ...]
    idempotency_keys: tuple[str | None, ...]
    now_ms: int

    def __post_init__(self) -> None:
        for i, task in enumerate(_batch(self.tasks, "tasks")):
            if not isinstance(task, TaskSpec):
                raise ValidationError(f"tasks[{i}]", "must be a task spec")
        keys = _batch(self.idempotency_keys, "idempotency_keys")
        if len(keys) != len(self.tasks):
            raise ValidationError("idempotency_keys", "must have one entry per task")
        for i, key in enumerate(keys):
            if key is not None:
                check_str(key, f"idempotency_keys[{i}]", IDEMPOTENCY_KEY_CHARS_MAX)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class Fire:
    """The leader found these (job, slot) pairs due. Each fires at most once, and only
    as the job's next slot; anything else is ignored."""

    items: tuple[tuple[str, int], ...]
    now_ms: int

    def __post_init__(self) -> None:
        for i, item in enumerate(_batch(self.items, "items")):
            if not isinstance(item, tuple) or len(item) != 2:
                raise ValidationError(f"items[{i}]", "must be a (job_id, slot_ms) pair")
            _job_id(item[0], f"items[{i}].job_id")
            check_int(item[1], f"items[{i}].slot_ms", 0, EPOCH_MS_MAX)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class SkipSlots:
    """Misfire accounting: ``count`` slots of a job, the last being ``through_slot_ms``,
    are skipped under ``policy``; the job's cursor moves to ``through_slot_ms``."""

    job_id: str
    through_slot_ms: int
    count: int
    policy: MisfireKind
    now_ms: int

    def __post_init__(self) -> None:
        _job_id(self.job_id)
        check_int(self.through_slot_ms, "through_slot_ms", 0, EPOCH_MS_MAX)
        check_int(self.count, "count", 1, SKIP_COUNT_MAX)
        if self.policy not in MISFIRE_KINDS:
            raise ValidationError("policy", f"must be one of {sorted(MISFIRE_KINDS)}")
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class Assign:
    """Place unassigned queued runs on ``node``; each gets this entry's index as token."""

    run_ids: tuple[str, ...]
    node: str
    now_ms: int

    def __post_init__(self) -> None:
        _run_ids(self.run_ids)
        _node(self.node)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class Start:
    """A worker may start ``run_id`` only after this commits (accepted or not)."""

    run_id: str
    node: str
    token: int
    now_ms: int

    def __post_init__(self) -> None:
        _run_id(self.run_id)
        _node(self.node)
        _token(self.token)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class Complete:
    run_id: str
    token: int
    state: Outcome
    exit_code: int | None
    error: str | None
    output_tail: str
    now_ms: int

    def __post_init__(self) -> None:
        _run_id(self.run_id)
        _token(self.token)
        if self.state not in OUTCOMES:
            raise ValidationError("state", f"must be one of {sorted(OUTCOMES)}")
        if self.exit_code is not None:
            check_int(self.exit_code, "exit_code", EXIT_CODE_MIN, EXIT_CODE_MAX)
        check_optional_str(self.error, "error", ERROR_CHARS_MAX)
        check_str(self.output_tail, "output_tail", OUTPUT_TAIL_CHARS_MAX, empty_ok=True)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class CancelRun:
    run_id: str
    now_ms: int

    def __post_init__(self) -> None:
        _run_id(self.run_id)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class Steal:
    """Move the runs that are still queued on ``from_node`` to ``to_node``."""

    run_ids: tuple[str, ...]
    from_node: str
    to_node: str
    now_ms: int

    def __post_init__(self) -> None:
        _run_ids(self.run_ids)
        _node(self.from_node, "from_node")
        _node(self.to_node, "to_node")
        if self.from_node == self.to_node:
            raise ValidationError("to_node", "must differ from from_node")
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class NodeGone:
    """Gossip and Raft agree ``node`` is gone: requeue its queued runs, fail (and
    retry) its running ones."""

    node: str
    now_ms: int

    def __post_init__(self) -> None:
        _node(self.node)
        _now(self.now_ms)


@dataclass(frozen=True, slots=True)
class TimeoutRun:
    """The leader's backstop for a run past its deadline plus grace."""

    run_id: str
    token: int
    now_ms: int

    def __post_init__(self) -> None:
        _run_id(self.run_id)
        _token(self.token)
        _now(self.now_ms)


Command = (
    CreateJob
    | UpdateJob
    | DeleteJob
    | SetPaused
    | TriggerJob
    | SubmitTasks
    | Fire
    | SkipSlots
    | Assign
    | Start
    | Complete
    | CancelRun
    | Steal
    | NodeGone
    | TimeoutRun
)

# ---------------------------------------------------------------- results

RejectCode = Literal["not_found", "version_conflict", "conflict", "invalid", "stale_token"]
REJECT_CODES: Final[frozenset[str]] = frozenset(get_args(RejectCode))


@dataclass(frozen=True, slots=True)
class Ok:
    """Applied. ``ids``: the job or runs created or changed, in command order;
    ``ignored``: batch items that were already done or no longer apply."""

    ids: tuple[str, ...] = ()
    ignored: int = 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """Not applied, and nothing changed. ``field`` names the offending field (invalid)."""

    code: RejectCode
    detail: str
    field: str | None = None

    def __post_init__(self) -> None:
        assert self.code in REJECT_CODES, self.code


Result = Ok | Rejected

# ---------------------------------------------------------------- codec


@dataclass(frozen=True, slots=True)
class _Field:
    out: Callable[[object], object]
    into: Callable[[object, str], object]


def _same(v: object) -> object:
    return v


def _seq_out(v: object) -> object:
    assert isinstance(v, tuple), v
    return [list(i) if isinstance(i, tuple) else i for i in v]


def _job_spec_out(v: object) -> object:
    assert isinstance(v, JobSpec), v
    return job_spec_out(v)


def _tasks_out(v: object) -> object:
    assert isinstance(v, tuple), v
    return [task_spec_out(cast(TaskSpec, t)) for t in v]


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected an array")
    return value


def _task_table_out(v: object) -> object:
    """``[[distinct spec...], [index of each task's spec...]]``; specs are told apart
    by identity (the API hands equal bodies one spec object, ``node.memo``)."""
    assert isinstance(v, tuple), v
    distinct: list[TaskSpec] = []
    where: dict[int, int] = {}
    indexes: list[int] = []
    for task in v:
        i = where.get(id(task))
        if i is None:
            i = where[id(task)] = len(distinct)
            distinct.append(task)
        indexes.append(i)
    return [[task_spec_out(t) for t in distinct], indexes]


def _task_table_in(value: object, what: str) -> tuple[TaskSpec, ...]:
    table, indexes = array(value, 2, what)
    specs = [task_spec_in(t) for t in _list(table, what)]
    tasks: list[TaskSpec] = []
    for i in _list(indexes, what):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(specs):
            raise DecodeError(f"{what}: no task spec {i!r:.20} in the table")
        tasks.append(specs[i])
    return tuple(tasks)


def _fire_item(value: object, what: str) -> tuple[str, int]:
    job_id, slot = array(value, 2, what)
    return as_str(job_id, what), as_int(slot, what)


INT = _Field(_same, as_int)
OPT_INT = _Field(_same, as_opt_int)
STR = _Field(_same, as_str)
OPT_STR = _Field(_same, as_opt_str)
BOOL = _Field(_same, as_bool)
STRS = _Field(_seq_out, as_str_tuple)
KEYS = _Field(_seq_out, lambda v, w: tuple(as_opt_str(k, w) for k in _list(v, w)))
ITEMS = _Field(_seq_out, lambda v, w: tuple(_fire_item(i, w) for i in _list(v, w)))
JOB_SPEC = _Field(_job_spec_out, lambda v, _: job_spec_in(v))
TASKS = _Field(_tasks_out, lambda v, w: tuple(task_spec_in(t) for t in _list(v, w)))
TASK_TABLE = _Field(_task_table_out, _task_table_in)


# Tag → (class, field codecs in dataclass field order). Tags never change meaning.
_SCHEMA: Final[dict[int, tuple[type, tuple[_Field, ...]]]] = {
    1: (CreateJob, (JOB_SPEC, INT)),
    2: (UpdateJob, (STR, JOB_SPEC, INT, INT)),
    3: (DeleteJob, (STR, OPT_INT, INT)),
    4: (SetPaused, (STR, BOOL, INT)),
    5: (TriggerJob, (STR, INT)),
    6: (SubmitTasks, (TASKS, KEYS, INT)),
    7: (Fire, (ITEMS, INT)),
    8: (SkipSlots, (STR, INT, INT, STR, INT)),
    9: (Assign, (STRS, STR, INT)),
    10: (Start, (STR, STR, INT, INT)),
    11: (Complete, (STR, INT, STR, OPT_INT, OPT_STR, STR, INT)),
    12: (CancelRun, (STR, INT)),
    13: (Steal, (STRS, STR, STR, INT)),
    14: (NodeGone, (STR, INT)),
    15: (TimeoutRun, (STR, INT, INT)),
    16: (SubmitTasks, (TASK_TABLE, KEYS, INT)),  # written instead of 6 (read both)
}
# The tag each command is written with: the last one that decodes to its class.
_TAGS: Final[dict[type, int]] = {cls: tag for tag, (cls, _) in _SCHEMA.items()}


def _check_schema() -> None:
    for cls, codecs in _SCHEMA.values():
        assert len(dataclasses.fields(cls)) == len(codecs), cls
    assert set(_TAGS) == set(get_args(Command)), "every command has a tag"


_check_schema()


def encode_command(cmd: Command) -> bytes:
    """``[tag, field...]`` as msgpack. Raises ``CommandTooLarge`` past ``COMMAND_BYTES_MAX``."""
    tag = _TAGS[type(cmd)]
    _, codecs = _SCHEMA[tag]
    values = [
        c.out(getattr(cmd, f.name)) for f, c in zip(dataclasses.fields(cmd), codecs, strict=True)
    ]
    data = pack([tag, *values])
    if len(data) > COMMAND_BYTES_MAX:
        raise CommandTooLarge(f"command of {len(data)} bytes exceeds {COMMAND_BYTES_MAX}")
    return data


def decode_command(data: bytes) -> Command:
    """The command in ``data``; ``CommandDecodeError`` if it is not exactly one."""
    if len(data) > COMMAND_BYTES_MAX:
        raise CommandDecodeError(f"command of {len(data)} bytes exceeds {COMMAND_BYTES_MAX}")
    try:
        obj = unpack(data)
        if not isinstance(obj, list) or not obj or as_int(obj[0], "tag") not in _SCHEMA:
            raise DecodeError(f"not a command: {obj!r:.60}")
        cls, codecs = _SCHEMA[obj[0]]
        fields = dataclasses.fields(cls)
        array(obj, len(codecs) + 1, cls.__name__)
        values = [c.into(v, f.name) for f, c, v in zip(fields, codecs, obj[1:], strict=True)]
        cmd: Command = cls(*values)
    except (DecodeError, ValidationError) as e:
        raise CommandDecodeError(str(e)) from None
    return cmd


def encode_result(result: Result) -> bytes:
    match result:
        case Ok():
            return pack([0, list(result.ids), result.ignored])
        case Rejected():
            return pack([1, result.code, result.detail, result.field])


def decode_result(data: bytes) -> Result:
    try:
        obj = unpack(data)
        if not isinstance(obj, list) or not obj:
            raise DecodeError("not a result")
        if obj[0] == 0:
            _, ids, ignored = array(obj, 3, "ok")
            return Ok(as_str_tuple(ids, "ids"), as_int(ignored, "ignored"))
        _, code, detail, name = array(obj, 4, "rejected")
        if code not in REJECT_CODES:
            raise DecodeError(f"unknown rejection code {code!r:.20}")
        return Rejected(cast(RejectCode, code), as_str(detail, "detail"), as_opt_str(name, "field"))
    except DecodeError as e:
        raise CommandDecodeError(str(e)) from None


__all__ = [
    "BATCH_ITEMS_MAX",
    "COMMAND_BYTES_MAX",
    "Assign",
    "CancelRun",
    "Command",
    "CommandDecodeError",
    "CommandTooLarge",
    "Complete",
    "CreateJob",
    "DeleteJob",
    "Fire",
    "JobSpec",
    "NodeGone",
    "Ok",
    "Outcome",
    "RejectCode",
    "Rejected",
    "Result",
    "SetPaused",
    "SkipSlots",
    "Start",
    "Steal",
    "SubmitTasks",
    "TaskSpec",
    "TimeoutRun",
    "TriggerJob",
    "UpdateJob",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
]
