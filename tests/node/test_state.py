"""The replicated state machine: firing at most once, fencing, overlap, retries,
dependencies, stealing, lost nodes, tasks and retention (queries, persistence and
determinism across replicas are in ``test_state_replicas.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.commands import (
    Assign,
    CancelRun,
    Complete,
    CreateJob,
    DeleteJob,
    Fire,
    NodeGone,
    Ok,
    SetPaused,
    SkipSlots,
    Start,
    Steal,
    SubmitTasks,
    TimeoutRun,
    TriggerJob,
    UpdateJob,
)
from node.model import Concurrency, RetryPolicy, TaskSpec, retry_delay_ms
from node.schedule import AtSchedule, EverySchedule
from node.state import TABLE_RUNS, Limits
from tests.node.statehelpers import MIN, SHELL, T0, Node, spec

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
