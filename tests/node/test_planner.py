"""The planner: due slots and misfire policies, placement, timeouts, lost nodes and
work stealing — each plan applied to a real state machine and its effect checked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.commands import (
    Assign,
    Command,
    Complete,
    CreateJob,
    Fire,
    NodeGone,
    Ok,
    SkipSlots,
    Start,
    Steal,
    SubmitTasks,
    TimeoutRun,
)
from node.model import JobSpec, MisfireKind, MisfirePolicy, RetryPolicy, ShellSpec, TaskSpec
from node.planner import (
    SLOT_SCAN_MAX,
    NodeLoad,
    due_fires,
    lost_nodes,
    node_tags,
    placements,
    steal_choice,
    tags_match,
    timeouts,
)
from node.schedule import EverySchedule, slots_between
from node.state import Limits, SchedulerState

T0 = 1_767_225_600_000
MIN = 60_000
SHELL = ShellSpec(("/bin/true",))
ROOMY = Limits(finished_runs_per_job_max=10**6, skipped_runs_per_job_max=10**6)


class Leader:
    def __init__(self, limits: Limits | None = None) -> None:
        self.state = SchedulerState(limits)
        self.index = 0
        self.fired: list[tuple[str, int]] = []

    def apply(self, cmds: Sequence[Command]) -> list[Ok]:
        results = []
        for cmd in cmds:
            self.index += 1
            result = self.state.apply(cmd, self.index)
            assert isinstance(result, Ok), (cmd, result)
            if isinstance(cmd, Fire):
                for run_id in result.ids:
                    run = self.state.run(run_id)
                    assert run is not None and run.job_id is not None
                    self.fired.append((run.job_id, run.scheduled_at))
            results.append(result)
        return results

    def job(self, name: str = "job", now: int = T0 + 1, **over: object) -> str:
        fields: dict[str, object] = {"schedule": EverySchedule(60), "executor": SHELL}
        fields.update(over)
        (result,) = self.apply([CreateJob(JobSpec(name, **fields), now)])  # type: ignore[arg-type]
        return result.ids[0]

    def tasks(self, *priorities: int, now: int = T0, **over: object) -> list[str]:
        specs = tuple(TaskSpec(SHELL, priority=p, **over) for p in priorities)  # type: ignore[arg-type]
        (result,) = self.apply([SubmitTasks(specs, (None,) * len(specs), now)])
        return list(result.ids)


# ---------------------------------------------------------------- firing


def test_a_slot_fires_when_due_and_not_before() -> None:
    leader = Leader()
    job_id = leader.job()
    assert due_fires(leader.state, T0 + MIN - 1, 10) == []
    assert due_fires(leader.state, T0 + MIN, 10) == [Fire(((job_id, T0 + MIN),), T0 + MIN)]
    jittered = leader.job("jittered", schedule=EverySchedule(60, 0, 30))
    job = leader.state.job(jittered)
    assert job is not None and job.next_fire_at is not None
    assert due_fires(leader.state, job.next_fire_at - 1, 10) == [
        Fire(((job_id, T0 + MIN),), job.next_fire_at - 1)
    ]
    (fire,) = due_fires(leader.state, job.next_fire_at, 10)
    assert isinstance(fire, Fire) and (jittered, T0 + MIN) in fire.items


def test_paused_jobs_are_never_due() -> None:
    leader = Leader()
    leader.job(paused=True)
    assert due_fires(leader.state, T0 + 100 * MIN, 10) == []


@pytest.mark.parametrize(
    ("policy", "cap", "skipped", "fired"),
    [
        # Ten slots unfired at 10.5 min; a 2-minute window makes slots 1-8 late.
        ("skip", 1, 8, [9, 10]),
        ("run_once", 1, 7, [8, 9, 10]),
        ("run_all", 3, 5, [6, 7, 8, 9, 10]),
        ("run_all", 50, 0, list(range(1, 11))),
    ],
)
def test_misfire_policies_skip_or_run_late_slots(
    policy: MisfireKind, cap: int, skipped: int, fired: list[int]
) -> None:
    leader = Leader()
    job_id = leader.job(concurrency="allow", misfire=MisfirePolicy(policy, 120, cap))
    now = T0 + 10 * MIN + 30_000
    plan = due_fires(leader.state, now, 100)
    expected: list[Command] = []
    if skipped:
        expected.append(SkipSlots(job_id, T0 + skipped * MIN, skipped, policy, now))
    expected.append(Fire(tuple((job_id, T0 + k * MIN) for k in fired), now))
    assert plan == expected
    leader.apply(plan)
    job = leader.state.job(job_id)
    assert job is not None and job.last_slot_ms == T0 + 10 * MIN
    assert job.skipped_slots == skipped and len(leader.fired) == len(fired)
    assert due_fires(leader.state, now, 100) == []


def test_a_day_long_backlog_is_worked_off_in_bounded_rounds() -> None:
    leader = Leader(ROOMY)
    job_id = leader.job(
        schedule=EverySchedule(1), concurrency="allow", misfire=MisfirePolicy("run_all", 5, 4)
    )
    now = T0 + 86_400_000
    rounds = 0
    while plan := due_fires(leader.state, now, 50):
        rounds += 1
        for cmd in plan:
            if isinstance(cmd, SkipSlots):
                assert cmd.count <= SLOT_SCAN_MAX
            if isinstance(cmd, Fire):
                assert len(cmd.items) <= 50
        leader.apply(plan)
        assert rounds < 100
    job = leader.state.job(job_id)
    assert job is not None and job.last_slot_ms == now
    # Every slot is accounted for: fired (the 4 latest late ones and the 6 within the
    # 5 s window) or skipped.
    assert len(leader.fired) == 4 + 6 and job.skipped_slots + len(leader.fired) == 86_400


def test_fires_are_bounded_per_round_and_oldest_due_first() -> None:
    leader = Leader()
    jobs = [
        leader.job(f"j{i}", now=T0 + 1 + i * 1000, schedule=EverySchedule(60, i)) for i in range(5)
    ]
    (fire,) = due_fires(leader.state, T0 + 2 * MIN, 3)
    assert isinstance(fire, Fire)
    assert fire.items == (
        (jobs[0], T0 + MIN),
        (jobs[1], T0 + MIN + 1000),
        (jobs[2], T0 + MIN + 2000),
    )
    # Several batches in one round: all six due slots (five jobs' first, j0's second),
    # oldest first, split by the batch size.
    fires = due_fires(leader.state, T0 + 2 * MIN, 3, batches_max=3)
    assert [len(f.items) for f in fires if isinstance(f, Fire)] == [3, 3]
    items = [item for f in fires if isinstance(f, Fire) for item in f.items]
    assert items == sorted(items, key=lambda item: (item[1], item[0]))
    assert {job for job, _ in items} == set(jobs)
    leader.apply(fires)
    assert len(leader.fired) == 6  # every batch applied: no item was a duplicate


def test_the_next_due_time_is_the_earliest_jobs() -> None:
    leader = Leader()
    assert leader.state.next_due_ms() is None
    leader.job("late", now=T0 + 1, schedule=EverySchedule(60, 30))
    leader.job("soon", now=T0 + 1, schedule=EverySchedule(60, 10))
    assert leader.state.next_due_ms() == T0 + 10_000


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1_000, 400_000), min_size=1, max_size=12),
    st.lists(
        st.tuples(
            st.sampled_from(["skip", "run_once", "run_all"]), st.integers(1, 90), st.integers(1, 4)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_every_slot_is_fired_once_or_skipped_whatever_the_leader_gaps(
    gaps: list[int], policies: list[tuple[MisfireKind, int, int]]
) -> None:
    leader = Leader(ROOMY)
    jobs = [
        leader.job(
            f"j{i}",
            schedule=EverySchedule(7 + i),
            misfire=MisfirePolicy(p, w, c),
            concurrency="allow",
        )
        for i, (p, w, c) in enumerate(policies)
    ]
    start = {j: leader.state.job(j).last_slot_ms for j in jobs}  # type: ignore[union-attr]
    now = T0
    for gap in gaps:
        now += gap
        while plan := due_fires(leader.state, now, 7):
            leader.apply(plan)
    assert len(leader.fired) == len(set(leader.fired))
    for job_id, (_, window_s, cap) in zip(jobs, policies, strict=True):
        job = leader.state.job(job_id)
        assert job is not None
        slots = slots_between(job.spec.schedule, start[job_id], job.last_slot_ms, 10**6)
        fired = [slot for j, slot in leader.fired if j == job_id]
        assert job.skipped_slots + len(fired) == len(slots)
        assert job.last_slot_ms <= now < job.last_slot_ms + 2 * (7 + len(policies)) * 1000
        assert set(fired) <= set(slots)
        del window_s, cap


# ---------------------------------------------------------------- placement


def test_placement_honours_priority_age_and_room() -> None:
    leader = Leader()
    low = leader.tasks(1, now=T0)
    high = leader.tasks(9, 9, now=T0 + 5)
    mid = leader.tasks(5, now=T0 + 1)
    nodes = [NodeLoad("n1", 2), NodeLoad("n2", 1), NodeLoad("n3", 0)]
    plan = placements(leader.state, nodes, T0 + 10, 10)
    # Each run goes where most room is left (ties: the smaller node id).
    assert plan == [Assign((high[0], high[1]), "n1", T0 + 10), Assign((mid[0],), "n2", T0 + 10)]
    leader.apply(plan)
    # n1 still reports 2 free slots (gossip lags), but two runs already wait there.
    assert placements(leader.state, nodes, T0 + 10, 10) == []
    roomier = [NodeLoad("n1", 3)]
    assert placements(leader.state, roomier, T0 + 10, 10) == [Assign((low[0],), "n1", T0 + 10)]


def test_placement_respects_tags_and_the_batch() -> None:
    leader = Leader()
    gpu = leader.tasks(9, tags={"gpu": "a100"})
    plain = leader.tasks(5, 5, 5)
    nodes = [NodeLoad("cpu", 10), NodeLoad("gpu", 10, {"gpu": "a100", "zone": "b"})]
    assert placements(leader.state, [NodeLoad("cpu", 10)], T0, 1) == [
        Assign((plain[0],), "cpu", T0)
    ]
    assert placements(leader.state, nodes, T0, 2) == [
        Assign((plain[0],), "cpu", T0),
        Assign((gpu[0],), "gpu", T0),
    ]


def test_placement_waits_for_a_retry_backoff() -> None:
    leader = Leader()
    (run_id,) = leader.tasks(8, retry=RetryPolicy(2, 30, 1, 30, 0))
    leader.apply([Assign((run_id,), "n1", T0)])
    leader.apply([Start(run_id, "n1", leader.index, T0)])
    (result,) = leader.apply([NodeGone("n1", T0 + 1)])
    (_, retry) = result.ids  # the lost run and its second attempt
    nodes = [NodeLoad("n2", 10)]
    assert placements(leader.state, nodes, T0 + 30_000, 10) == []
    assert placements(leader.state, nodes, T0 + 30_001, 10) == [Assign((retry,), "n2", T0 + 30_001)]


def test_placement_holds_a_run_while_a_dependency_runs() -> None:
    leader = Leader()
    up = leader.job("up", concurrency="allow")
    down = leader.job("down", now=T0 + MIN + 1, depends_on=(up,))  # first slot: 2 min
    leader.apply([Fire(((up, T0 + MIN),), T0 + MIN)])
    (first,) = leader.state.job_run_ids(up)
    leader.apply([Assign((first,), "n1", T0 + MIN)])
    token = leader.index  # the Assign entry's index
    leader.apply([Start(first, "n1", token, T0 + MIN)])
    leader.apply([Complete(first, token, "succeeded", 0, None, "", T0 + MIN)])
    leader.apply([Fire(((up, T0 + 2 * MIN), (down, T0 + 2 * MIN)), T0 + 2 * MIN)])
    (held,) = leader.state.job_run_ids(down)
    assert leader.state.run(held).state == "queued"  # type: ignore[union-attr]
    nodes = [NodeLoad("n1", 10)]
    (plan,) = placements(leader.state, nodes, T0 + 2 * MIN, 10)
    assert held not in plan.run_ids and len(plan.run_ids) == 1
    (second,) = plan.run_ids  # up's new run, placed; down waits for it
    leader.apply([plan])
    token = leader.index
    leader.apply([Start(second, "n1", token, T0 + 2 * MIN)])
    assert held not in {
        r for a in placements(leader.state, nodes, T0 + 2 * MIN, 10) for r in a.run_ids
    }
    leader.apply([Complete(second, token, "succeeded", 0, None, "", T0 + 2 * MIN)])
    assert placements(leader.state, nodes, T0 + 2 * MIN, 10) == [
        Assign((held,), "n1", T0 + 2 * MIN)
    ]


def test_node_tags_and_matching() -> None:
    tags = node_tags(("gpu=a100", "zone=b", "ssd="))
    assert tags == {"gpu": "a100", "zone": "b", "ssd": ""}
    assert tags_match({}, {}) and tags_match({"gpu": "a100"}, tags)
    assert not tags_match({"gpu": "h100"}, tags) and not tags_match({"arm": ""}, tags)


# ---------------------------------------------------------------- backstops


def test_timeouts_after_the_deadline_plus_grace_bounded() -> None:
    leader = Leader()
    runs = leader.tasks(5, 5, 5, timeout_s=30)
    leader.apply([Assign(tuple(runs), "n1", T0)])
    for i, run_id in enumerate(runs):
        run = leader.state.run(run_id)
        assert run is not None
        leader.apply([Start(run_id, "n1", run.token, T0 + i)])
    assert timeouts(leader.state, T0 + 30_000 + 4_999, 5_000, 10) == []
    plan = timeouts(leader.state, T0 + 30_000 + 5_001, 5_000, 10)
    assert [t.run_id for t in plan] == runs[:2]
    assert len(timeouts(leader.state, T0 + 99_000, 5_000, 2)) == 2
    leader.apply(plan)
    assert [r.id for r in leader.state.running()] == runs[2:]
    stale = TimeoutRun(runs[2], 1, T0 + 99_000)
    leader.index += 1
    assert leader.state.apply(stale, leader.index).code == "stale_token"  # type: ignore[union-attr]


def test_a_worker_clock_behind_the_leaders_cannot_time_a_run_out_early() -> None:
    leader = Leader()
    (run_id,) = leader.tasks(5, timeout_s=30)
    leader.apply([Assign((run_id,), "n1", T0)])
    leader.apply([Start(run_id, "n1", leader.index, T0)])  # the worker's clock said T0
    seen = {run_id: T0 + 20_000}  # the leader's own clock when it applied the Start
    assert len(timeouts(leader.state, T0 + 36_000, 5_000, 10)) == 1
    assert timeouts(leader.state, T0 + 36_000, 5_000, 10, seen) == []
    (late,) = timeouts(leader.state, T0 + 55_000, 5_000, 10, seen)
    (result,) = leader.apply([late])
    assert result.ids == (run_id,)
    assert leader.state.run(run_id).state == "timed_out"  # type: ignore[union-attr]


def test_lost_nodes_only_for_nodes_holding_runs() -> None:
    leader = Leader()
    (run_id,) = leader.tasks(5)
    leader.apply([Assign((run_id,), "n2", T0)])
    assert lost_nodes(leader.state, {"n1", "n2"}, T0) == [NodeGone("n2", T0)]
    leader.apply(lost_nodes(leader.state, {"n2"}, T0))
    assert lost_nodes(leader.state, {"n2"}, T0) == []


# ---------------------------------------------------------------- stealing


def test_an_idle_node_steals_from_the_tail_of_the_deepest_queue() -> None:
    leader = Leader()
    deep = leader.tasks(9, 5, 5, 1, 1, 1)
    shallow = leader.tasks(5, 5, 5)
    leader.apply([Assign(tuple(deep), "n1", T0), Assign(tuple(shallow), "n2", T0)])
    nodes = [NodeLoad("n1", 0), NodeLoad("n2", 0), NodeLoad("n3", 4)]
    steal = steal_choice("n3", nodes, leader.state, 2, 10, T0)
    assert steal == Steal((deep[5], deep[4], deep[3]), "n1", "n3", T0)
    assert steal_choice("n3", nodes, leader.state, 6, 10, T0) is None  # under the threshold
    assert steal_choice("n3", nodes, leader.state, 2, 1, T0) == Steal((deep[5],), "n1", "n3", T0)
    assert steal_choice("n2", nodes, leader.state, 2, 10, T0) is None  # not idle
    assert steal_choice("n9", nodes, leader.state, 2, 10, T0) is None  # not live
    # The victim starts one of them before the steal commits: only the rest move.
    run = leader.state.run(deep[5])
    assert run is not None and steal is not None
    leader.apply([Start(deep[5], "n1", run.token, T0)])
    (result,) = leader.apply([steal])
    assert result == Ok((deep[4], deep[3]), 1)
    assert [r.id for r in leader.state.queued_on("n3")] == [deep[3], deep[4]]


def test_a_thief_takes_only_runs_whose_tags_it_has() -> None:
    leader = Leader()
    gpu = leader.tasks(5, 5, 5, 5, tags={"gpu": "1"})
    plain = leader.tasks(5, now=T0 + 1)
    leader.apply([Assign((*gpu, *plain), "n1", T0)])
    nodes = [NodeLoad("n1", 0), NodeLoad("n2", 8)]
    assert steal_choice("n2", nodes, leader.state, 1, 10, T0) == Steal((plain[0],), "n1", "n2", T0)
    tagged = [NodeLoad("n1", 0), NodeLoad("n2", 8, {"gpu": "1"})]
    steal = steal_choice("n2", tagged, leader.state, 1, 10, T0)
    assert steal is not None and steal.run_ids == (plain[0], gpu[3], gpu[2])  # half, rounded up


def test_backlog_is_the_queue_beyond_the_victims_free_slots() -> None:
    leader = Leader()
    runs = leader.tasks(5, 5, 5, 5, 5)
    leader.apply([Assign(tuple(runs), "n1", T0)])
    # n1 will start 4 of its 5 at once: a backlog of 1, half of it rounded up is 1.
    busy = [NodeLoad("n1", 4), NodeLoad("n2", 4)]
    assert steal_choice("n2", busy, leader.state, 0, 10, T0) == Steal((runs[4],), "n1", "n2", T0)
    assert steal_choice("n2", busy, leader.state, 1, 10, T0) is None  # not beyond threshold 1
    # n1 is not live (gossip): nothing on it will start, its whole queue is backlog.
    steal = steal_choice("n2", [NodeLoad("n2", 4)], leader.state, 1, 10, T0)
    assert steal == Steal((runs[4], runs[3], runs[2]), "n1", "n2", T0)


def test_placement_queues_ahead_up_to_queue_max() -> None:
    leader = Leader()
    runs = leader.tasks(*([5] * 10))
    nodes = [NodeLoad("n1", 2), NodeLoad("n2", 1)]
    plan = placements(leader.state, nodes, T0, 100, queue_max=3)
    placed = {a.node: len(a.run_ids) for a in plan}
    assert placed == {"n1": 5, "n2": 4}  # free slots plus three queued ahead each
    leader.apply(plan)
    assert placements(leader.state, nodes, T0, 100, queue_max=3) == []
    assert sum(len(a.run_ids) for a in placements(leader.state, nodes, T0, 100, queue_max=4)) == 1
    del runs
