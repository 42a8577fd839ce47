"""The replicated scheduler state machine: jobs, runs and fire records, in memory.

Theory of operation: every replica applies the same committed commands in the same
order (``apply(cmd, index)``) and so holds the same state. The only clock is the
command's ``now_ms`` (the proposing leader's time); ids and fencing tokens come from
the Raft ``index``. After a batch of entries, the driver takes ``drain_changes()``
and writes them in the same transaction as the applied index; ``load(records)``
rebuilds a state from those records, and ``to_image``/``from_image`` carry it in a
snapshot. Records, indexes, persistence and reads are the other half,
``node.statetables.StateTables``: every index is derived from the job and run records
alone, so a loaded state equals a live one by construction. This module is the rules.

Rules enforced here:
- Fire at most once per (job, slot). A job's cursor ``last_slot_ms`` only moves
  forward and a ``Fire`` item is accepted only for the job's next slot after it; a
  duplicate, stale, reordered or out-of-schedule item is ignored. Each accepted slot
  leaves a fire record (the scheduled attempt-1 run of that slot), fired or skipped.
- Misfires: ``SkipSlots`` moves the cursor over missed slots, counts them in the job
  (``skipped_slots``: the slots between the cursor and the command's last one, at
  most its ``count``, since a plan from a lagging replica may name slots that have
  fired since) and leaves one ``skipped`` run saying how many and why.
- Fencing: a run's token is the index of the entry that created or last (re)assigned
  it. ``Start`` needs the run queued on that node with that token; ``Complete`` and
  ``TimeoutRun`` need it running with that token. Otherwise ``Rejected(stale_token)``
  and nothing changes.
- Overlap (also for manual triggers): ``forbid`` records the new slot as a skipped
  run while one is queued or running; ``replace`` cancels the active runs (their
  token changes, so a late Complete is stale); ``allow`` runs both.
- Cancel: a queued run becomes cancelled; a running run becomes cancelled at once
  and its token moves to the cancel entry's index, so the worker's Complete is
  stale. The worker learns of it from the applied state and kills the process.
- Retries: a failed or timed-out run with attempts left gets a new run (attempt + 1,
  same slot, unassigned) with ``not_before = now + retry_delay_ms(...)``.
- Dependencies: a run of a job starts only after the latest (non-skipped) run of each
  dependency succeeded. At fire (or trigger) time a dependency whose latest run
  failed, was cancelled, or that never ran makes the slot a skipped run naming the
  reason; one still queued or running makes the new run wait (the planner does not
  place it). When the dependency's runs have all ended, success releases the waiting
  runs and anything else skips them, down the chain (``_settle_dependents``).
- A deleted job takes its runs with it (a worker sees its run vanish: cancelled).
- Pause stops the schedule; on resume the schedule continues from the resume time
  (slots while paused were not missed, they were not wanted). Manual triggers work
  on paused jobs.
- Retention, pruned in apply by record content only (deterministic on reload): per
  job at most ``finished_runs_per_job_max`` finished and ``skipped_runs_per_job_max``
  skipped runs, at most ``finished_task_runs_max`` finished ad-hoc runs, oldest
  (finished_at, id) first; idempotency keys while their run is kept, at most
  ``idempotency_keys_max`` of them and none older than ``idempotency_key_ttl_ms``.
- Determinism: apply never iterates a set or reads a clock; it walks sorted lists.
  A rejected command changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
)
from node.model import (
    ACTIVE_STATES,
    RETRYABLE_STATES,
    TERMINAL_STATES,
    Job,
    JobSpec,
    Run,
    RunKind,
    RunState,
    TaskSpec,
    deadline_ms,
    job_id_for,
    retry_delay_ms,
    run_id_for,
)
from node.schedule import AtSchedule, Schedule, jitter_ms, next_slot_ms, slots_between
from node.sortedlist import SortedList
from node.statetables import (
    TABLE_JOBS,
    TABLE_RUNS,
    TABLES,
    Change,
    Record,
    StateTables,
    image_records,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Retention bounds. Part of the replicated behaviour: every replica must use the
    same values (they are constants of the cluster, like the code)."""

    finished_runs_per_job_max: int = 100
    skipped_runs_per_job_max: int = 20
    finished_task_runs_max: int = 10_000
    idempotency_keys_max: int = 100_000
    idempotency_key_ttl_ms: int = 24 * 3600 * 1000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            assert getattr(self, f.name) >= 1, f.name


def start_cursor(schedule: Schedule, now_ms: int) -> int:
    """The cursor of a schedule taking effect at ``now_ms``: its slots from now on
    (and a one-off instant already past, which the misfire policy then decides)."""
    if isinstance(schedule, AtSchedule):
        return min(now_ms, schedule.at_ms) - 1
    return now_ms - 1


class SchedulerState(StateTables):
    """The state machine. ``apply`` is the only writer; the reads are ``StateTables``'."""

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__()
        self.limits = limits or Limits()
        self._index = 0  # the entry being applied
        self._seq = 0  # runs created by it so far

    @classmethod
    def load(cls, records: Iterable[Record], limits: Limits | None = None) -> SchedulerState:
        """A state rebuilt from persisted records (``drain_changes`` or ``records``)."""
        state = cls(limits)
        state._load_records(records)
        return state

    @classmethod
    def from_image(cls, data: bytes, limits: Limits | None = None) -> SchedulerState:
        """A state rebuilt from ``to_image()``."""
        return cls.load(image_records(data), limits)

    # ------------------------------------------------------------ apply

    def apply(self, cmd: Command, index: int) -> Result:
        """Apply the committed command at Raft ``index``; deterministic."""
        assert index >= 1, index
        self._index, self._seq = index, 0
        self._ended_jobs.clear()
        self._ended_tasks = False
        result = self._dispatch(cmd)
        if isinstance(result, Ok):
            self._settle_dependents(cmd.now_ms)
            self._apply_retention()
        return result

    def _dispatch(self, cmd: Command) -> Result:
        match cmd:
            case CreateJob():
                return self._create_job(cmd)
            case UpdateJob():
                return self._update_job(cmd)
            case DeleteJob():
                return self._delete_job(cmd)
            case SetPaused():
                return self._set_paused(cmd)
            case TriggerJob():
                job = self._jobs.get(cmd.job_id)
                if job is None:
                    return Rejected("not_found", f"no job {cmd.job_id}")
                return Ok((self._start_slot(job, cmd.now_ms, "manual", cmd.now_ms),))
            case SubmitTasks():
                return self._submit(cmd)
            case Fire():
                return self._fire(cmd)
            case SkipSlots():
                return self._skip_slots(cmd)
            case Assign():
                return self._move(cmd.run_ids, None, cmd.node, cmd.now_ms)
            case Start():
                return self._start(cmd)
            case Complete():
                return self._finish(cmd.run_id, cmd.token, cmd.now_ms, cmd.state, cmd)
            case CancelRun():
                return self._cancel_run(cmd)
            case Steal():
                return self._move(cmd.run_ids, cmd.from_node, cmd.to_node, cmd.now_ms)
            case NodeGone():
                return self._node_gone(cmd)
            case TimeoutRun():
                return self._finish(cmd.run_id, cmd.token, cmd.now_ms, "timed_out", None)

    # ------------------------------------------------------------ jobs

    def _create_job(self, cmd: CreateJob) -> Result:
        spec = cmd.spec
        if (spec.namespace, spec.name) in self._names:
            return Rejected(
                "conflict", f"a job named {spec.name!r} exists in {spec.namespace!r}", "name"
            )
        if (bad := self._check_dependencies(None, spec)) is not None:
            return bad
        job_id = job_id_for(self._index)
        assert job_id not in self._jobs, job_id
        cursor = start_cursor(spec.schedule, cmd.now_ms)
        job = Job(job_id, spec, cmd.now_ms, cmd.now_ms, 1, cursor, None, None)
        self._put_job(self._moved(job, cursor))
        return Ok((job_id,))

    def _update_job(self, cmd: UpdateJob) -> Result:
        job = self._jobs.get(cmd.job_id)
        if job is None:
            return Rejected("not_found", f"no job {cmd.job_id}")
        if job.version != cmd.expected_version:
            detail = f"job {job.id} is at version {job.version}, not {cmd.expected_version}"
            return Rejected("version_conflict", detail)
        spec = cmd.spec
        owner = self._names.get((spec.namespace, spec.name))
        if owner is not None and owner != job.id:
            return Rejected(
                "conflict", f"a job named {spec.name!r} exists in {spec.namespace!r}", "name"
            )
        if (bad := self._check_dependencies(job.id, spec)) is not None:
            return bad
        return self._change_spec(job, spec, cmd.now_ms)

    def _set_paused(self, cmd: SetPaused) -> Result:
        job = self._jobs.get(cmd.job_id)
        if job is None:
            return Rejected("not_found", f"no job {cmd.job_id}")
        return self._change_spec(job, dataclasses.replace(job.spec, paused=cmd.paused), cmd.now_ms)

    def _change_spec(self, job: Job, spec: JobSpec, now_ms: int) -> Result:
        if spec == job.spec:
            return Ok((job.id,))  # nothing to change: no new version
        cursor = job.last_slot_ms  # and never backwards: no slot can fire twice
        if spec.schedule != job.spec.schedule:
            cursor = max(cursor, start_cursor(spec.schedule, now_ms))
        elif job.spec.paused and not spec.paused:
            cursor = max(cursor, now_ms - 1)  # resume: the paused slots were not wanted
        self._put_job(self._moved(job, cursor, spec=spec, updated_at=now_ms))
        return Ok((job.id,))

    def _delete_job(self, cmd: DeleteJob) -> Result:
        job = self._jobs.get(cmd.job_id)
        if job is None:
            return Rejected("not_found", f"no job {cmd.job_id}")
        if cmd.expected_version is not None and job.version != cmd.expected_version:
            detail = f"job {job.id} is at version {job.version}, not {cmd.expected_version}"
            return Rejected("version_conflict", detail)
        dependents = list(self._dependents.get(job.id, ()))
        if dependents:
            return Rejected("conflict", f"jobs depend on {job.id}: {', '.join(dependents[:10])}")
        for run_id in list(self._job_runs.get(job.id, ())):
            self._drop_run(run_id)
        self._drop_job(job.id)
        return Ok((job.id,))

    def _check_dependencies(self, job_id: str | None, spec: JobSpec) -> Rejected | None:
        for i, dep in enumerate(spec.depends_on):
            if dep == job_id:
                return Rejected("invalid", "a job cannot depend on itself", f"depends_on[{i}]")
            if dep not in self._jobs:
                return Rejected("invalid", f"no job {dep}", f"depends_on[{i}]")
        if job_id is not None and self._reaches(spec.depends_on, job_id):
            return Rejected(
                "invalid", f"would make a dependency cycle through {job_id}", "depends_on"
            )
        return None

    def _reaches(self, starts: Sequence[str], target: str) -> bool:
        """Whether ``target`` is reachable from ``starts`` along depends_on edges."""
        seen: set[str] = set()
        stack = list(starts)
        while stack:
            job_id = stack.pop()
            if job_id == target:
                return True
            if job_id in seen or job_id not in self._jobs:
                continue
            seen.add(job_id)
            stack.extend(self._jobs[job_id].spec.depends_on)
        return False

    def _moved(
        self,
        job: Job,
        cursor: int,
        *,
        spec: JobSpec | None = None,
        skipped_slots: int = 0,
        updated_at: int | None = None,
    ) -> Job:
        """``job`` with its cursor at ``cursor``, ``skipped_slots`` more slots skipped
        and, given ``spec`` and ``updated_at``, a new spec version; its next slot and
        due time recomputed (none while paused)."""
        new_spec = spec or job.spec
        slot = None if new_spec.paused else next_slot_ms(new_spec.schedule, cursor)
        due = None if slot is None else slot + jitter_ms(new_spec.schedule, job.id, slot)
        return Job(  # not dataclasses.replace: this runs for every fire
            job.id,
            new_spec,
            job.created_at,
            job.updated_at if updated_at is None else updated_at,
            job.version if spec is None else job.version + 1,
            cursor,
            slot,
            due,
            job.skipped_slots + skipped_slots,
        )

    # ------------------------------------------------------------ firing

    def _fire(self, cmd: Fire) -> Result:
        created: list[str] = []
        ignored = 0
        for job_id, slot in cmd.items:
            job = self._jobs.get(job_id)
            # The next slot only: this drops duplicates, stale items (slot at or before
            # the cursor), reordered ones, paused jobs and slots of a replaced schedule.
            if job is None or job.next_slot_ms != slot or slot > cmd.now_ms:
                ignored += 1
                continue
            assert (job_id, slot) not in self._fires, ("fired twice", job_id, slot)
            run_id = self._start_slot(job, slot, "scheduled", cmd.now_ms)
            skipped = int(self._runs[run_id].state == "skipped")
            self._put_job(self._moved(job, slot, skipped_slots=skipped))
            created.append(run_id)
        return Ok(tuple(created), ignored)

    def _skip_slots(self, cmd: SkipSlots) -> Result:
        job = self._jobs.get(cmd.job_id)
        if job is None:
            return Rejected("not_found", f"no job {cmd.job_id}")
        through = cmd.through_slot_ms
        if through <= job.last_slot_ms:
            return Ok((), 1)  # already accounted for
        if through > cmd.now_ms or next_slot_ms(job.spec.schedule, through - 1) != through:
            return Rejected(
                "invalid", f"{through} is not a past slot of {job.id}", "through_slot_ms"
            )
        # Count what this skips from the cursor as it is now: the plan's count was taken
        # on a replica that may lag (slots it saw may have fired since). Never more.
        count = len(slots_between(job.spec.schedule, job.last_slot_ms, through, cmd.count))
        reason = f"misfire ({cmd.policy}): {count} slot(s) through this one skipped"
        run_id = self._skip_run(job, through, "scheduled", reason, cmd.now_ms)
        self._put_job(self._moved(job, through, skipped_slots=count))
        return Ok((run_id,))

    def _start_slot(self, job: Job, slot_ms: int, kind: RunKind, now_ms: int) -> str:
        """Create the run of one slot (or trigger) under the job's dependency and
        overlap rules: queued, or skipped with the reason. Returns its id."""
        if (reason := self._unmet_dependency(job)) is not None:
            return self._skip_run(job, slot_ms, kind, reason, now_ms)
        active = [self._runs[r] for r in self._active.get(job.id, ())]
        if active and job.spec.concurrency == "forbid":
            reason = f"overlap: run {active[0].id} is still {active[0].state}"
            return self._skip_run(job, slot_ms, kind, reason, now_ms)
        run_id = self._new_run_id()
        if job.spec.concurrency == "replace":
            for old in active:
                self._put_run(self._ended(old, "cancelled", now_ms, f"replaced by {run_id}"))
        self._put_run(self._new_run(run_id, job.id, kind, slot_ms, job.spec, now_ms))
        return run_id

    def _unmet_dependency(self, job: Job) -> str | None:
        """Why a slot of ``job`` cannot run, judged by each dependency's latest run:
        succeeded, or still in flight (the new run then waits, see
        ``_settle_dependents``), is fine; anything else, or no run yet, is not."""
        for dep in job.spec.depends_on:
            if dep not in self._jobs:
                return f"dependency {dep} does not exist"
            latest = self.latest_run(dep)
            if latest is None:
                return f"dependency {dep} has not run"
            if latest.state not in ("succeeded", "queued", "running"):
                return f"dependency {dep}: latest run {latest.id} is {latest.state}"
        return None

    def _settle_dependents(self, now_ms: int) -> None:
        """When a job's runs have all ended and its latest did not succeed, the runs
        waiting on it (its dependents' queued, unplaced runs) are skipped — and so on
        down the chain. If it succeeded, the planner places them."""
        work: list[tuple[str, str | None]] = [(job_id, None) for job_id in sorted(self._ended_jobs)]
        while work:
            job_id, reason = work.pop(0)
            if job_id not in self._jobs or self._active.get(job_id):
                continue
            if reason is None:
                latest = self.latest_run(job_id)
                if latest is None or latest.state == "succeeded":
                    continue
                reason = f"dependency {job_id}: latest run {latest.id} is {latest.state}"
            for dependent in self._dependents.get(job_id, ()):
                waiting = [
                    r for r in self.active_runs(dependent) if r.node is None and r.state == "queued"
                ]
                for run in waiting:
                    self._put_run(self._ended(run, "skipped", now_ms, reason))
                if waiting:
                    work.append((dependent, f"dependency {dependent} was skipped ({job_id})"))

    def _skip_run(self, job: Job, slot_ms: int, kind: RunKind, reason: str, now_ms: int) -> str:
        run = self._new_run(self._new_run_id(), job.id, kind, slot_ms, job.spec, now_ms)
        self._put_run(dataclasses.replace(run, state="skipped", finished_at=now_ms, error=reason))
        return run.id

    # ------------------------------------------------------------ tasks

    def _submit(self, cmd: SubmitTasks) -> Result:
        self._expire_keys(cmd.now_ms)  # first, so an expired key is never honoured
        ids: list[str] = []
        ignored = 0
        for task, key in zip(cmd.tasks, cmd.idempotency_keys, strict=True):
            if key is not None and key in self._keys:
                ids.append(self._keys[key])
                ignored += 1
                continue
            run = self._new_run(self._new_run_id(), None, "task", cmd.now_ms, task, cmd.now_ms, key)
            self._put_run(run)
            ids.append(run.id)
        self._expire_keys(cmd.now_ms)
        return Ok(tuple(ids), ignored)

    def _expire_keys(self, now_ms: int) -> None:
        order, limits = self._key_order, self.limits
        while order and (
            len(order) > limits.idempotency_keys_max
            or order[0][0] < now_ms - limits.idempotency_key_ttl_ms
        ):
            run = self._runs[order[0][1]]
            self._put_run(dataclasses.replace(run, submit_key=None))

    # ------------------------------------------------------------ runs

    def _move(
        self, run_ids: Sequence[str], from_node: str | None, to_node: str, now_ms: int
    ) -> Result:
        """Assign (``from_node`` None) or Steal: each run still queued on ``from_node``
        and past its ``not_before`` goes to ``to_node`` with this entry's index as its
        new token; the rest are ignored."""
        moved: list[str] = []
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if (
                run is not None
                and run.state == "queued"
                and run.node == from_node
                and (run.not_before is None or run.not_before <= now_ms)
            ):
                self._put_run(dataclasses.replace(run, node=to_node, token=self._index))
                moved.append(run_id)
        return Ok(tuple(moved), len(run_ids) - len(moved))

    def _start(self, cmd: Start) -> Result:
        run = self._runs.get(cmd.run_id)
        if run is None:
            return Rejected("not_found", f"no run {cmd.run_id}")
        if run.state != "queued" or run.node != cmd.node or run.token != cmd.token:
            return self._stale(run, cmd.token)
        self._put_run(dataclasses.replace(run, state="running", started_at=cmd.now_ms))
        return Ok((run.id,))

    def _finish(
        self, run_id: str, token: int, now_ms: int, state: RunState, report: Complete | None
    ) -> Result:
        """Complete (``report`` given) or TimeoutRun: a running run with this token ends."""
        run = self._runs.get(run_id)
        if run is None:
            return Rejected("not_found", f"no run {run_id}")
        if run.state != "running" or run.token != token:
            return self._stale(run, token)
        if report is None:
            deadline = deadline_ms(run)
            assert deadline is not None
            if now_ms < deadline:
                return Rejected("conflict", f"run {run_id} is not past its deadline {deadline}")
            ended = self._ended(run, "timed_out", now_ms, f"timed out after {run.timeout_s} s")
        else:
            ended = dataclasses.replace(
                self._ended(run, state, now_ms, report.error),
                exit_code=report.exit_code,
                output_tail=report.output_tail,
            )
        self._put_run(ended)
        retry = self._retry(ended, now_ms)
        return Ok((run_id,) if retry is None else (run_id, retry))

    def _cancel_run(self, cmd: CancelRun) -> Result:
        run = self._runs.get(cmd.run_id)
        if run is None:
            return Rejected("not_found", f"no run {cmd.run_id}")
        if run.state in TERMINAL_STATES:
            return Rejected("conflict", f"run {run.id} is already {run.state}")
        self._put_run(self._ended(run, "cancelled", cmd.now_ms, "cancelled"))
        return Ok((run.id,))

    def _node_gone(self, cmd: NodeGone) -> Result:
        ids: list[str] = []
        for _, _, run_id in list(self._queued_on.get(cmd.node, ())):
            run = self._runs[run_id]
            self._put_run(dataclasses.replace(run, node=None, token=self._index))
            ids.append(run_id)
        for run_id in list(self._running_on.get(cmd.node, ())):
            failed = self._ended(self._runs[run_id], "failed", cmd.now_ms, "node lost")
            self._put_run(failed)
            ids.append(run_id)
            if (retry := self._retry(failed, cmd.now_ms)) is not None:
                ids.append(retry)
        return Ok(tuple(ids))

    def _ended(self, run: Run, state: RunState, now_ms: int, error: str | None) -> Run:
        """``run`` in terminal ``state``. The token moves to this entry's index, so any
        report about the old attempt is stale."""
        assert state in TERMINAL_STATES and run.state in ACTIVE_STATES, (state, run.state)
        return dataclasses.replace(
            run, state=state, finished_at=now_ms, error=error, token=self._index
        )

    def _retry(self, run: Run, now_ms: int) -> str | None:
        """A new attempt for a failed or timed-out run with attempts left."""
        if run.state not in RETRYABLE_STATES or run.attempt >= run.retry.max_attempts:
            return None
        delay = retry_delay_ms(run.retry, run.id, run.attempt)
        again = dataclasses.replace(
            run,
            id=self._new_run_id(),
            attempt=run.attempt + 1,
            state="queued",
            node=None,
            token=self._index,
            queued_at=now_ms,
            started_at=None,
            finished_at=None,
            exit_code=None,
            error=None,
            output_tail="",
            not_before=now_ms + delay,
            submit_key=None,
        )
        self._put_run(again)
        return again.id

    def _stale(self, run: Run, token: int) -> Rejected:
        detail = f"run {run.id} is {run.state} on {run.node} with token {run.token}, not {token}"
        return Rejected("stale_token", detail)

    def _new_run_id(self) -> str:
        run_id = run_id_for(self._index, self._seq)
        self._seq += 1
        assert run_id not in self._runs, run_id
        return run_id

    def _new_run(
        self,
        run_id: str,
        job_id: str | None,
        kind: RunKind,
        slot_ms: int,
        spec: JobSpec | TaskSpec,
        now_ms: int,
        submit_key: str | None = None,
    ) -> Run:
        # Positional, in ``Run``'s field order: twice as fast as keywords, and this
        # runs for every fire and every task.
        return Run(
            run_id,  # id
            job_id,
            kind,
            run_id,  # origin_id
            slot_ms,  # scheduled_at
            1,  # attempt
            "queued",  # state
            None,  # node
            self._index,  # token
            now_ms,  # queued_at
            spec.priority,
            spec.timeout_s,
            spec.executor,
            spec.retry,
            spec.tags,
            None,  # started_at
            None,  # finished_at
            None,  # exit_code
            None,  # error
            "",  # output_tail
            None,  # not_before
            submit_key,
        )

    # ------------------------------------------------------------ retention

    def _apply_retention(self) -> None:
        """Prune the owners whose runs ended in this entry, in sorted order."""
        limits = self.limits
        for job_id in sorted(self._ended_jobs):
            self._retain(self._finished.get(job_id), limits.finished_runs_per_job_max)
            self._retain(self._skipped.get(job_id), limits.skipped_runs_per_job_max)
        if self._ended_tasks:
            self._retain(self._task_finished, limits.finished_task_runs_max)

    def _retain(self, ended: SortedList[tuple[int, str]] | None, keep: int) -> None:
        """Drop the oldest (finished_at, id) runs of ``ended`` beyond ``keep``."""
        while ended is not None and len(ended) > keep:
            self._drop_run(ended[0][1])  # unindexing shortens ``ended``


__all__ = [
    "TABLES",
    "TABLE_JOBS",
    "TABLE_RUNS",
    "Change",
    "Limits",
    "Record",
    "SchedulerState",
]
