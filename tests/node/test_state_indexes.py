"""The queue-depth counts of StateTables: kept in step with the queues by every
change, equal to a rebuild from the records, and a broken count is caught."""

from __future__ import annotations

import pytest

from node.commands import Assign, Complete, NodeGone, Start, Steal, SubmitTasks
from node.model import ShellSpec, TaskSpec
from node.state import SchedulerState

T0 = 1_800_000_000_000
SHELL = ShellSpec(("/bin/true",))


def walked(state: SchedulerState) -> dict[str | None, dict[int, int]]:
    """The depths counted the slow way, from the queues themselves."""
    out: dict[str | None, dict[int, int]] = {}
    for node in [None, *state.busy_nodes()]:
        for run in state.unassigned() if node is None else state.queued_on(node):
            by = out.setdefault(node, {})
            by[run.priority] = by.get(run.priority, 0) + 1
    return out


def test_depths_follow_every_move_of_a_queued_run() -> None:
    s = SchedulerState()
    index = 0

    def apply(cmd: object) -> tuple[str, ...]:
        nonlocal index
        index += 1
        result = s.apply(cmd, index)  # type: ignore[arg-type]
        assert s.queue_depths() == walked(s)
        s.check_invariants()
        return getattr(result, "ids", ())

    tasks = tuple(TaskSpec(SHELL, priority=p) for p in (1, 1, 5, 9))
    ids = apply(SubmitTasks(tasks, (None,) * 4, T0))
    assert s.queue_depths() == {None: {1: 2, 5: 1, 9: 1}}
    apply(Assign(ids[:3], "n1", T0))
    apply(Steal((ids[0],), "n1", "n2", T0))
    assert s.queue_depths() == {None: {9: 1}, "n1": {1: 1, 5: 1}, "n2": {1: 1}}
    token = s.run(ids[0])
    assert token is not None
    apply(Start(ids[0], "n2", token.token, T0))
    started = s.run(ids[0])
    assert started is not None
    apply(Complete(ids[0], started.token, "succeeded", 0, None, "", T0))
    apply(NodeGone("n1", T0))
    assert s.queue_depths() == {None: {1: 1, 5: 1, 9: 1}}


def test_a_count_out_of_step_is_caught_by_the_invariant_check() -> None:
    s = SchedulerState()
    s.apply(SubmitTasks((TaskSpec(SHELL),), (None,), T0), 1)
    s.check_invariants()
    s._depths[None][5] += 1  # a planted bug: a count the records do not imply
    with pytest.raises(AssertionError, match="_depths"):
        s.check_invariants()
