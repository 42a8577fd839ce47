"""The model: API validation naming fields, JSON output, retry backoff, and the msgpack
codecs of specs, records, commands and results (round trips and strict rejection)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.commands import (
    BATCH_ITEMS_MAX,
    COMMAND_BYTES_MAX,
    Assign,
    CancelRun,
    Command,
    CommandDecodeError,
    CommandTooLarge,
    Complete,
    CreateJob,
    DeleteJob,
    Fire,
    NodeGone,
    Ok,
    Rejected,
    SetPaused,
    SkipSlots,
    Start,
    Steal,
    SubmitTasks,
    TimeoutRun,
    TriggerJob,
    UpdateJob,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from node.model import (
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
    retry_delay_ms,
)
from node.modeljson import (
    idempotency_key_from_header,
    job_spec_from_json,
    job_spec_from_patch,
    job_to_json,
    merge_patch,
    run_to_json,
    spec_to_json,
    task_spec_from_json,
)
from node.records import (
    DecodeError,
    decode_job,
    decode_run,
    encode_job,
    encode_run,
    job_spec_in,
    job_spec_out,
    task_spec_in,
    task_spec_out,
)
from node.schedule import AtSchedule, CronSchedule, EverySchedule

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HANDLERS = ("tasks.reports:nightly",)
J1, R1, R2 = "j000000000001", "r000000000002000000", "r000000000002000001"


def body(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "nightly-report",
        "schedule": {"cron": "0 3 * * *", "tz": "Europe/Berlin"},
        "executor": {"type": "shell", "command": ["/bin/sh", "-c", "echo hi"]},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def field_of(fn: Callable[[], object]) -> str:
    with pytest.raises(ValidationError) as info:
        fn()
    return info.value.field


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"namespace": "Upper"}, "namespace"),
        ({"bogus": 1}, "bogus"),
        ({"id": "j000000000001"}, "id"),
        ({"version": 3}, "version"),
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({"schedule": {"cron": "* * * * *", "tz": "Mars/Olympus"}}, "schedule.tz"),
        ({"schedule": {"every_s": 0}}, "schedule.every_s"),
        ({"schedule": {"every_s": 5, "extra": 1}}, "schedule.extra"),
        ({"executor": {"type": "ftp"}}, "executor.type"),
        ({"executor": {"type": "shell"}}, "executor.command"),
        ({"executor": {"type": "shell", "command": []}}, "executor.command"),
        ({"executor": {"type": "shell", "command": ["", "x"]}}, "executor.command[0]"),
        ({"executor": {"type": "shell", "command": ["a", 3]}}, "executor.command[1]"),
        ({"executor": {"type": "shell", "command": ["a"], "cwd": "rel"}}, "executor.cwd"),
        ({"executor": {"type": "shell", "command": ["a"], "env": {"1X": "y"}}}, "executor.env.1X"),
        (
            {"executor": {"type": "shell", "command": ["a"], "env": {"ROTA_RUN_ID": "y"}}},
            "executor.env.ROTA_RUN_ID",
        ),
        ({"executor": {"type": "shell", "command": ["a"], "user": "x"}}, "executor.user"),
        ({"executor": {"type": "http", "url": "ftp://example.com/"}}, "executor.url"),
        ({"executor": {"type": "http", "url": "http://h/", "method": "BREW"}}, "executor.method"),
        (
            {"executor": {"type": "http", "url": "http://h/", "headers": {"X": "a\r\nb"}}},
            "executor.headers.X",
        ),
        (
            {"executor": {"type": "http", "url": "http://h/", "headers": {"rota-attempt": "1"}}},
            "executor.headers.rota-attempt",
        ),
        ({"executor": {"type": "http", "url": "http://h/", "body": "x" * 70000}}, "executor.body"),
        ({"executor": {"type": "python", "handler": "os:system"}}, "executor.handler"),
        ({"executor": {"type": "python", "handler": "not a handler"}}, "executor.handler"),
        (
            {"executor": {"type": "python", "handler": HANDLERS[0], "args": {"rota": 1}}},
            "executor.args.rota",
        ),
        (
            {"executor": {"type": "python", "handler": HANDLERS[0], "args": {"a": float("nan")}}},
            "executor.args.a",
        ),
        (
            {"executor": {"type": "python", "handler": HANDLERS[0], "args": {"a": [2**64]}}},
            "executor.args.a[0]",
        ),
        ({"name": "bad\ud800surrogate"}, "name"),
        ({"metadata": {"k": "\ud800"}}, "metadata.k"),
        ({"priority": 10}, "priority"),
        ({"priority": True}, "priority"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 7 * 86400 + 1}, "timeout_s"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"retry": {"jitter": 1.5}}, "retry.jitter"),
        ({"retry": {"backoff_multiplier": 0.5}}, "retry.backoff_multiplier"),
        ({"retry": {"backoff_initial_s": 60, "backoff_max_s": 10}}, "retry.backoff_max_s"),
        ({"retry": {"tries": 3}}, "retry.tries"),
        ({"retry": 3}, "retry"),
        ({"concurrency": "parallel"}, "concurrency"),
        ({"misfire": "always"}, "misfire"),
        ({"misfire_window_s": 0}, "misfire_window_s"),
        ({"misfire_cap": 1001}, "misfire_cap"),
        ({"tags": {"GPU": "yes"}}, "tags.GPU"),
        ({"tags": ["gpu"]}, "tags"),
        ({"tags": {"gpu": 1}}, "tags.gpu"),
        ({"depends_on": ["nope"]}, "depends_on[0]"),
        ({"depends_on": [J1, J1]}, "depends_on"),
        ({"depends_on": "j000000000001"}, "depends_on"),
        ({"paused": "yes"}, "paused"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {f"k{i}": "v" for i in range(33)}}, "metadata"),
    ],
)
def test_invalid_job_bodies_name_the_failing_field(over: dict[str, object], field: str) -> None:
    assert field_of(lambda: job_spec_from_json(body(**over), handlers=HANDLERS, now_ms=T0)) == field


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert field_of(lambda: job_spec_from_json([1], handlers=(), now_ms=T0)) == ""
    assert field_of(lambda: task_spec_from_json("x", handlers=())) == ""


def test_a_full_job_body_validates_to_its_spec_and_back() -> None:
    full = body(
        namespace="reports",
        executor={"type": "python", "handler": HANDLERS[0], "args": {"n": [1, {"x": None}]}},
        priority=9,
        timeout_s=600,
        retry={"max_attempts": 4, "backoff_initial_s": 1.5, "jitter": 0},
        concurrency="replace",
        misfire="run_all",
        misfire_window_s=300,
        misfire_cap=3,
        tags={"region": "eu", "gpu": ""},
        depends_on=[J1],
        paused=True,
        metadata={"owner": "data-team"},
    )
    spec = job_spec_from_json(full, handlers=HANDLERS, now_ms=T0)
    assert spec.misfire == MisfirePolicy("run_all", 300, 3)
    assert spec.retry == RetryPolicy(4, 1.5, 2.0, 3600.0, 0.0)
    assert isinstance(spec.executor, PythonSpec) and spec.executor.args == {"n": [1, {"x": None}]}
    out = spec_to_json(spec)
    assert out["tags"] == {"gpu": "", "region": "eu"} and out["depends_on"] == [J1]
    assert job_spec_from_json(out, handlers=HANDLERS, now_ms=T0) == spec


def test_after_s_becomes_an_instant_from_the_acceptance_time() -> None:
    spec = job_spec_from_json(body(schedule={"after_s": 90}), handlers=(), now_ms=T0)
    assert spec.schedule == AtSchedule(T0 + 90_000)
    assert spec_to_json(spec)["schedule"] == {"at": "2026-01-01T00:01:30Z"}


def test_patch_merges_objects_and_replaces_schedule_and_executor_whole() -> None:
    spec = job_spec_from_json(
        body(retry={"max_attempts": 3, "jitter": 0.5}, tags={"a": "1", "b": "2"}),
        handlers=(),
        now_ms=T0,
    )
    job = Job(J1, spec, T0, T0, 4, T0 - 1, None, None)
    patched = job_spec_from_patch(
        job,
        {
            "schedule": {"every_s": 30},  # a different kind: replaced, not merged
            "executor": {"type": "http", "url": "https://example.com/hook"},
            "retry": {"jitter": 0.25},  # merged: max_attempts stays 3
            "tags": {"a": None, "c": "3"},  # null deletes one key
            "priority": None,  # null restores the default
        },
        handlers=(),
        now_ms=T0,
    )
    assert patched.schedule == EverySchedule(30)
    assert patched.executor == HttpSpec("https://example.com/hook")
    assert (patched.retry.max_attempts, patched.retry.jitter) == (3, 0.25)
    assert patched.tags == {"b": "2", "c": "3"} and patched.priority == 5
    with pytest.raises(ValidationError) as info:
        job_spec_from_patch(job, {"version": 5}, handlers=(), now_ms=T0)
    assert info.value.field == "version"
    assert merge_patch({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_task_bodies_and_idempotency_keys() -> None:
    task = task_spec_from_json(
        {"executor": {"type": "shell", "command": ["true"]}, "priority": 7, "tags": {"gpu": "1"}},
        handlers=(),
    )
    assert task == TaskSpec(ShellSpec(("true",)), priority=7, tags={"gpu": "1"})
    bad = {"executor": {"type": "shell", "command": ["true"]}, "schedule": {"every_s": 1}}
    assert field_of(lambda: task_spec_from_json(bad, handlers=())) == "schedule"
    assert field_of(lambda: task_spec_from_json({}, handlers=())) == "executor"
    assert idempotency_key_from_header(None) is None
    assert idempotency_key_from_header("order-42") == "order-42"
    for bad_key in ("", "x" * 256, "tab\there", "ünïcode"):
        with pytest.raises(ValidationError) as info:
            idempotency_key_from_header(bad_key)
        assert info.value.field == "Idempotency-Key"


# ---------------------------------------------------------------- output


def make_run(**over: object) -> Run:
    fields: dict[str, object] = {
        "id": R1,
        "job_id": J1,
        "kind": "scheduled",
        "origin_id": R1,
        "scheduled_at": T0,
        "attempt": 1,
        "state": "queued",
        "node": None,
        "token": 2,
        "queued_at": T0 + 5,
        "priority": 5,
        "timeout_s": 60,
        "executor": ShellSpec(("true",)),
        "retry": RetryPolicy(),
    }
    fields.update(over)
    return Run(**fields)  # type: ignore[arg-type]


def test_json_output_uses_exactly_the_spec_field_names_and_rfc3339() -> None:
    spec = JobSpec("n", EverySchedule(60), ShellSpec(("true",)))
    job = Job(J1, spec, T0, T0 + 1500, 2, T0 - 1, T0 + 60_000, T0 + 60_000)
    out = job_to_json(job)
    assert list(out) == [
        "id",
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
        "created_at",
        "updated_at",
        "next_fire_at",
        "version",
    ]
    assert (out["created_at"], out["updated_at"]) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01.500Z",
    )
    assert out["next_fire_at"] == "2026-01-01T00:01:00Z"
    run = make_run(state="running", node="n2", started_at=T0 + 10)
    assert run_to_json(run) == {
        "id": R1,
        "job_id": J1,
        "scheduled_at": "2026-01-01T00:00:00Z",
        "attempt": 1,
        "state": "running",
        "node": "n2",
        "token": 2,
        "queued_at": "2026-01-01T00:00:00.005Z",
        "started_at": "2026-01-01T00:00:00.010Z",
        "finished_at": None,
        "exit_code": None,
        "error": None,
        "output_tail": "",
    }


def test_idempotency_keys_are_per_slot_and_attempt_or_per_origin() -> None:
    assert make_run().idempotency_key == f"{J1}:{T0}:1"
    assert make_run(id=R2, attempt=2).idempotency_key == f"{J1}:{T0}:2"
    assert make_run(kind="manual").idempotency_key == f"{R1}:{T0}:1"
    task = make_run(job_id=None, kind="task", id=R2, origin_id=R1, attempt=3)
    assert task.idempotency_key == f"{R1}:{T0}:3"


# ---------------------------------------------------------------- backoff


@given(
    st.integers(1, 100),
    st.floats(0, 100),
    st.floats(1, 10),
    st.floats(0, 1),
    st.sampled_from([R1, R2]),
)
def test_retry_delay_is_bounded_exponential_with_deterministic_jitter(
    attempt: int, initial: float, mult: float, jitter: float, run_id: str
) -> None:
    policy = RetryPolicy(100, initial, mult, max(initial, 300.0), jitter)
    delay = retry_delay_ms(policy, run_id, attempt)
    base_s = min(initial * mult ** (attempt - 1), policy.backoff_max_s)
    assert base_s * (1 - jitter) * 1000 - 2 <= delay <= base_s * 1000 + 1
    assert delay == retry_delay_ms(policy, run_id, attempt)


def test_retry_delay_grows_then_caps_and_jitter_varies_by_attempt() -> None:
    policy = RetryPolicy(10, 1.0, 2.0, 10.0, 0.0)
    assert [retry_delay_ms(policy, R1, a) for a in range(1, 7)] == [
        1000,
        2000,
        4000,
        8000,
        10000,
        10000,
    ]
    jittered = RetryPolicy(10, 8.0, 1.0, 8.0, 0.5)
    delays = {retry_delay_ms(jittered, R1, a) for a in range(1, 20)}
    assert len(delays) > 10 and all(4000 <= d <= 8000 for d in delays)


# ---------------------------------------------------------------- codecs


def text(min_size: int = 0, max_size: int = 5) -> st.SearchStrategy[str]:
    """Strings the model accepts: valid UTF-8 without NUL."""
    chars = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(chars, min_size=min_size, max_size=max_size)


EXECUTORS = st.one_of(
    st.builds(
        ShellSpec,
        st.lists(text(1, 8), min_size=1, max_size=3).map(tuple),
        st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True), text(), max_size=2),
        st.sampled_from([None, "/srv"]),
    ),
    st.builds(
        HttpSpec,
        st.sampled_from(["http://a/", "https://b.example:8443/x?y=1"]),
        st.sampled_from(["GET", "POST"]),
        st.dictionaries(
            st.sampled_from(["X-A", "Accept"]),
            text().filter(lambda v: "\r" not in v and "\n" not in v),
            max_size=2,
        ),
        st.sampled_from([None, "", "{}"]),
    ),
    st.builds(
        PythonSpec,
        st.sampled_from(HANDLERS),
        st.dictionaries(
            st.sampled_from(["a", "b"]),
            st.recursive(
                st.none() | st.integers(-(2**53), 2**53) | text(0, 4),
                lambda c: st.lists(c, max_size=2),
                max_leaves=4,
            ),
            max_size=2,
        ),
    ),
)
RETRIES = st.builds(
    RetryPolicy,
    st.integers(1, 5),
    st.floats(0, 10),
    st.floats(1, 3),
    st.just(60.0),
    st.floats(0, 1),
)
SCHEDULES = st.one_of(
    st.builds(EverySchedule, st.integers(1, 3600), st.just(0), st.integers(0, 30)),
    st.sampled_from([CronSchedule("*/5 * * * *"), CronSchedule("0 3 * * *", "Europe/Berlin", 60)]),
    st.builds(AtSchedule, st.integers(0, T0 * 2)),
)
JOB_SPECS = st.builds(
    JobSpec,
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    SCHEDULES,
    EXECUTORS,
    st.sampled_from(["default", "ops"]),
    st.integers(0, 9),
    st.integers(1, 86400),
    RETRIES,
    st.sampled_from(["allow", "forbid", "replace"]),
    st.builds(
        MisfirePolicy,
        st.sampled_from(["skip", "run_once", "run_all"]),
        st.integers(1, 600),
        st.integers(1, 50),
    ),
    st.dictionaries(st.sampled_from(["gpu", "region"]), text(0, 3), max_size=2),
    st.lists(st.sampled_from([J1, "j0000000000ff"]), unique=True, max_size=2).map(tuple),
    st.booleans(),
    st.dictionaries(st.sampled_from(["owner", "team"]), text(), max_size=2),
)
TASK_SPECS = st.builds(TaskSpec, EXECUTORS, st.integers(0, 9), st.integers(1, 600), RETRIES)


@settings(max_examples=60)
@given(JOB_SPECS, TASK_SPECS)
def test_specs_round_trip_through_msgpack(spec: JobSpec, task: TaskSpec) -> None:
    assert job_spec_in(msgpack.unpackb(msgpack.packb(job_spec_out(spec)))) == spec
    assert task_spec_in(msgpack.unpackb(msgpack.packb(task_spec_out(task)))) == task


def test_job_and_run_records_round_trip_and_refuse_garbage() -> None:
    spec = JobSpec("n", CronSchedule("0 * * * *"), HttpSpec("http://h/"), tags={"gpu": "1"})
    job = Job(J1, spec, T0, T0, 3, T0 - 1, T0 + 3_600_000, T0 + 3_600_000, skipped_slots=7)
    assert decode_job(encode_job(job)) == job
    run = make_run(
        state="failed", node="n1", started_at=T0, finished_at=T0 + 9, exit_code=2, error="x"
    )
    assert decode_run(encode_run(run)) == run
    assert encode_run(run) == encode_run(decode_run(encode_run(run)))  # canonical
    for raw in (b"\xc1", msgpack.packb([9]), msgpack.packb([2, *range(9)])):
        with pytest.raises(DecodeError):
            decode_job(raw)
    bad_state = msgpack.unpackb(encode_run(run))
    bad_state[7] = "exploded"
    with pytest.raises(DecodeError):
        decode_run(msgpack.packb(bad_state))


SPEC = JobSpec("n", EverySchedule(60), ShellSpec(("true",)))
TASK = TaskSpec(PythonSpec(HANDLERS[0], {"a": 1}), priority=8)
ONE_OF_EACH: list[Command] = [
    CreateJob(SPEC, T0),
    UpdateJob(J1, SPEC, 3, T0),
    DeleteJob(J1, None, T0),
    DeleteJob(J1, 2, T0),
    SetPaused(J1, True, T0),
    TriggerJob(J1, T0),
    SubmitTasks((TASK, TASK), ("k1", None), T0),
    Fire(((J1, T0), (J1, T0 + 60_000)), T0),
    SkipSlots(J1, T0, 12, "run_all", T0),
    Assign((R1, R2), "n1", T0),
    Start(R1, "n1", 7, T0),
    Complete(R1, 7, "failed", -9, "killed", "tail…", T0),
    Complete(R1, 7, "succeeded", None, None, "", T0),
    CancelRun(R1, T0),
    Steal((R1,), "n1", "n2", T0),
    NodeGone("n3", T0),
    TimeoutRun(R1, 7, T0),
]


def test_every_command_has_a_round_trip_case() -> None:
    assert {type(c) for c in ONE_OF_EACH} == set(typing.get_args(Command))


@pytest.mark.parametrize("cmd", ONE_OF_EACH, ids=lambda c: type(c).__name__)
def test_commands_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb("CreateJob"),
        msgpack.packb([]),
        msgpack.packb([99, 1]),
        msgpack.packb([True, J1, 1]),
        msgpack.packb([5, J1]),  # arity
        msgpack.packb([5, J1, 1, 2]),  # arity
        msgpack.packb([5, "job-1", T0]),  # not a job id
        msgpack.packb([5, J1, -1]),  # now_ms out of range
        msgpack.packb([4, J1, 1, T0]),  # paused is not a bool
        msgpack.packb([7, [], T0]),  # empty batch
        msgpack.packb([7, [[J1]], T0]),  # fire item shape
        msgpack.packb([9, [R1, R1], "n1", T0]),  # duplicate run
        msgpack.packb([9, [R1], "N 1", T0]),  # node id
        msgpack.packb([10, R1, "n1", 0, T0]),  # token 0
        msgpack.packb([11, R1, 7, "cancelled", None, None, "", T0]),  # not an outcome
        msgpack.packb([11, R1, 7, "failed", None, None, "x" * 5000, T0]),  # tail too long
        msgpack.packb([13, [R1], "n1", "n1", T0]),  # steal from itself
        msgpack.packb([6, [task_spec_out(TASK)], [], T0]),  # one key per task
        msgpack.packb([16, [[task_spec_out(TASK)], [0, 1]], [None, None], T0]),  # no spec 1
        msgpack.packb([16, [[task_spec_out(TASK)], [0, True]], [None, None], T0]),
        msgpack.packb([16, [[task_spec_out(TASK)]], [None], T0]),  # table shape
        msgpack.packb([8, J1, T0, 0, "skip", T0]),  # count 0
        msgpack.packb([8, J1, T0, 1, "sometimes", T0]),
        msgpack.packb([1, ["n"] * 13, T0]),
        msgpack.packb([1, job_spec_out(SPEC)[:12], T0]),
        msgpack.packb([5, J1, T0]) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_commands_are_refused(raw: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        decode_command(raw)


def test_a_task_batch_writes_each_distinct_spec_once_and_old_entries_still_read() -> None:
    other = TaskSpec(ShellSpec(("echo", "b")))
    cmd = SubmitTasks((TASK, other, TASK, TASK), ("k", None, None, None), T0)
    raw = encode_command(cmd)
    assert msgpack.unpackb(raw)[:2] == [
        16,
        [[task_spec_out(TASK), task_spec_out(other)], [0, 1, 0, 0]],
    ]
    assert decode_command(raw) == cmd
    old = msgpack.packb([6, [task_spec_out(t) for t in cmd.tasks], list(cmd.idempotency_keys), T0])
    assert decode_command(old) == cmd  # an entry written before tag 16, from the log
    bad = msgpack.unpackb(raw)
    bad[1][0][1][1] = 10  # priority out of range inside the table
    with pytest.raises(CommandDecodeError, match="priority"):
        decode_command(msgpack.packb(bad))


def test_an_invalid_spec_inside_a_command_is_refused() -> None:
    spec = job_spec_out(SPEC)
    spec[4] = 10  # priority
    with pytest.raises(CommandDecodeError, match="priority"):
        decode_command(msgpack.packb([1, spec, T0]))
    spec = job_spec_out(SPEC)
    spec[2] = ["cron", "not cron", "UTC", 0]
    with pytest.raises(CommandDecodeError, match=r"schedule\.cron"):
        decode_command(msgpack.packb([1, spec, T0]))


def test_batches_and_sizes_are_bounded() -> None:
    with pytest.raises(ValidationError, match="items"):
        Fire(tuple((J1, T0 + i) for i in range(BATCH_ITEMS_MAX + 1)), T0)
    big = tuple(TaskSpec(ShellSpec(("x" * 60_000, str(i)))) for i in range(100))
    with pytest.raises(CommandTooLarge):
        encode_command(SubmitTasks(big, (None,) * 100, T0))
    with pytest.raises(CommandDecodeError):
        decode_command(b"\x90" * (COMMAND_BYTES_MAX + 1))


def test_commands_check_their_fields_when_built() -> None:
    with pytest.raises(ValidationError) as info:
        Start(R1, "n1", 0, T0)
    assert info.value.field == "token"
    with pytest.raises(ValidationError) as info:
        SubmitTasks((TASK,), ("k", "k2"), T0)
    assert info.value.field == "idempotency_keys"
    with pytest.raises(dataclasses.FrozenInstanceError):
        CancelRun(R1, T0).now_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "result",
    [
        Ok(),
        Ok((J1,)),
        Ok((R1, R2), 3),
        Rejected("stale_token", "old"),
        Rejected("invalid", "x", "depends_on[0]"),
    ],
)
def test_results_round_trip(result: Ok | Rejected) -> None:
    assert decode_result(encode_result(result)) == result


def test_decoded_policies_and_schedules_are_shared_but_never_confused() -> None:
    from node.records import misfire_in, retry_in, schedule_in

    assert retry_in([3, 1.0, 2.0, 60.0, 0.1]) is retry_in([3, 1.0, 2.0, 60.0, 0.1])
    assert misfire_in(["skip", 60, 10]) is misfire_in(["skip", 60, 10])
    assert schedule_in(["every", 60, 0, 0]) is schedule_in(["every", 60, 0, 0])
    zero, minus_zero = retry_in([1, 0.0, 2.0, 60.0, 0.0]), retry_in([1, -0.0, 2.0, 60.0, 0.0])
    assert zero == minus_zero and zero is not minus_zero  # equal, but encode differently
    assert repr(minus_zero.backoff_initial_s) == "-0.0"
