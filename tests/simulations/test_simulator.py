"""The cluster simulator: determinism, a clean sweep, planted bugs caught, and checkers
that fail on known-bad histories."""

from __future__ import annotations

import pytest

from consensus.types import Entry, HardState
from simulations.__main__ import main
from simulations.checks import Checker, Violation
from simulations.world import World, run_seed


def test_one_seed_replays_to_the_same_trace_hash() -> None:
    assert run_seed(3) == run_seed(3)
    assert run_seed(3) != run_seed(4)


def test_a_short_sweep_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0:12", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("seeds: 12, violations: 0")


@pytest.mark.parametrize("bug", ["skip_log_matching", "grant_any_vote", "forget_vote"])
def test_planted_bug_is_reported_within_a_bounded_number_of_seeds(bug: str) -> None:
    found = None
    for seed in range(150):
        try:
            World(seed, frozenset({bug})).run()
        except Violation as e:
            found = (seed, str(e))
            break
    assert found is not None, f"{bug} was not caught in 150 seeds"


def test_failure_report_names_seed_and_replay_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0:60", "--bug", "grant_any_vote", "--stop-on-first"]) == 1
    out = capsys.readouterr().out
    assert "faults:" in out
    assert "replay: python -m simulations --seeds " in out
    assert "--trace --bug grant_any_vote" in out


# ---------------------------------------------------------------- the checkers


def e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(index, term, data=data)


def test_two_leaders_in_one_term_is_a_violation() -> None:
    c = Checker()
    c.became_leader("a", 3)
    with pytest.raises(Violation, match="election safety"):
        c.became_leader("b", 3)


def test_same_index_and_term_with_different_history_is_a_violation() -> None:
    c = Checker()
    c.persisted("a", (e(1, 1, b"x"), e(2, 2, b"y")), None)
    with pytest.raises(Violation, match="log matching"):
        c.persisted("b", (e(1, 1, b"DIFFERENT"), e(2, 2, b"y")), None)


def test_different_entries_applied_at_one_index_is_a_violation() -> None:
    c = Checker()
    c.applied_entry("a", e(1, 1, b"x"))
    with pytest.raises(Violation, match="state machine safety"):
        c.applied_entry("b", e(1, 2, b"z"))


def test_a_leader_missing_a_committed_entry_is_a_violation() -> None:
    c = Checker()
    c.persisted("a", (e(1, 1), e(2, 1)), None)
    c.applied_entry("a", e(1, 1))
    c.applied_entry("a", e(2, 1))
    c.persisted("b", (e(1, 1),), None)
    with pytest.raises(Violation, match="leader completeness"):
        c.became_leader("b", 2)


def test_a_leader_rewriting_its_log_is_a_violation() -> None:
    c = Checker()
    c.persisted("a", (e(1, 1), e(2, 1)), None)
    c.became_leader("a", 2)
    with pytest.raises(Violation, match="append-only"):
        c.persisted("a", (e(2, 2),), None)


def test_term_regression_and_vote_change_across_restart_are_violations() -> None:
    c = Checker()
    c.persisted("a", (), HardState(5, "b", 0))
    with pytest.raises(Violation, match="vote changed"):
        c.restarted("a", HardState(5, None, 0), 0)
    c2 = Checker()
    c2.persisted("a", (), HardState(5, "b", 0))
    with pytest.raises(Violation, match="term regressed"):
        c2.restarted("a", HardState(4, None, 0), 0)


def test_applied_regression_and_stale_read_are_violations() -> None:
    c = Checker()
    c.applied_entry("a", e(1, 1))
    c.applied_entry("a", e(2, 1))
    with pytest.raises(Violation, match="applied index regressed"):
        c.restarted("a", HardState(1, None, 2), 1)
    with pytest.raises(Violation, match="read index"):
        c.read_answered("a", 1, 2)
