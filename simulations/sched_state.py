"""Planted bugs in the scheduler state machine, for the simulation only.

Each is a subclass of ``node.state.SchedulerState`` that breaks one rule, so the
scheduler simulation can show its checkers catch the break (``--bug NAME``). The
production state machine is never weakened; these classes live here and are built
only by ``simulations.sched_world``. ``dispatch_before_commit`` is a worker bug and
lives in the world; ``STATE_BUGS`` maps the others to their classes.
"""

from __future__ import annotations

import dataclasses

from node.commands import Complete, Fire, Ok, Result, Start
from node.model import Run, RunState
from node.schedule import next_slot_ms
from node.state import SchedulerState


class NoFireDedupState(SchedulerState):
    """Planted: ``Fire`` takes any past slot of the schedule, not only the job's next
    one (so a duplicate or stale Fire fires the slot again), and the fire-record index
    lets a later record of a slot shadow the earlier one instead of asserting."""

    def _fire(self, cmd: Fire) -> Result:
        created: list[str] = []
        for job_id, slot in cmd.items:
            job = self._jobs.get(job_id)
            if job is None or job.spec.paused or slot > cmd.now_ms:
                continue
            if next_slot_ms(job.spec.schedule, slot - 1) != slot:
                continue
            created.append(self._start_slot(job, slot, "scheduled", cmd.now_ms))
            self._put_job(self._moved(job, max(slot, job.last_slot_ms)))
        return Ok(tuple(created))

    def _index_run(self, run: Run, add: bool = True) -> None:
        if run.kind != "scheduled" or run.attempt != 1:
            super()._index_run(run, add)
            return
        key = (run.job_id or "", run.scheduled_at)
        owner = self._fires.pop(key, None)
        if not add:
            self._fires[key] = run.id  # what the base class removes
        super()._index_run(run, add)  # adding: this record shadows any other
        if not add and owner is not None and owner != run.id:
            self._fires[key] = owner  # a shadowed record left; the newer one stays


class StaleTokenState(SchedulerState):
    """Planted: ``Start``, ``Complete`` and ``TimeoutRun`` ignore the fencing token
    (the node and state checks remain)."""

    def _start(self, cmd: Start) -> Result:
        run = self._runs.get(cmd.run_id)
        if run is not None:
            cmd = dataclasses.replace(cmd, token=run.token)
        return super()._start(cmd)

    def _finish(
        self, run_id: str, token: int, now_ms: int, state: RunState, report: Complete | None
    ) -> Result:
        run = self._runs.get(run_id)
        return super()._finish(run_id, token if run is None else run.token, now_ms, state, report)


STATE_BUGS: dict[str, type[SchedulerState]] = {
    "no_fire_dedup": NoFireDedupState,
    "stale_token": StaleTokenState,
}
WORKER_BUGS = frozenset({"dispatch_before_commit"})
SCHED_BUGS = frozenset(STATE_BUGS) | WORKER_BUGS
