"""The replicated state machine, read and replayed: queries, loading persisted
records, its sorted-list index, and determinism across replicas, reloads from
persisted changes, and snapshot images."""

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
    Outcome,
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
from node.model import RetryPolicy, Run, TaskSpec, ValidationError
from node.queries import Page, job_runs, list_jobs, list_runs, next_fire_times, running_counts
from node.records import DecodeError, encode_run
from node.schedule import CronSchedule, EverySchedule
from node.sortedlist import SUBLIST_ITEMS_MAX, SortedList
from node.state import TABLE_RUNS, Limits, SchedulerState
from tests.node.statehelpers import SHELL, T0, Node, spec

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
