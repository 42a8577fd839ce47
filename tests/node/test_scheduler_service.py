"""The scheduler service on a one-node log (each proposal commits at once): the
worker's stealing, the leader's placement with queues ahead, and the scheduler
events (metrics) observed where the log says a thing happened. Trio time is a
MockClock; the commands' ``now_ms`` is the wall clock, as on a real node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from consensus.types import Role
from node.commands import (
    Assign,
    Command,
    CreateJob,
    Fire,
    Ok,
    Start,
    SubmitTasks,
    decode_result,
    encode_command,
)
from node.driver import Committed, Outcome
from node.executors import Executors, RunResult, ScriptedExecutor
from node.model import EverySchedule, JobSpec, MisfirePolicy, TaskSpec
from node.modeljson import executor_from_json
from node.scheduler import SEEN_STARTS_SLACK, EventLog, SchedulerService, now_ms
from tests.node.onenode import OneNode

SHELL = executor_from_json({"type": "shell", "command": ["/bin/true"]}, ())


class Harness(OneNode):
    def __init__(self, path: Path, live: list[tuple[str, int, tuple[str, ...]]]) -> None:
        super().__init__(path)
        self.live = live
        self.role = Role.FOLLOWER
        self.executor = ScriptedExecutor(duration_s=1.0)
        self.events = EventLog()

    def service(self, node: str, slots: int, **over: object) -> SchedulerService:
        return SchedulerService(
            node,
            self.sm,
            role=lambda: self.role,
            propose=self.propose,
            live_nodes=lambda: self.live,
            gone_nodes=list,
            executors=Executors({"shell": self.executor}),
            output=lambda run_id, chunk: None,
            events=self.events,
            slots=slots,
            **over,  # type: ignore[arg-type]
        )

    async def apply(self, cmd: Command) -> Ok:
        outcome = await self.propose(encode_command(cmd), 1.0)
        assert isinstance(outcome, Committed)
        result = decode_result(outcome.result)
        assert isinstance(result, Ok), result
        return result

    async def tasks(self, count: int) -> list[str]:
        specs = tuple(TaskSpec(SHELL) for _ in range(count))
        return list((await self.apply(SubmitTasks(specs, (None,) * count, now_ms()))).ids)

    def states(self, run_ids: list[str]) -> list[tuple[str, str | None]]:
        runs = [self.sm.state.run(r) for r in run_ids]
        return [(r.state, r.node) for r in runs if r is not None]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "store", live=[("n1", 2, ())])
    yield h
    h.store.close()


async def _until(predicate: object, timeout_s: float = 60.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.05)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_an_idle_worker_steals_the_queue_of_a_node_gossip_lost(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    runs = await harness.tasks(6)
    await harness.apply(Assign(tuple(runs), "n2", now_ms()))  # n2 is not live
    worker = harness.service("n1", slots=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.worker_loop)
        await _until(lambda: all(s == "succeeded" for s, _ in harness.states(runs)))
        nursery.cancel_scope.cancel()
    assert {node for _, node in harness.states(runs)} == {"n1"}
    stolen = harness.events.named("steal")
    # At most its two free slots at a time, from the tail of n2's queue.
    assert all(d == "in" and 1 <= n <= 2 for d, n in stolen)  # type: ignore[misc]
    assert sum(n for _, n in stolen) == 6  # type: ignore[misc]
    assert len(harness.events.named("run_started")) == 6
    assert harness.events.named("run_finished") == ["succeeded"] * 6
    assert len(harness.executor.calls) == 6


async def test_stealing_off_leaves_the_queue_alone(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    runs = await harness.tasks(3)
    await harness.apply(Assign(tuple(runs), "n2", now_ms()))
    worker = harness.service("n1", slots=2, steal_batch_max=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.worker_loop)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert harness.states(runs) == [("queued", "n2")] * 3
    assert harness.events.named("steal") == []


async def test_a_busy_victims_free_slots_are_not_stolen(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.live = [("n1", 2, ()), ("n2", 2, ())]
    runs = await harness.tasks(2)
    await harness.apply(Assign(tuple(runs), "n2", now_ms()))  # n2 starts both at once
    thief = harness.service("n1", slots=2)
    assert thief.steal_plan(now_ms()) is None
    extra = await harness.tasks(3)
    await harness.apply(Assign(tuple(extra), "n2", now_ms()))  # a backlog of 3
    plan = thief.steal_plan(now_ms())
    assert plan is not None and plan.run_ids == (extra[2], extra[1])  # half, rounded up
    # The victim hears of it too: runs stolen from it count as "out".
    victim = harness.service("n2", slots=2)
    await harness.apply(plan)
    assert harness.events.named("steal") == [("in", 2), ("out", 2)]
    del victim


async def test_the_leader_places_by_gossiped_slots_with_a_queue_ahead(harness: Harness) -> None:
    harness.live = [("n1", 1, ()), ("n2", 0, ())]
    await harness.tasks(10)
    leader = harness.service("n1", slots=1, queue_max=2)
    plan = [c for c in leader.plan(now_ms()) if isinstance(c, Assign)]
    assert {a.node: len(a.run_ids) for a in plan} == {"n1": 3, "n2": 2}


async def test_fires_and_misfires_are_observed_on_the_leader_only(harness: Harness) -> None:
    wall = now_ms()
    now = wall - (wall - 30_000) % 60_000  # :30 of a minute, at most a minute ago
    late = MisfirePolicy("run_once", window_s=1)
    # Created 185 s before ``now``: slots at now-150, now-90, now-30 s, all late.
    await harness.apply(
        CreateJob(JobSpec("a", EverySchedule(60), SHELL, misfire=late), now - 185_000)
    )
    leader = harness.service("n1", slots=2)
    for cmd in leader.plan(now):
        await harness.apply(cmd)  # as a follower: applied, not counted
    assert harness.events.events == []
    await harness.apply(
        CreateJob(JobSpec("b", EverySchedule(60), SHELL, misfire=late), now - 185_000)
    )
    harness.role = Role.LEADER
    for cmd in leader.plan(now):
        await harness.apply(cmd)
    assert harness.events.named("misfire") == [("run_once", 2)]
    (lateness,) = harness.events.named("fired")  # the latest slot, fired 30-90 s late
    assert isinstance(lateness, float) and 29 < lateness < 95


async def test_a_start_delay_is_observed_on_the_node_that_starts(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.executor.result = RunResult("failed", 1, "boom")
    runs = await harness.tasks(1)
    await harness.apply(Assign(tuple(runs), "n1", now_ms()))
    worker = harness.service("n1", slots=1, steal_batch_max=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.worker_loop)
        await _until(lambda: harness.states(runs)[0][0] == "failed")
        nursery.cancel_scope.cancel()
    (delay,) = harness.events.named("run_started")
    assert isinstance(delay, float) and delay >= 0
    assert harness.events.named("run_finished") == ["failed"]


async def due_minute_jobs(harness: Harness, count: int) -> int:
    """``count`` jobs every minute, created 40 s before the returned instant (:30 of a
    minute, at most a minute ago): one slot of each is due 10 s before it."""
    wall = now_ms()
    now = wall - (wall - 30_000) % 60_000
    for i in range(count):
        await harness.apply(CreateJob(JobSpec(f"j{i}", EverySchedule(60), SHELL), now - 40_000))
    return now


async def test_a_round_fires_every_due_slot_in_several_entries(harness: Harness) -> None:
    now = await due_minute_jobs(harness, 600)
    leader = harness.service("n1", slots=0)
    harness.role = Role.LEADER
    before = harness.index
    full = await leader.run_round(leader.plan(now))
    assert not full  # 600 slots are fewer than a round can take
    assert harness.index - before == 3  # 256 + 256 + 88 slots, one entry each
    assert len(harness.events.named("fired")) == 600
    assert not [c for c in leader.plan(now) if isinstance(c, Fire)]  # nothing left due
    assert 0 <= leader._until_next_round_s() <= 0.1


async def test_this_nodes_clock_at_each_start_is_kept_for_running_runs_only(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    runs = await harness.tasks(3)
    await harness.apply(Assign(tuple(runs), "n1", now_ms()))
    worker = harness.service("n1", slots=3, steal_batch_max=0)
    harness.executor.duration_s = 5.0
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.worker_loop)
        await _until(lambda: all(s == "running" for s, _ in harness.states(runs)))
        assert set(worker.started_seen) == set(runs)
        assert all(abs(t - now_ms()) < 60_000 for t in worker.started_seen.values())
        await _until(lambda: all(s == "succeeded" for s, _ in harness.states(runs)))
        nursery.cancel_scope.cancel()
    worker.started_seen.update({f"gone{i}": 0 for i in range(SEEN_STARTS_SLACK + 1)})
    extra = await harness.tasks(1)
    await harness.apply(Assign(tuple(extra), "n1", now_ms()))
    await harness.apply(Start(extra[0], "n1", harness.index, now_ms()))
    assert set(worker.started_seen) == set(extra)  # the ended and unknown ones are gone


async def test_a_rounds_entries_are_proposed_together_when_the_node_can(harness: Harness) -> None:
    now = await due_minute_jobs(harness, 600)
    batches: list[int] = []

    async def propose_many(datas: list[bytes], timeout_s: float) -> list[Outcome]:
        batches.append(len(datas))
        return [await harness.propose(d, timeout_s) for d in datas]

    leader = harness.service("n1", slots=0, propose_many=propose_many)
    harness.role = Role.LEADER
    await leader.run_round(leader.plan(now))
    assert batches == [3]  # the three Fire entries of the round, in one call
    assert len(harness.events.named("fired")) == 600


@pytest.mark.parametrize(("term", "counted"), [(1, 600), (2, 0)])
async def test_a_leader_counts_only_the_fires_of_its_own_term(
    harness: Harness, term: int, counted: int
) -> None:
    # Harness entries are of term 1: a leader of term 2 is applying what its
    # predecessor fired (its own metrics would count those slots a second time).
    now = await due_minute_jobs(harness, 600)
    leader = harness.service("n1", slots=0, term=lambda: term)
    harness.role = Role.LEADER
    await leader.run_round(leader.plan(now))
    assert len(harness.events.named("fired")) == counted


async def test_slots_about_to_fall_due_are_planned_ahead_and_proposed_at_their_time(
    harness: Harness,
) -> None:
    # Real clocks: the round plans before the slot and waits for it. On a loaded
    # machine the test's own sleep may overshoot the slot (then the round plans as
    # usual, late); it tries the next slots, a second apart.
    if 1000 - now_ms() % 1000 < 300:
        await trio.sleep(0.4)  # not too near a second: the first slot is ~1 s away
    await harness.apply(CreateJob(JobSpec("soon", EverySchedule(1), SHELL), now_ms()))
    (task,) = await harness.tasks(1)
    leader = harness.service("n1", slots=2)
    harness.role = Role.LEADER
    assert await leader.fires_at_due() is None  # nothing falls due within 100 ms yet
    ahead = 0
    for _ in range(5):
        job = harness.sm.state.job_named("default", "soon")
        assert job is not None and job.next_fire_at is not None
        due = job.next_fire_at
        await trio.sleep(max(0.0, (due - 80 - now_ms()) / 1000))
        await leader.leader_round()
        assert now_ms() >= due
        run = harness.sm.state.run(harness.sm.state.job_run_ids(job.id)[-1])
        assert run is not None and run.scheduled_at == due
        if run.queued_at == due:  # planned ahead, proposed at its time
            ahead += 1
            break
    assert ahead == 1
    # The same rounds placed what was queued: planning ahead starves nothing else.
    placed = harness.sm.state.run(task)
    assert placed is not None and placed.node == "n1"
