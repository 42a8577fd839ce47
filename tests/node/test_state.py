"""The replicated state machine: firing at most once, fencing, overlap, retries,
dependencies, stealing, lost nodes, retention, queries, and determinism across
replicas, reloads from persisted changes, and snapshot images."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.commands import (
    Assign,
    CancelRun,
    Command,
    Complete,
    CreateJob,
    DeleteJob,
    Fire,
    NodeGone,
    Ok,
    Outcome,
    Rejected,
    Result,
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
    Concurrency,
    JobSpec,
    RetryPolicy,
    Run,
    ShellSpec,
    TaskSpec,
    ValidationError,
    retry_delay_ms,
)
from node.queries import (
    Page,
    job_runs,
    list_jobs,
    list_runs,
    next_fire_times,
    running_counts,
)
from node.records import DecodeError, encode_run
from node.schedule import AtSchedule, CronSchedule, EverySchedule
from node.sortedlist import SUBLIST_ITEMS_MAX, SortedList
from node.state import TABLE_RUNS, Limits, SchedulerState

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a whole minute
MIN = 60_000
SHELL = ShellSpec(("/bin/true",))


def spec(name: str = "job", **over: object) -> JobSpec:
    fields: dict[str, object] = {"schedule": EverySchedule(60), "executor": SHELL}
    fields.update(over)
    return JobSpec(name, **fields)  # type: ignore[arg-type]


class Node:
    """One replica with a Raft index counter."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.state = SchedulerState(limits)
        self.index = 0

    def __call__(self, cmd: Command) -> Result:
        self.index += 1
        return self.state.apply(cmd, self.index)

    def ok(self, cmd: Command) -> tuple[str, ...]:
        result = self(cmd)
        assert isinstance(result, Ok), result
        return result.ids

    def rejected(self, cmd: Command) -> Rejected:
        """Apply ``cmd`` expecting a rejection that changes nothing at all."""
        self.state.drain_changes()
        before = list(self.state.records())
        result = self(cmd)
        assert isinstance(result, Rejected), result
        assert list(self.state.records()) == before
        assert self.state.drain_changes() == []
        return result

    def run(self, run_id: str) -> Run:
        run = self.state.run(run_id)
        assert run is not None, run_id
        return run

    def create(self, job: JobSpec, now: int = T0 + 1) -> str:
        (job_id,) = self.ok(CreateJob(job, now))
        return job_id

    def fire(self, job_id: str, now: int | None = None) -> str:
        """Fire the job's next slot (at its due time unless ``now`` is given)."""
        job = self.state.job(job_id)
        assert job is not None and job.next_slot_ms is not None and job.next_fire_at is not None
        (run_id,) = self.ok(Fire(((job_id, job.next_slot_ms),), now or job.next_fire_at))
        return run_id

    def start(self, run_id: str, node: str = "n1", now: int = T0) -> None:
        self.ok(Assign((run_id,), node, now))
        self.ok(Start(run_id, node, self.run(run_id).token, now))

    def finish(self, run_id: str, outcome: str = "succeeded", now: int = T0) -> tuple[str, ...]:
        token = self.run(run_id).token
        return self.ok(Complete(run_id, token, outcome, 0, None, "", now))  # type: ignore[arg-type]


# ---------------------------------------------------------------- jobs


def test_create_schedules_the_first_slot_after_acceptance() -> None:
    n = Node()
    job_id = n.create(spec(), now=T0 + 1)
    job = n.state.job(job_id)
    assert job is not None
    assert (job.version, job.created_at, job.next_slot_ms, job.next_fire_at) == (
        1,
        T0 + 1,
        T0 + MIN,
        T0 + MIN,
    )
    on_time = n.create(spec("on-time"), now=T0)
    assert n.state.job(on_time).next_slot_ms == T0  # type: ignore[union-attr]
    jittered = n.create(spec("jittered", schedule=EverySchedule(60, 0, 30)), now=T0 + 1)
    job = n.state.job(jittered)
    assert job is not None and job.next_fire_at is not None
    assert job.next_slot_ms == T0 + MIN and T0 + MIN <= job.next_fire_at < T0 + MIN + 30_000


def test_names_are_unique_per_namespace() -> None:
    n = Node()
    n.create(spec("a"))
    assert n.rejected(CreateJob(spec("a"), T0)).code == "conflict"
    n.create(spec("a", namespace="other"))
    b = n.create(spec("b"))
    r = n.rejected(UpdateJob(b, spec("a"), 1, T0))
    assert (r.code, r.field) == ("conflict", "name")


def test_update_is_compare_and_set_on_the_version() -> None:
    n = Node()
    job_id = n.create(spec())
    n.ok(UpdateJob(job_id, spec(priority=9), 1, T0 + 5))
    job = n.state.job(job_id)
    assert job is not None and (job.version, job.updated_at, job.spec.priority) == (2, T0 + 5, 9)
    assert n.rejected(UpdateJob(job_id, spec(priority=1), 1, T0)).code == "version_conflict"
    assert n.rejected(UpdateJob("j0000000000ff", spec(), 1, T0)).code == "not_found"
    n.ok(UpdateJob(job_id, spec(priority=9), 2, T0 + 9))  # the same spec: no new version
    assert n.state.job(job_id).version == 2  # type: ignore[union-attr]


def test_delete_checks_version_and_dependents_and_takes_the_runs() -> None:
    n = Node()
    upstream = n.create(spec("up"))
    downstream = n.create(spec("down", depends_on=(upstream,)))
    assert n.rejected(DeleteJob(upstream, None, T0)).code == "conflict"
    assert n.rejected(DeleteJob(downstream, 7, T0)).code == "version_conflict"
    run_id = n.fire(upstream)
    n.ok(DeleteJob(downstream, 1, T0))
    n.ok(DeleteJob(upstream, None, T0))
    assert n.state.job(upstream) is None and n.state.run(run_id) is None
    changes = {(t, k): v for t, k, v in n.state.drain_changes()}
    assert changes[(TABLE_RUNS, run_id.encode())] is None
    assert n.rejected(DeleteJob(upstream, None, T0)).code == "not_found"


def test_pause_clears_the_next_fire_and_resume_continues_from_then() -> None:
    n = Node()
    job_id = n.create(spec())
    n.ok(SetPaused(job_id, True, T0 + 1))
    job = n.state.job(job_id)
    assert job is not None and job.spec.paused and job.next_fire_at is None and job.version == 2
    assert n.ok(Fire(((job_id, T0 + MIN),), T0 + MIN)) == ()  # ignored while paused
    n.ok(SetPaused(job_id, False, T0 + 10 * MIN + 1))
    job = n.state.job(job_id)
    assert job is not None and job.next_slot_ms == T0 + 11 * MIN and job.version == 3
    n.ok(SetPaused(job_id, False, T0 + 10 * MIN + 2))  # already running: no new version
    assert n.state.job(job_id).version == 3  # type: ignore[union-attr]


def test_a_schedule_change_moves_the_cursor_forward_never_back() -> None:
    n = Node()
    job_id = n.create(spec(schedule=EverySchedule(60)), now=T0 + 1)
    n.fire(job_id)  # slot T0 + 1 min
    # A leader whose clock is behind: the cursor stays on the fired slot.
    n.ok(UpdateJob(job_id, spec(schedule=EverySchedule(30)), 1, T0 + 30_000))
    job = n.state.job(job_id)
    assert job is not None and job.last_slot_ms == T0 + MIN and job.next_slot_ms == T0 + 90_000
    n.ok(UpdateJob(job_id, spec(schedule=EverySchedule(60)), 2, T0 + 3 * MIN + 1))
    job = n.state.job(job_id)
    assert job is not None and job.last_slot_ms == T0 + 3 * MIN and job.next_slot_ms == T0 + 4 * MIN


def test_dependencies_must_exist_and_never_form_a_cycle() -> None:
    n = Node()
    a = n.create(spec("a"))
    b = n.create(spec("b", depends_on=(a,)))
    c = n.create(spec("c", depends_on=(b,)))
    r = n.rejected(CreateJob(spec("d", depends_on=(a, "j0000000000ff")), T0))
    assert (r.code, r.field) == ("invalid", "depends_on[1]")
    r = n.rejected(UpdateJob(a, spec("a", depends_on=(c,)), 1, T0))
    assert (r.code, r.field) == ("invalid", "depends_on")
    r = n.rejected(UpdateJob(a, spec("a", depends_on=(a,)), 1, T0))
    assert (r.code, r.field) == ("invalid", "depends_on[0]")


# ---------------------------------------------------------------- firing


def test_a_slot_fires_at_most_once_whatever_the_order_of_fire_commands() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow"))
    slots = [T0 + k * MIN for k in range(1, 4)]
    now = T0 + 4 * MIN
    # Reordered and duplicated: only the job's next slot is ever taken.
    assert n(Fire(((job_id, slots[1]),), now)) == Ok((), 1)
    messy = ((job_id, slots[1]), (job_id, slots[0]), (job_id, slots[0]), (job_id, slots[1]))
    result = n(Fire(messy, now))
    assert isinstance(result, Ok) and result.ignored == 2
    first = result.ids
    assert len(first) == 2
    assert n.ok(Fire(((job_id, slots[0]), (job_id, slots[1])), now)) == ()
    assert n.state.fired_run(job_id, slots[0]) == first[0]
    assert n.state.fired_run(job_id, slots[1]) == first[1]
    assert n.ok(Fire(((job_id, slots[2] + 1),), now)) == ()  # not a slot of the schedule
    assert n.ok(Fire(((job_id, T0 + 5 * MIN),), now)) == ()  # not yet due
    assert n(Fire(((job_id, slots[2]),), now)) == Ok((n.state.fired_run(job_id, slots[2]) or "",))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2)), max_size=30))
def test_any_sequence_of_fire_items_fires_each_slot_once_and_in_order(
    items: list[tuple[int, int]],
) -> None:
    n = Node()
    jobs = [n.create(spec(f"j{i}", concurrency="allow")) for i in range(3)]
    fired: list[tuple[str, int]] = []
    for k, j in items:
        slot = T0 + k * MIN
        result = n(Fire(((jobs[j], slot),), T0 + 10 * MIN))
        assert isinstance(result, Ok)
        if result.ids:
            fired.append((jobs[j], slot))
    assert len(fired) == len(set(fired))
    for job_id in jobs:
        mine = [slot for j, slot in fired if j == job_id]
        assert mine == [T0 + k * MIN for k in range(1, len(mine) + 1)]
    n.state.check_invariants()


def test_skip_slots_moves_the_cursor_and_accounts_for_the_slots() -> None:
    n = Node()
    job_id = n.create(spec())
    (run_id,) = n.ok(SkipSlots(job_id, T0 + 5 * MIN, 5, "skip", T0 + 9 * MIN))
    run = n.run(run_id)
    assert (run.state, run.scheduled_at, run.kind) == ("skipped", T0 + 5 * MIN, "scheduled")
    assert run.error is not None and "5 slot(s)" in run.error
    job = n.state.job(job_id)
    assert job is not None and (job.last_slot_ms, job.skipped_slots) == (T0 + 5 * MIN, 5)
    assert n.ok(SkipSlots(job_id, T0 + 5 * MIN, 5, "skip", T0 + 9 * MIN)) == ()
    r = n.rejected(SkipSlots(job_id, T0 + 6 * MIN + 1, 1, "skip", T0 + 9 * MIN))
    assert (r.code, r.field) == ("invalid", "through_slot_ms")
    assert n.rejected(SkipSlots(job_id, T0 + 20 * MIN, 1, "skip", T0 + 9 * MIN)).code == "invalid"


def test_skip_slots_planned_on_a_lagging_replica_counts_only_what_it_skips() -> None:
    # A new leader whose replica still had the cursor at T0 planned "skip 3 slots
    # through T0+3min"; by the time that applies, an earlier leader's Fire of T0+1min
    # and T0+2min is in. Only T0+3min is skipped (found by the scheduler simulation).
    n = Node()
    job_id = n.create(spec(concurrency="allow"))
    n.fire(job_id)
    n.fire(job_id)
    (run_id,) = n.ok(SkipSlots(job_id, T0 + 3 * MIN, 3, "skip", T0 + 9 * MIN))
    job = n.state.job(job_id)
    assert job is not None and (job.last_slot_ms, job.skipped_slots) == (T0 + 3 * MIN, 1)
    error = n.run(run_id).error
    assert error is not None and "1 slot(s)" in error


def test_a_one_off_in_the_past_is_due_at_once() -> None:
    n = Node()
    job_id = n.create(spec(schedule=AtSchedule(T0 - 5000)), now=T0)
    job = n.state.job(job_id)
    assert job is not None and job.next_slot_ms == T0 - 5000
    n.fire(job_id, now=T0)
    assert n.state.job(job_id).next_fire_at is None  # type: ignore[union-attr]


# ---------------------------------------------------------------- overlap


@pytest.mark.parametrize("concurrency", ["forbid", "replace", "allow"])
def test_overlap_policies(concurrency: Concurrency) -> None:
    n = Node()
    job_id = n.create(spec(concurrency=concurrency))
    first = n.fire(job_id)
    n.start(first)
    token = n.run(first).token
    second = n.fire(job_id)
    if concurrency == "forbid":
        skipped = n.run(second)
        assert (
            skipped.state == "skipped" and skipped.error == f"overlap: run {first} is still running"
        )
        assert n.run(first).state == "running"
        assert n.state.job(job_id).skipped_slots == 1  # type: ignore[union-attr]
    elif concurrency == "replace":
        old = n.run(first)
        assert (old.state, old.error) == ("cancelled", f"replaced by {second}")
        assert old.token != token and n.run(second).state == "queued"
        r = n.rejected(Complete(first, token, "succeeded", 0, None, "", T0))
        assert r.code == "stale_token"
    else:
        assert n.run(first).state == "running" and n.run(second).state == "queued"
    # Manual triggers obey the same policy.
    (manual,) = n.ok(TriggerJob(job_id, T0 + 3 * MIN))
    expected = {"forbid": "skipped", "replace": "queued", "allow": "queued"}[concurrency]
    assert (n.run(manual).state, n.run(manual).kind) == (expected, "manual")


def test_trigger_works_on_a_paused_job_and_needs_a_job() -> None:
    n = Node()
    job_id = n.create(spec(paused=True))
    (run_id,) = n.ok(TriggerJob(job_id, T0 + 7))
    run = n.run(run_id)
    assert (run.state, run.scheduled_at, run.idempotency_key) == (
        "queued",
        T0 + 7,
        f"{run_id}:{T0 + 7}:1",
    )
    assert n.rejected(TriggerJob("j0000000000ff", T0)).code == "not_found"


# ---------------------------------------------------------------- fencing


def test_start_and_complete_need_the_current_token_or_change_nothing() -> None:
    n = Node()
    job_id = n.create(spec())
    run_id = n.fire(job_id)
    assert n.run(run_id).token == n.index  # the creating entry
    assert (
        n.rejected(Start(run_id, "n1", n.run(run_id).token, T0)).code == "stale_token"
    )  # unplaced
    n.ok(Assign((run_id,), "n1", T0))
    token = n.run(run_id).token
    assert token == n.index
    assert n.rejected(Start(run_id, "n1", token - 1, T0)).code == "stale_token"
    assert n.rejected(Start(run_id, "n2", token, T0)).code == "stale_token"
    assert n.rejected(Complete(run_id, token, "succeeded", 0, None, "", T0)).code == "stale_token"
    n.ok(Start(run_id, "n1", token, T0 + 1))
    assert n.rejected(Start(run_id, "n1", token, T0 + 2)).code == "stale_token"  # twice
    assert (
        n.rejected(Complete(run_id, token + 1, "succeeded", 0, None, "", T0)).code == "stale_token"
    )
    assert n.ok(Complete(run_id, token, "succeeded", 0, None, "done", T0 + 5)) == (run_id,)
    run = n.run(run_id)
    assert (run.state, run.finished_at, run.exit_code, run.output_tail) == (
        "succeeded",
        T0 + 5,
        0,
        "done",
    )
    assert n.rejected(Complete(run_id, run.token, "failed", 1, None, "", T0)).code == "stale_token"
    assert n.rejected(Start("r0000000000ff000000", "n1", 1, T0)).code == "not_found"


def test_cancel_a_queued_or_a_running_run() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow"))
    queued, running = n.fire(job_id), n.fire(job_id)
    n.start(running)
    token = n.run(running).token
    n.ok(CancelRun(queued, T0))
    n.ok(CancelRun(running, T0))
    assert n.run(queued).state == n.run(running).state == "cancelled"
    assert n.run(running).token != token
    assert n.rejected(Complete(running, token, "succeeded", 0, None, "", T0)).code == "stale_token"
    assert n.rejected(CancelRun(running, T0)).code == "conflict"
    assert n.state.running_count("n1") == 0


def test_assign_only_places_unassigned_runs_past_not_before() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow", retry=RetryPolicy(2, 10, 1, 10, 0)))
    a, b = n.fire(job_id), n.fire(job_id)
    n.start(a)
    (_, retry) = n.finish(a, "failed", now=T0 + 3 * MIN)
    assert n(Assign((a, b, retry, "r0000000000ff000000"), "n2", T0 + 3 * MIN)) == Ok((b,), 3)
    assert n(Assign((retry,), "n2", T0 + 3 * MIN + 10_000)) == Ok((retry,))
    assert n.run(b).token == n.index - 1 and n.run(retry).node == "n2"


def test_steal_moves_only_runs_still_queued_on_the_victim() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow"))
    runs = [n.fire(job_id) for _ in range(4)]
    n.ok(Assign(tuple(runs[:3]), "n1", T0))
    n.ok(Start(runs[0], "n1", n.run(runs[0]).token, T0))  # the victim started one meanwhile
    result = n(Steal(tuple(runs), "n1", "n2", T0))
    assert result == Ok((runs[1], runs[2]), 2)
    assert [n.run(r).node for r in runs] == ["n1", "n2", "n2", None]
    assert all(n.run(r).token == n.index for r in runs[1:3])
    old = n.index - 1
    assert n.rejected(Start(runs[1], "n1", old, T0)).code == "stale_token"


def test_a_lost_node_requeues_its_queue_and_retries_its_running_runs() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow", retry=RetryPolicy(2, 1, 2, 10, 0.5)))
    running, queued = n.fire(job_id), n.fire(job_id)
    n.start(running, "n3")
    n.ok(Assign((queued,), "n3", T0))
    old_token = n.run(running).token
    ids = n.ok(NodeGone("n3", T0 + 4 * MIN))
    assert ids[:2] == (queued, running) and len(ids) == 3
    assert (n.run(queued).node, n.run(queued).state, n.run(queued).token) == (
        None,
        "queued",
        n.index,
    )
    lost = n.run(running)
    assert (lost.state, lost.error, lost.finished_at) == ("failed", "node lost", T0 + 4 * MIN)
    again = n.run(ids[2])
    assert (again.attempt, again.origin_id, again.scheduled_at) == (2, running, lost.scheduled_at)
    assert again.idempotency_key != lost.idempotency_key
    assert T0 + 4 * MIN + 500 <= (again.not_before or 0) <= T0 + 4 * MIN + 1000
    assert (
        n.rejected(Complete(running, old_token, "succeeded", 0, None, "", T0)).code == "stale_token"
    )
    assert n.ok(NodeGone("n3", T0)) == ()


# ---------------------------------------------------------------- retries and timeouts


def test_retries_count_attempts_with_backoff_until_max_attempts() -> None:
    n = Node()
    policy = RetryPolicy(3, 10, 3, 60, 0.2)
    job_id = n.create(spec(retry=policy))
    run_id, now = n.fire(job_id), T0 + 2 * MIN
    attempts = []
    while True:
        n.start(run_id, now=now)
        ids = n.finish(run_id, "failed", now=now)
        attempts.append(n.run(run_id).attempt)
        if len(ids) == 1:
            break
        retry = n.run(ids[1])
        delay = retry_delay_ms(policy, run_id, n.run(run_id).attempt)
        assert retry.not_before == now + delay and retry.queued_at == now
        base = min(10_000 * 3 ** (retry.attempt - 2), 60_000)
        assert base * 0.8 <= delay <= base
        run_id, now = retry.id, (retry.not_before or 0)
    assert attempts == [1, 2, 3]


def test_timeouts_need_the_deadline_and_the_token_and_retry() -> None:
    n = Node()
    job_id = n.create(spec(timeout_s=30, retry=RetryPolicy(2)))
    run_id = n.fire(job_id)
    n.start(run_id, now=T0 + MIN)
    token = n.run(run_id).token
    assert n.rejected(TimeoutRun(run_id, token, T0 + MIN + 29_999)).code == "conflict"
    assert n.rejected(TimeoutRun(run_id, token + 1, T0 + 2 * MIN)).code == "stale_token"
    ids = n.ok(TimeoutRun(run_id, token, T0 + 2 * MIN))
    assert len(ids) == 2 and n.run(run_id).state == "timed_out"
    assert n.run(ids[1]).attempt == 2
    assert n.rejected(Complete(run_id, token, "succeeded", 0, None, "", T0)).code == "stale_token"


# ---------------------------------------------------------------- dependencies


def test_a_run_waits_for_its_dependencies_and_is_skipped_if_they_fail() -> None:
    n = Node()
    up = n.create(spec("up", concurrency="allow"))
    down = n.create(spec("down", concurrency="allow", depends_on=(up,)))
    never = n.run(n.fire(down))
    assert (never.state, never.error) == ("skipped", f"dependency {up} has not run")
    good = n.fire(up)
    n.start(good)
    waiting = n.fire(down)  # up is running: the new run waits, queued
    assert n.run(waiting).state == "queued"
    n.finish(good)
    assert n.run(waiting).state == "queued"  # released: the planner may place it
    n.ok(Assign((waiting,), "n2", T0))
    bad = n.fire(up)
    held = n.fire(down)
    n.start(bad)
    n.finish(bad, "failed")
    skipped = n.run(held)
    assert (skipped.state, skipped.error) == (
        "skipped",
        f"dependency {up}: latest run {bad} is failed",
    )
    assert n.run(n.fire(down)).error == f"dependency {up}: latest run {bad} is failed"
    assert n.run(waiting).state == "queued"  # placed before, not affected
    assert n.state.job(down).skipped_slots == 2  # type: ignore[union-attr]


def test_a_failed_dependency_skips_the_waiting_runs_down_the_chain() -> None:
    n = Node()
    a = n.create(spec("a", concurrency="allow"))
    b = n.create(spec("b", concurrency="allow", depends_on=(a,)))
    c = n.create(spec("c", concurrency="allow", depends_on=(b,)))
    job = n.state.job(a)
    assert job is not None and job.next_slot_ms is not None
    slot = job.next_slot_ms
    fired = n.ok(Fire(((a, slot), (b, slot), (c, slot)), slot))  # a first: b and c wait
    assert [n.run(r).state for r in fired] == ["queued"] * 3
    n.ok(CancelRun(fired[0], slot + 1))
    assert [n.run(r).state for r in fired] == ["cancelled", "skipped", "skipped"]
    assert n.run(fired[2]).error == f"dependency {b} was skipped ({a})"
    n.state.check_invariants()


# ---------------------------------------------------------------- tasks


def test_tasks_are_idempotent_by_key_within_the_window() -> None:
    limits = Limits(idempotency_keys_max=2, idempotency_key_ttl_ms=MIN)
    n = Node(limits)
    task = TaskSpec(SHELL, priority=7)
    first = n.ok(SubmitTasks((task, task, task), ("a", None, "a"), T0))
    assert first[0] == first[2] and len(set(first)) == 2
    assert n(SubmitTasks((task,), ("a",), T0 + 1)) == Ok((first[0],), 1)
    n.ok(SubmitTasks((task, task), ("b", "c"), T0 + 2))  # the oldest key goes (count)
    assert n.state.run_for_key("a") is None and n.run(first[0]).submit_key is None
    (again,) = n.ok(SubmitTasks((task,), ("b",), T0 + 2 + MIN + 1))  # "b" expired (age)
    assert n.state.run_for_key("b") == again
    run = n.run(first[1])
    assert (run.kind, run.job_id, run.priority, run.idempotency_key) == (
        "task",
        None,
        7,
        f"{run.id}:{T0}:1",
    )


# ---------------------------------------------------------------- retention


def test_retention_bounds_finished_and_skipped_runs_and_tasks() -> None:
    limits = Limits(
        finished_runs_per_job_max=3, skipped_runs_per_job_max=2, finished_task_runs_max=2
    )
    n = Node(limits)
    job_id = n.create(spec())
    done = []
    for k in range(6):
        run_id = n.fire(job_id)
        n.start(run_id, now=T0 + k)
        n.finish(run_id, now=T0 + k)
        done.append(run_id)
    running = n.fire(job_id)
    n.start(running)
    skipped = [n.fire(job_id) for _ in range(4)]  # forbidden overlaps
    kept = set(n.state.job_run_ids(job_id))
    assert kept == {*done[-3:], running, *skipped[-2:]}
    assert all(n.state.fired_run(job_id, n.run(r).scheduled_at) == r for r in kept)
    tasks = n.ok(SubmitTasks((TaskSpec(SHELL),) * 3, ("k1", "k2", "k3"), T0))
    for t in tasks:
        n.ok(CancelRun(t, T0 + 10))
    assert [t for t in tasks if n.state.run(t)] == list(tasks[1:])
    assert n.state.run_for_key("k1") is None
    n.state.check_invariants()


# ---------------------------------------------------------------- queries


def test_list_jobs_filters_and_pages() -> None:
    n = Node()
    for ns, name in [("a", "x1"), ("a", "x2"), ("a", "y1"), ("b", "x1"), ("default", "x3")]:
        n.create(spec(name, namespace=ns))
    page = list_jobs(n.state, namespace="a", name_prefix="x", limit=1)
    assert [j.spec.name for j in page.items] == ["x1"] and page.next_cursor == "a/x1"
    page = list_jobs(n.state, namespace="a", name_prefix="x", cursor=page.next_cursor, limit=1)
    assert [j.spec.name for j in page.items] == ["x2"]
    page = list_jobs(n.state, namespace="a", name_prefix="x", cursor=page.next_cursor, limit=1)
    assert page == Page((), None)
    everywhere = list_jobs(n.state, name_prefix="x1")
    assert [(j.spec.namespace, j.spec.name) for j in everywhere.items] == [("a", "x1"), ("b", "x1")]
    assert [j.spec.name for j in list_jobs(n.state, cursor="a/y1").items] == ["x1", "x3"]
    for bad in ({"limit": 0}, {"limit": 501}, {"cursor": "nope"}, {"namespace": "UP"}):
        with pytest.raises(ValidationError):
            list_jobs(n.state, **bad)


def test_list_runs_filters_newest_first_with_cursors() -> None:
    n = Node()
    job_id = n.create(spec(concurrency="allow"))
    runs = [n.fire(job_id) for _ in range(5)]
    n.start(runs[1], "n1")
    n.start(runs[3], "n2")
    n.ok(Assign((runs[4],), "n1", T0))
    tasks = n.ok(SubmitTasks((TaskSpec(SHELL, priority=9),), (None,), T0))
    everything = list_runs(n.state, limit=3)
    assert [r.id for r in everything.items] == [tasks[0], runs[4], runs[3]]
    rest = list_runs(n.state, cursor=everything.next_cursor)
    assert [r.id for r in rest.items] == [runs[2], runs[1], runs[0]] and rest.next_cursor is None
    assert [r.id for r in list_runs(n.state, run_state="running").items] == [runs[3], runs[1]]
    assert [r.id for r in list_runs(n.state, node="n1").items] == [runs[4], runs[1]]
    assert [r.id for r in list_runs(n.state, node="n1", run_state="queued").items] == [runs[4]]
    queued = list_runs(n.state, run_state="queued")
    assert [r.id for r in queued.items] == [tasks[0], runs[4], runs[2], runs[0]]
    page = job_runs(n.state, job_id, limit=2)
    assert page is not None and [r.id for r in page.items] == [runs[4], runs[3]]
    assert job_runs(n.state, "j0000000000ff") is None
    assert n.state.queue_depths() == {None: {5: 2, 9: 1}, "n1": {5: 1}}
    assert running_counts(n.state) == {"n1": 1, "n2": 1}
    for bad in (
        {"run_state": "lost"},
        {"job_id": "x"},
        {"node": "N!"},
        {"cursor": "j000000000001"},
    ):
        with pytest.raises(ValidationError):
            list_runs(n.state, **bad)  # type: ignore[arg-type]


def test_next_fire_times_preview() -> None:
    n = Node()
    job_id = n.create(spec(schedule=CronSchedule("0 9 * * *", "Europe/Berlin")))
    job = n.state.job(job_id)
    assert job is not None
    assert next_fire_times(job, 2) == [T0 + 8 * 3600_000, T0 + 32 * 3600_000]
    assert (
        next_fire_times(
            dataclasses.replace(
                job,
                spec=dataclasses.replace(job.spec, paused=True),
                next_slot_ms=None,
                next_fire_at=None,
            ),
            2,
        )
        == []
    )


# ---------------------------------------------------------------- persistence


def test_load_refuses_records_that_do_not_match_their_keys() -> None:
    n = Node()
    job_id = n.create(spec())
    run_id = n.fire(job_id)
    records = list(n.state.records())
    swapped = [(t, b"r0000000000ff000000" if t == TABLE_RUNS else k, v) for t, k, v in records]
    with pytest.raises(DecodeError):
        SchedulerState.load(swapped)
    with pytest.raises(DecodeError):
        SchedulerState.load([r for r in records if r[0] == TABLE_RUNS])  # runs of no job
    with pytest.raises(DecodeError):
        SchedulerState.load([("elsewhere", b"k", b"v")])
    with pytest.raises(DecodeError):
        SchedulerState.from_image(b"\x92\x07\x90")
    assert list(SchedulerState.from_image(n.state.to_image()).records()) == records
    assert (
        encode_run(n.run(run_id))
        == dict((k, v) for t, k, v in records if t == TABLE_RUNS)[run_id.encode()]
    )


# ---------------------------------------------------------------- indexes


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3 * SUBLIST_ITEMS_MAX)), max_size=3000))
def test_sorted_list_behaves_like_a_sorted_python_list(ops: list[tuple[bool, int]]) -> None:
    fast: SortedList[int] = SortedList()
    model: list[int] = []
    for add, item in ops:
        if add and item not in model:
            fast.add(item)
            model.append(item)
            model.sort()
        elif not add and item in model:
            fast.remove(item)
            model.remove(item)
    assert fast == model and list(reversed(fast)) == model[::-1] and len(fast) == len(model)
    if model:
        assert (fast[0], fast[-1], fast[len(model) // 2]) == (
            model[0],
            model[-1],
            model[len(model) // 2],
        )
    for probe in (0, SUBLIST_ITEMS_MAX, 2 * SUBLIST_ITEMS_MAX + 7, 10**6):
        assert list(fast.from_(probe)) == [x for x in model if x >= probe]
        assert list(fast.below(probe)) == [x for x in model if x < probe][::-1]
    with pytest.raises(IndexError):
        fast[len(model)]


def test_sorted_list_splits_and_merges_sublists_under_load() -> None:
    rng = random.Random(7)
    fast: SortedList[int] = SortedList()
    model: set[int] = set()
    for _ in range(20_000):
        item = rng.randrange(4 * SUBLIST_ITEMS_MAX)
        if item in model:
            fast.remove(item)
            model.discard(item)
        else:
            fast.add(item)
            model.add(item)
    assert fast == sorted(model)
    assert len(fast._lists) > 2 and all(len(sub) <= SUBLIST_ITEMS_MAX for sub in fast._lists)
    assert fast._maxes == [sub[-1] for sub in fast._lists]


# ---------------------------------------------------------------- determinism

NODES = ("n1", "n2", "n3")
SMALL = Limits(
    finished_runs_per_job_max=3,
    skipped_runs_per_job_max=2,
    finished_task_runs_max=3,
    idempotency_keys_max=3,
    idempotency_key_ttl_ms=20_000,
)


BOGUS_JOB, BOGUS_RUN = "j0000000000ff", "r0000000000ff000000"
KINDS = (
    *("create", "create", "update", "delete", "pause", "trigger", "tasks", "tasks"),
    *("fire", "fire", "fire", "skip", "assign", "assign", "start", "start", "start"),
    *("complete", "complete", "complete", "cancel", "steal", "gone", "timeout", "timeout"),
)


def pick(data: st.DataObject, ids: list[str], bogus: str) -> str:
    """Mostly one of ``ids``, sometimes an id that does not exist."""
    if ids and data.draw(st.integers(0, 9)) > 0:
        return data.draw(st.sampled_from(ids))
    return bogus


def queued_placed(run: Run) -> bool:
    return run.state == "queued" and run.node is not None


# Which runs a command of each kind is usually about.
WANTED: dict[str, Callable[[Run], bool]] = {
    "start": queued_placed,
    "steal": queued_placed,
    "complete": lambda r: r.state == "running",
    "timeout": lambda r: r.state == "running",
    "assign": lambda r: r.state == "queued" and r.node is None,
}
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "timed_out")


def draw_command(data: st.DataObject, state: SchedulerState, now: int) -> Command:
    """A command that is often valid for ``state`` and sometimes stale or wrong."""
    jobs = list(state.jobs_from("", ""))
    runs = [r for r in (state.run(i) for i in state.run_ids_newest_first()) if r is not None]
    kind = data.draw(st.sampled_from(KINDS))
    job_id = pick(data, [j.id for j in jobs], BOGUS_JOB)
    wanted = WANTED.get(kind)
    fitting = [r.id for r in runs if wanted is None or wanted(r)]
    run_id = pick(data, fitting or [r.id for r in runs], BOGUS_RUN)
    run = state.run(run_id)
    token = max(1, (run.token if run else 1) + data.draw(st.sampled_from([0, 0, 0, 0, 1, -1])))
    node = (run.node if run and run.node else None) or data.draw(st.sampled_from(NODES))
    if kind in ("create", "update"):
        job_spec = spec(
            f"job{data.draw(st.integers(0, 5))}",
            schedule=EverySchedule(data.draw(st.sampled_from([1, 2, 5]))),
            concurrency=data.draw(st.sampled_from(["allow", "forbid", "replace"])),
            retry=RetryPolicy(
                data.draw(st.integers(1, 3)), 1, 2, 4, data.draw(st.sampled_from([0, 0.5]))
            ),
            priority=data.draw(st.integers(0, 9)),
            timeout_s=data.draw(st.integers(1, 4)),
            depends_on=(job_id,) if data.draw(st.integers(0, 3)) == 0 else (),
            paused=data.draw(st.integers(0, 4)) == 0,
        )
        if kind == "create":
            return CreateJob(job_spec, now)
        job = state.job(job_id)
        version = (job.version if job else 1) + data.draw(st.sampled_from([0, 0, 0, 1]))
        return UpdateJob(job_id, job_spec, version, now)
    job = state.job(job_id)
    slot = job.next_slot_ms if job and job.next_slot_ms else now - 1000
    slot += data.draw(st.sampled_from([0, 0, 0, 0, -1000, 1000, 2000, 1]))
    match kind:
        case "delete":
            return DeleteJob(job_id, data.draw(st.sampled_from([None, None, 1, 2])), now)
        case "pause":
            return SetPaused(job_id, data.draw(st.booleans()), now)
        case "trigger":
            return TriggerJob(job_id, now)
        case "tasks":
            count = data.draw(st.integers(1, 3))
            keys = tuple(
                data.draw(st.sampled_from([None, "a", "b", "c", "d"])) for _ in range(count)
            )
            task = TaskSpec(SHELL, data.draw(st.integers(0, 9)), 2, RetryPolicy(2, 1, 1, 1, 0.3))
            return SubmitTasks((task,) * count, keys, now)
        case "fire":
            return Fire(((job_id, max(0, slot)),), now)
        case "skip":
            return SkipSlots(job_id, max(0, slot), data.draw(st.integers(1, 9)), "skip", now)
        case "assign":
            others = data.draw(
                st.lists(st.sampled_from([r.id for r in runs] or [BOGUS_RUN]), max_size=2)
            )
            return Assign(tuple(dict.fromkeys([run_id, *others])), node, now)
        case "start":
            return Start(run_id, node, token, now)
        case "complete":
            outcome = data.draw(st.sampled_from(OUTCOMES))
            return Complete(run_id, token, outcome, 1, "e", "out", now)
        case "cancel":
            return CancelRun(run_id, now)
        case "steal":
            other = data.draw(st.sampled_from([n for n in NODES if n != node]))
            return Steal((run_id,), node, other, now)
        case "gone":
            return NodeGone(node, now)
        case _:
            return TimeoutRun(run_id, token, now)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_replicas_reloads_and_images_stay_identical(data: st.DataObject) -> None:
    """Two fresh replicas, one rebuilt mid-way from the persisted changes and one
    from a snapshot image apply the same commands (the second through the codec)
    and must agree on every result and every record: the persisted form is complete."""
    a, b = SchedulerState(SMALL), SchedulerState(SMALL)
    store: dict[tuple[str, bytes], bytes] = {}
    steps = data.draw(st.integers(5, 80))
    reload_at = data.draw(st.integers(0, steps))
    c: SchedulerState | None = None
    d: SchedulerState | None = None
    now = T0
    for index in range(1, steps + 1):
        if index == reload_at:
            c = SchedulerState.load([(t, k, v) for (t, k), v in sorted(store.items())], SMALL)
            d = SchedulerState.from_image(a.to_image(), SMALL)
        now += data.draw(st.sampled_from([0, 300, 1000, 1000, 2500, 9000, -400]))
        cmd = draw_command(data, a, now)
        result = a.apply(cmd, index)
        assert decode_result(encode_result(result)) == result
        assert b.apply(decode_command(encode_command(cmd)), index) == result
        for replica in (c, d):
            if replica is not None:
                assert replica.apply(cmd, index) == result
        for table, key, value in a.drain_changes():
            if value is None:
                store.pop((table, key), None)
            else:
                store[(table, key)] = value
        b.drain_changes()
    expected = list(a.records())
    assert list(b.records()) == expected
    assert sorted((t, k, v) for (t, k), v in store.items()) == expected
    for replica in (c, d):
        if replica is not None:
            assert list(replica.records()) == expected
            replica.check_invariants()
    a.check_invariants()
    assert SchedulerState.load(expected, SMALL).to_image() == a.to_image()
