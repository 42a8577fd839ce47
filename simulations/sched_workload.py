"""What clients ask of the simulated scheduler, and how simulated runs behave.

Rules:
- Pure functions of a seeded ``random.Random``, the proposer's replica (read only)
  and its clock: the same seed asks the same things.
- Jobs use every schedule kind at simulated scale (cron with a seconds field, every_s
  of 1-4 s, at and after_s a few seconds out), some with jitter; every misfire policy
  (window 1-2 s, cap 1-3); every overlap policy; retries with short backoff; timeouts
  of 1-2 s. Only ``forbid`` jobs every 3 s or more (or one-off jobs) are depended on:
  a dependent of a job that always has a run in flight waits for ever, by design.
- Client commands: create jobs, trigger, pause and resume, submit ad-hoc tasks (some
  with an idempotency key from a small pool, so keys repeat), cancel runs, delete a
  job no other job depends on.
- ``execution`` draws how one attempt goes: succeed or fail after a while, report a
  timeout at its deadline, or hang without a word (the leader's backstop ends it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from node.commands import (
    CancelRun,
    Command,
    CreateJob,
    DeleteJob,
    Outcome,
    SetPaused,
    SubmitTasks,
    TriggerJob,
)
from node.model import Job, JobSpec, MisfirePolicy, RetryPolicy, ShellSpec, TaskSpec
from node.schedule import AtSchedule, CronSchedule, EverySchedule, Schedule, parse_schedule
from node.state import SchedulerState

JOBS_MAX = 8
KEYS_POOL = 6  # idempotency keys drawn from k0..k5: resubmits happen
EXECUTOR = ShellSpec(("sim",))


def schedule(rng: random.Random, now_ms: int) -> Schedule:
    kind = rng.choice(["cron", "every", "every", "at", "after"])
    if kind == "cron":
        step = rng.choice([2, 3, 5])
        return CronSchedule(f"*/{step} * * * * *", "UTC", rng.choice([0, 0, 1]))
    if kind == "every":
        every = rng.randint(1, 4)
        return EverySchedule(every, rng.randrange(every), rng.choice([0, 0, 1]))
    if kind == "at":
        return AtSchedule(now_ms + rng.randint(-4_000, 8_000))
    result = parse_schedule({"after_s": rng.randint(1, 6)}, now_ms)
    assert isinstance(result, AtSchedule)
    return result


def retry(rng: random.Random) -> RetryPolicy:
    initial = rng.choice([0.1, 0.2, 0.5])
    return RetryPolicy(rng.randint(1, 3), initial, 2.0, 1.0, rng.choice([0.0, 0.3]))


def may_be_depended_on(job: Job) -> bool:
    s = job.spec.schedule
    slow = isinstance(s, AtSchedule) or (isinstance(s, EverySchedule) and s.every_s >= 3)
    return slow and job.spec.concurrency == "forbid"


def job_spec(rng: random.Random, name: str, state: SchedulerState, now_ms: int) -> JobSpec:
    deps = [j.id for j in _jobs(state) if may_be_depended_on(j)]
    return JobSpec(
        name=name,
        schedule=schedule(rng, now_ms),
        executor=EXECUTOR,
        priority=rng.randint(0, 9),
        timeout_s=rng.randint(1, 2),
        retry=retry(rng),
        concurrency=rng.choice(["allow", "forbid", "replace"]),
        misfire=MisfirePolicy(
            rng.choice(["skip", "run_once", "run_all"]), rng.randint(1, 2), rng.randint(1, 3)
        ),
        depends_on=(rng.choice(deps),) if deps and rng.random() < 0.4 else (),
    )


def task(rng: random.Random) -> TaskSpec:
    return TaskSpec(EXECUTOR, rng.randint(0, 9), rng.randint(1, 2), retry(rng))


def client_command(
    rng: random.Random, state: SchedulerState, now_ms: int, name: str, calm: bool
) -> Command | None:
    """One client request, judged on ``state`` (the leader's replica), or None.
    ``calm`` (the liveness phase): no more pausing or deleting, so the jobs that are
    enabled run long enough for every slot to be accounted for."""
    jobs = list(_jobs(state))
    if len(jobs) < 3 or (len(jobs) < JOBS_MAX and rng.random() < 0.05):
        return CreateJob(job_spec(rng, name, state, now_ms), now_ms)
    roll = rng.random()
    job = rng.choice(jobs)
    if roll < 0.25:
        return TriggerJob(job.id, now_ms)
    if roll < 0.35:
        paused = [j for j in jobs if j.spec.paused]
        if paused and (calm or rng.random() < 0.6):
            return SetPaused(rng.choice(paused).id, False, now_ms)
        return None if calm else SetPaused(job.id, True, now_ms)
    if roll < 0.7:
        count = rng.randint(1, 3)
        keys = tuple(
            f"k{rng.randrange(KEYS_POOL)}" if rng.random() < 0.5 else None for _ in range(count)
        )
        return SubmitTasks(tuple(task(rng) for _ in range(count)), keys, now_ms)
    if roll < 0.9:
        active = [r.id for r in state.unassigned()] + [r.id for r in state.running()]
        return CancelRun(rng.choice(active), now_ms) if active else None
    if roll < 0.93 and not calm and not any(job.id in j.spec.depends_on for j in jobs):
        return DeleteJob(job.id, None, now_ms)
    return None


@dataclass(frozen=True, slots=True)
class Execution:
    """How one simulated attempt goes: its report after ``duration_ms``, or none."""

    duration_ms: int
    outcome: Outcome | None  # None: hangs and never reports


def execution(rng: random.Random, timeout_s: int) -> Execution:
    roll = rng.random()
    if roll < 0.7:
        return Execution(rng.randint(20, 1200), "succeeded")
    if roll < 0.85:
        return Execution(rng.randint(20, 600), "failed")
    if roll < 0.95:
        return Execution(timeout_s * 1000, "timed_out")  # the executor's own deadline
    return Execution(0, None)


def _jobs(state: SchedulerState) -> Iterator[Job]:
    return state.jobs_from("", "")
