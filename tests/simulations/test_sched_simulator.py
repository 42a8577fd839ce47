"""The scheduler simulation: determinism, a clean sweep, planted bugs caught, and each
checker failing on a known-bad history."""

from __future__ import annotations

import dataclasses

import pytest

from node.commands import (
    Assign,
    Command,
    Complete,
    CreateJob,
    Fire,
    Ok,
    Result,
    SkipSlots,
    Start,
    SubmitTasks,
)
from node.model import JobSpec, Run, ShellSpec, TaskSpec
from node.schedule import EverySchedule
from node.state import SchedulerState
from simulations.__main__ import main
from simulations.checks import Violation
from simulations.sched_checks import SchedChecker
from simulations.sched_world import changed_records, run_sched_seed

T0 = 1_700_000_000_000
SHELL = ShellSpec(("sim",))


def test_one_seed_replays_to_the_same_trace_hash() -> None:
    assert run_sched_seed(10) == run_sched_seed(10)
    assert run_sched_seed(10) != run_sched_seed(11)


def test_a_short_sweep_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mode", "scheduler", "--seeds", "0:40", "--jobs", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("seeds: 40, violations: 0 (")


@pytest.mark.parametrize(
    ("bug", "seeds", "caught_as"),
    [
        ("dispatch_before_commit", 3, "dispatch before commit"),
        ("no_fire_dedup", 10, "two Fires for one slot"),
        ("stale_token", 25, "stale token"),
    ],
)
def test_planted_bug_is_reported_within_a_bounded_number_of_seeds(
    bug: str, seeds: int, caught_as: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--mode", "scheduler", "--seeds", f"0:{seeds}", "--bug", bug, "--jobs", "2"]
    assert main([*args, "--stop-on-first"]) == 1, f"{bug} was not caught in {seeds} seeds"
    first = capsys.readouterr().out.splitlines()[0]
    assert caught_as in first, first


def test_failure_report_names_mode_seed_and_replay_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--mode", "scheduler", "--seeds", "0:2", "--bug", "dispatch_before_commit"]
    assert main([*args, "--stop-on-first", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "faults:" in out
    assert "replay: python -m simulations --mode scheduler --seeds " in out
    assert "--trace --bug dispatch_before_commit" in out


def test_a_scheduler_bug_is_refused_in_raft_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "0:1", "--bug", "stale_token"])
    assert "not a bug of --mode raft" in capsys.readouterr().err


# ---------------------------------------------------------------- the checkers


class Feed:
    """A replica whose applies are reported to a checker, as the simulation does."""

    def __init__(self) -> None:
        self.state = SchedulerState()
        self.checker = SchedChecker()
        self.index = 0
        self.now = 0

    def __call__(self, cmd: Command, node: str = "n1") -> Result:
        self.index += 1
        result = self.state.apply(cmd, self.index)
        jobs, runs = changed_records(self.state, self.state.drain_changes())
        self.checker.applied(node, self.index, cmd, result, jobs, runs, self.now)
        return result

    def ids(self, cmd: Command, node: str = "n1") -> tuple[str, ...]:
        result = self(cmd, node)
        assert isinstance(result, Ok), result
        return result.ids

    def run(self, run_id: str) -> Run:
        run = self.state.run(run_id)
        assert run is not None
        return run

    def job(self, concurrency: str = "allow") -> str:
        spec = JobSpec("j", EverySchedule(1), SHELL, concurrency=concurrency)  # type: ignore[arg-type]
        (job_id,) = self.ids(CreateJob(spec, T0 + 1))  # slots from T0 + 1000
        return job_id

    def started(self, run_id: str, node: str = "n1") -> Start:
        self.ids(Assign((run_id,), node, T0))
        start = Start(run_id, node, self.run(run_id).token, T0)
        self.ids(start)
        return start

    def report(self, cmd: Command, result: Result, runs: list[tuple[str, Run | None]]) -> None:
        """Report an apply the state machine did not do (a planted violation)."""
        self.index += 1
        self.checker.applied("n1", self.index, cmd, result, [], runs, self.now)


def test_a_clean_history_passes_every_check() -> None:
    f = Feed()
    job_id = f.job("forbid")
    (run_id,) = f.ids(Fire(((job_id, T0 + 1000),), T0 + 1000))
    start = f.started(run_id)
    f.checker.execution_began("n1", run_id, start.token)
    f.ids(Complete(run_id, start.token, "succeeded", 0, None, "", T0 + 1500))
    f.ids(SkipSlots(job_id, T0 + 3000, 2, "skip", T0 + 9000))
    f.checker.replicas({"n1": (f.index, f.state.to_image()), "n2": (f.index, f.state.to_image())})
    f.checker.final(now_ms=f.now, bound_ms=1000, owed_until_ms=T0 + 3000)


def test_a_second_record_for_one_slot_is_a_violation() -> None:
    f = Feed()
    job_id = f.job()
    (run_id,) = f.ids(Fire(((job_id, T0 + 1000),), T0 + 1000))
    again = dataclasses.replace(f.run(run_id), id="r" + "f" * 18, origin_id="r" + "f" * 18)
    with pytest.raises(Violation, match="two Fires for one slot"):
        f.report(Fire(((job_id, T0 + 1000),), T0 + 1200), Ok((again.id,)), [(again.id, again)])


def test_a_slot_neither_fired_nor_skipped_is_a_violation() -> None:
    f = Feed()
    job_id = f.job()
    f.ids(Fire(((job_id, T0 + 1000),), T0 + 1000))
    f.ids(SkipSlots(job_id, T0 + 3000, 2, "skip", T0 + 9000))
    f.checker.final(now_ms=0, bound_ms=10**9, owed_until_ms=T0 + 3999)  # 4000 not due yet
    with pytest.raises(Violation, match=f"missed slot: job {job_id} slot {T0 + 4000}"):
        f.checker.final(now_ms=0, bound_ms=10**9, owed_until_ms=T0 + 4000)


def test_a_skip_that_miscounts_its_slots_is_a_violation() -> None:
    f = Feed()
    job_id = f.job()
    f.ids(SkipSlots(job_id, T0 + 2000, 3, "skip", T0 + 9000))  # a lagging plan's count: fine
    job = f.state.job(job_id)
    assert job is not None and job.skipped_slots == 2
    cmd = SkipSlots(job_id, T0 + 4000, 2, "skip", T0 + 9000)
    overcounted = dataclasses.replace(
        job, last_slot_ms=T0 + 4000, next_slot_ms=T0 + 5000, next_fire_at=T0 + 5000, skipped_slots=5
    )
    f.index += 1
    with pytest.raises(Violation, match="counted 3 slots; 2 were skipped"):
        f.checker.applied("n1", f.index, cmd, Ok(("r" + "d" * 18,)), [(job_id, overcounted)], [], 0)


def test_an_accepted_start_or_complete_with_a_stale_token_is_a_violation() -> None:
    f = Feed()
    (run_id,) = f.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    f.ids(Assign((run_id,), "n1", T0))
    token = f.run(run_id).token
    stale = Start(run_id, "n1", token - 1, T0)
    running = dataclasses.replace(f.run(run_id), state="running", started_at=T0)
    with pytest.raises(Violation, match=f"stale token: Start of {run_id} with token {token - 1}"):
        f.report(stale, Ok((run_id,)), [(run_id, running)])
    f2 = Feed()
    (run_id,) = f2.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    start = f2.started(run_id)
    done = Complete(run_id, start.token + 7, "succeeded", 0, None, "", T0)
    with pytest.raises(Violation, match="stale token: Complete"):
        f2.report(done, Ok((run_id,)), [])


def test_a_start_accepted_for_another_node_is_a_violation() -> None:
    f = Feed()
    (run_id,) = f.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    f.ids(Assign((run_id,), "n1", T0))
    with pytest.raises(Violation, match="placed on n1"):
        f.report(Start(run_id, "n2", f.run(run_id).token, T0), Ok((run_id,)), [])


def test_executing_before_the_start_applied_locally_is_a_violation() -> None:
    f = Feed()
    (run_id,) = f.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    f.ids(Assign((run_id,), "n2", T0))
    token = f.run(run_id).token
    with pytest.raises(Violation, match="dispatch before commit"):
        f.checker.execution_began("n2", run_id, token)
    f.ids(Start(run_id, "n2", token, T0), node="n1")  # applied on n1's replica only
    with pytest.raises(Violation, match="dispatch before commit"):
        f.checker.execution_began("n2", run_id, token)
    f.checker.applied("n2", f.index, Start(run_id, "n2", token, T0), Ok((run_id,)), [], [], 0)
    f.checker.execution_began("n2", run_id, token)


def test_two_running_runs_of_a_forbid_job_is_a_violation() -> None:
    f = Feed()
    job_id = f.job("forbid")
    (first,) = f.ids(Fire(((job_id, T0 + 1000),), T0 + 1000))
    f.started(first)
    second = dataclasses.replace(
        f.run(first), id="r" + "e" * 18, origin_id="r" + "e" * 18, kind="manual"
    )
    with pytest.raises(Violation, match="forbid broken"):
        f.report(Assign((second.id,), "n2", T0), Ok(), [(second.id, second)])
    f2 = Feed()
    job_id = f2.job("allow")  # allow: the same is fine
    (first,) = f2.ids(Fire(((job_id, T0 + 1000),), T0 + 1000))
    f2.started(first)
    second = dataclasses.replace(f2.run(first), id=second.id, origin_id=second.id, kind="manual")
    f2.report(Assign((second.id,), "n2", T0), Ok(), [(second.id, second)])


def test_a_run_left_active_past_the_bound_is_a_violation() -> None:
    f = Feed()
    f.now = 1000
    (run_id,) = f.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    f.checker.final(now_ms=6000, bound_ms=5000, owed_until_ms=T0)
    with pytest.raises(Violation, match=f"liveness: run {run_id} .* still queued"):
        f.checker.final(now_ms=6001, bound_ms=5000, owed_until_ms=T0)


def test_replicas_at_one_index_with_different_state_is_a_violation() -> None:
    f = Feed()
    f.job()
    image = f.state.to_image()
    f.ids(SubmitTasks((TaskSpec(SHELL),), (None,), T0))
    checker = SchedChecker()
    checker.replicas({"n1": (5, image), "n2": (6, f.state.to_image())})  # different indexes
    with pytest.raises(Violation, match="replicas diverge: n1 and n2 both applied 5"):
        checker.replicas({"n1": (5, image), "n2": (5, f.state.to_image())})
