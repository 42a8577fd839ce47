"""The state tests' shared pieces: a job spec builder and one replica driven by hand."""

from __future__ import annotations

from node.commands import Assign, Command, Complete, CreateJob, Fire, Ok, Rejected, Result, Start
from node.model import JobSpec, Run, ShellSpec
from node.schedule import EverySchedule
from node.state import Limits, SchedulerState

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
