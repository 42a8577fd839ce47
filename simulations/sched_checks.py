"""Invariants of the replicated scheduler, checked incrementally as replicas apply.

The scheduler simulation (``simulations.sched_world``) reports what each replica does
(it applied a command at an index with a result and changed these records; a worker
began executing a run; replicas have these images); ``SchedChecker`` keeps a shadow of
every job and run record, built from the first application of each index (Raft makes
every later one identical, which invariant 6 confirms), and decides at each report
whether a rule broke:

1. One Fire per slot: never two attempt-1 scheduled records (fired or skipped) for
   one (job, scheduled_at), even after the first was pruned.
2. No slot silently missed (``final``): every slot of an enabled job, from the cursor
   at which its schedule last took effect (create, resume, schedule change) until
   ``owed_until_ms`` on the leader's clock, has a record or lies in a range a
   ``SkipSlots`` accounted for.
3. Fencing: a ``Start``, ``Complete`` or ``TimeoutRun`` accepted (Ok) must carry the
   run's current token (and a Start the run's node), as the shadow held it just
   before; and a worker begins executing a run only after *its own replica* applied
   the accepted Start for that node and token.
4. ``forbid``: never two running runs of one job with that overlap policy.
5. Liveness (``final``): no run still queued or running ``bound_ms`` after it was
   created.
6. Identical replicas (``replicas``): replicas at the same applied index hold the
   same image, byte for byte.

Also: an accepted ``SkipSlots`` adds to the job's ``skipped_slots`` (what users see)
exactly the number of slots it moved the cursor over — not the plan's ``count``,
which a lagging replica may overstate.

A violation raises ``simulations.checks.Violation`` with a one-line description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from node.commands import Command, Complete, Ok, Result, SkipSlots, Start, TimeoutRun
from node.model import Job, Run
from node.schedule import jitter_ms, next_slot_ms, slots_between
from simulations.checks import Violation

SLOTS_CHECKED_MAX = 100_000  # per job in ``final``; far above any simulated schedule


@dataclass
class JobHistory:
    """What the checker remembers about one job's timeline."""

    wanted_after_ms: int  # the cursor at which its current schedule took effect
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (after, through]


class SchedChecker:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.runs: dict[str, Run] = {}  # records still kept by the state machine
        self.created_ms: dict[str, int] = {}  # run id -> simulated time first seen
        self.slot_owner: dict[tuple[str, int], str] = {}  # ever, never pruned
        self.history: dict[str, JobHistory] = {}
        self.running: dict[str, set[str]] = {}  # job id -> its running run ids
        self.local_starts: set[tuple[str, str, int]] = set()  # (node, run, token)
        self.judged_index = 0
        self.checks = 0

    # ------------------------------------------------------------------ reports
    def wants(self, index: int) -> bool:
        """Whether an application of ``index`` is the first (needs its changes)."""
        return index > self.judged_index

    def applied(
        self,
        node: str,
        index: int,
        cmd: Command,
        result: Result,
        jobs: Sequence[tuple[str, Job | None]],
        runs: Sequence[tuple[str, Run | None]],
        now_ms: int,
    ) -> None:
        """``node`` applied ``cmd`` at ``index`` with ``result``; ``jobs`` and ``runs``
        are the records it wrote (None: deleted), needed only when ``wants(index)``."""
        self.checks += 1
        if isinstance(cmd, Start) and isinstance(result, Ok) and cmd.node == node:
            self.local_starts.add((node, cmd.run_id, cmd.token))
        if not self.wants(index):
            return
        self.judged_index = index
        before = self.jobs.get(cmd.job_id) if isinstance(cmd, SkipSlots) else None
        if isinstance(result, Ok):
            self._check_fencing(index, cmd)
        for job_id, job in jobs:
            self._job_changed(job_id, job)
        if isinstance(cmd, SkipSlots) and isinstance(result, Ok) and result.ids:
            assert before is not None
            self._skipped(cmd, before, self.jobs[cmd.job_id])
        for run_id, run in runs:
            self._run_changed(run_id, run, now_ms)

    def execution_began(self, node: str, run_id: str, token: int) -> None:
        """A worker on ``node`` began executing attempt ``run_id`` with ``token``."""
        self.checks += 1
        if (node, run_id, token) not in self.local_starts:
            raise Violation(
                f"dispatch before commit: {node} began executing {run_id} (token {token}) "
                "before its replica applied the accepted Start"
            )

    def replicas(self, images: Mapping[str, tuple[int, bytes]]) -> None:
        """Each node's (applied index, state image): equal indexes, equal images."""
        self.checks += 1
        seen: dict[int, tuple[str, bytes]] = {}
        for node in sorted(images):
            index, image = images[node]
            other, other_image = seen.setdefault(index, (node, image))
            if other_image != image:
                raise Violation(
                    f"replicas diverge: {other} and {node} both applied {index} but hold "
                    "different state"
                )

    def final(self, now_ms: int, bound_ms: int, owed_until_ms: int) -> None:
        """End of the liveness phase: runs settled (5) and no slot missed (2)."""
        self.checks += 1
        for run_id in sorted(self.runs):
            run = self.runs[run_id]
            age = now_ms - self.created_ms[run_id]
            if run.active and age > bound_ms:
                raise Violation(
                    f"liveness: run {run_id} (job {run.job_id}) still {run.state} on "
                    f"{run.node} {age} ms after it was created"
                )
        for job_id in sorted(self.jobs):
            self._check_slots(self.jobs[job_id], owed_until_ms)

    # ------------------------------------------------------------------ rules
    def _check_fencing(self, index: int, cmd: Command) -> None:
        if not isinstance(cmd, Start | Complete | TimeoutRun):
            return
        before = self.runs.get(cmd.run_id)
        name = type(cmd).__name__
        if before is None:
            raise Violation(f"{name} of unknown run {cmd.run_id} accepted at {index}")
        if cmd.token != before.token:
            raise Violation(
                f"stale token: {name} of {cmd.run_id} with token {cmd.token} accepted at "
                f"{index}; the run's token was {before.token}"
            )
        if isinstance(cmd, Start) and cmd.node != before.node:
            raise Violation(
                f"Start of {cmd.run_id} by {cmd.node} accepted at {index}; the run was "
                f"placed on {before.node}"
            )

    def _skipped(self, cmd: SkipSlots, before: Job, after: Job) -> None:
        start, through = before.last_slot_ms, after.last_slot_ms
        skipped = slots_between(before.spec.schedule, start, through, cmd.count + 1)
        counted = after.skipped_slots - before.skipped_slots
        if counted != len(skipped):
            raise Violation(
                f"SkipSlots of {cmd.job_id} through {through} counted {counted} slots; "
                f"{len(skipped)} were skipped"
            )
        self.history[cmd.job_id].skipped.append((start, through))

    def _job_changed(self, job_id: str, job: Job | None) -> None:
        old = self.jobs.pop(job_id, None)
        if job is None:
            self.history.pop(job_id, None)
            return
        self.jobs[job_id] = job
        if (
            old is None
            or old.spec.paused != job.spec.paused
            or old.spec.schedule != job.spec.schedule
        ):
            self.history[job_id] = JobHistory(job.last_slot_ms)

    def _run_changed(self, run_id: str, run: Run | None, now_ms: int) -> None:
        old = self.runs.pop(run_id, None)
        if old is not None and old.state == "running" and old.job_id is not None:
            self.running[old.job_id].discard(run_id)
        if run is None:
            self.created_ms.pop(run_id, None)
            return
        self.runs[run_id] = run
        if old is None:
            self.created_ms[run_id] = now_ms
            if run.kind == "scheduled" and run.attempt == 1:
                assert run.job_id is not None
                owner = self.slot_owner.setdefault((run.job_id, run.scheduled_at), run_id)
                if owner != run_id:
                    raise Violation(
                        f"two Fires for one slot: job {run.job_id} slot {run.scheduled_at} "
                        f"has runs {owner} and {run_id}"
                    )
        if run.state == "running" and run.job_id is not None:
            running = self.running.setdefault(run.job_id, set())
            running.add(run_id)
            job = self.jobs.get(run.job_id)
            if job is not None and job.spec.concurrency == "forbid" and len(running) > 1:
                raise Violation(
                    f"forbid broken: job {run.job_id} has runs {sorted(running)} running"
                )

    def _check_slots(self, job: Job, owed_until_ms: int) -> None:
        """Rule 2 for one job (paused jobs owe nothing)."""
        if job.spec.paused:
            return
        history = self.history[job.id]
        schedule = job.spec.schedule
        cursor = history.wanted_after_ms
        for _ in range(SLOTS_CHECKED_MAX):
            slot = next_slot_ms(schedule, cursor)
            if slot is None or slot + jitter_ms(schedule, job.id, slot) > owed_until_ms:
                return
            cursor = slot
            if (job.id, slot) in self.slot_owner:
                continue
            if any(after < slot <= through for after, through in history.skipped):
                continue
            raise Violation(
                f"missed slot: job {job.id} slot {slot} was due and neither fired nor "
                f"skipped (cursor {job.last_slot_ms})"
            )
