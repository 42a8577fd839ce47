"""The side-effect checks on planted histories: each check passes a clean record and
names the planted violation (a double start, an unexecuted task, a silently missed
slot, a run stuck in running); and the start line really is what a shell writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from simulations.sidefx import (
    JobWatch,
    RunRecord,
    Start,
    duplicate_starts,
    missed_slots,
    parse_starts,
    refused_tasks_ran,
    start_command,
    stuck_runs,
    unexecuted_tasks,
)

J = "j000000000002"


def start(slot: int, attempt: int = 1, run: str = "r1", pid: int = 10, tag: str = "-") -> Start:
    return Start(J if tag == "-" else "task", slot, attempt, run, 7, pid, tag)


def record(slot: int, state: str = "succeeded", error: str | None = None) -> RunRecord:
    return RunRecord(f"r{slot}", J, slot, 1, state, "n1", error)


def test_the_start_line_is_what_the_shell_writes(tmp_path: Path) -> None:
    side = tmp_path / "side effects.txt"  # a space: the path is quoted
    env = dict(os.environ)
    env.update(
        ROTA_IDEMPOTENCY_KEY=f"{J}:4000:2", ROTA_RUN_ID="r000000000009", ROTA_FENCING_TOKEN="12"
    )
    subprocess.run(start_command(str(side), "t7"), env=env, check=True)
    starts, bad = parse_starts(side.read_text() + "garbage line\n")
    assert bad == ["garbage line"]
    assert starts == [Start(J, 4000, 2, "r000000000009", 12, os.getpid(), "t7")]


def test_a_retry_is_fine_but_the_same_attempt_twice_is_not() -> None:
    clean = [start(1000), start(1000, attempt=2, run="r2", pid=11), start(2000, run="r3")]
    assert duplicate_starts(clean, {10: "n1", 11: "n2"}) == []
    planted = [*clean, start(1000, attempt=2, run="r2", pid=12)]
    [violation] = duplicate_starts(planted, {10: "n1", 11: "n2", 12: "n3"})
    assert f"('{J}', 1000, 2) started 2 times" in violation and "n3" in violation
    # Ad-hoc runs are told apart by their tag, not by their (shared) key.
    tasks = [start(5, tag="t1", run="a"), start(5, tag="t2", run="b")]
    assert duplicate_starts(tasks, {}) == []
    assert len(duplicate_starts([*tasks, start(5, tag="t1", run="a")], {})) == 1


def test_every_acknowledged_task_started() -> None:
    starts = [start(5, tag="t1"), start(6, tag="t2")]
    assert unexecuted_tasks({"t1": "r1", "t2": "r2"}, starts) == []
    assert unexecuted_tasks({"t1": "r1", "t3": "r3"}, starts) == [
        "task t3 (run r3) was acknowledged but never started"
    ]


def test_a_refused_task_never_runs() -> None:
    starts = [start(5, tag="t1"), start(6, tag="t2")]
    assert refused_tasks_ran(["t3"], starts) == []
    assert refused_tasks_ran(["t2", "t3"], starts) == ["task t2 was refused but started anyway"]


def test_no_slot_is_silently_missed() -> None:
    watch = JobWatch(J, 1000, 1000, 8000)  # slots 1000 .. 7000
    starts = [start(s) for s in (1000, 2000, 6000)]
    records = [
        record(3000, "queued"),  # fired, not run yet: accounted
        record(5000, "skipped", "misfire (skip): 2 slot(s) through this one skipped"),
        record(7000, "skipped", "overlap: run r1 is still running"),
    ]
    assert missed_slots(watch, starts, records) == []  # 4000 is covered by the 2-slot skip
    planted = [r for r in records if r.slot_ms != 3000]
    [violation] = missed_slots(watch, starts, planted)
    assert "1 slot(s) silently missed: 3000" in violation
    # A skip record covers only as many slots as it says.
    one = [
        *records[:1],
        record(5000, "skipped", "misfire (skip): 1 slot(s) through this one skipped"),
    ]
    assert "4000" in missed_slots(watch, starts, [*one, records[2]])[0]


def test_no_run_is_stuck_in_running() -> None:
    assert stuck_runs([record(1000), record(2000, "failed")]) == []
    [violation] = stuck_runs([record(1000), record(2000, "running")])
    assert "r2000" in violation and "still running" in violation
