"""Runs every transcript in ``tests/consensus/scenarios`` (format: ``harness.py``).

Set ``ROTA_REWRITE=1`` to rewrite the transcripts with the actual output instead of
failing, then review the diff: a regenerated transcript that enshrines wrong
behaviour is a defect. Files starting with ``# xfail: <reason>`` record a known core
bug with the correct expected output; they must fail until the core is fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.raft import KNOWN_BUGS
from tests.consensus.harness import REWRITE, parse, run_file, scenario_files, xfail_reason


def _params() -> list[object]:
    out: list[object] = []
    for path in scenario_files():
        reason = xfail_reason(path)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


@pytest.mark.parametrize("path", _params())
def test_transcript(path: Path) -> None:
    rewrite = REWRITE and xfail_reason(path) is None
    mismatches = run_file(path, rewrite=rewrite)
    if mismatches and not rewrite:
        report = "\n\n".join(f"{m.where}\n{m.diff}" for m in mismatches)
        pytest.fail(f"{len(mismatches)} block(s) differ:\n{report}", pytrace=False)


def test_there_are_enough_scenarios() -> None:
    files = scenario_files()
    assert len(files) >= 30
    for path in files:
        text = path.read_text()
        assert text.startswith("#"), f"{path.name} must open with a comment saying what it shows"
        assert parse(text, path.name), f"{path.name} has no commands"


@pytest.mark.parametrize("bug", sorted(KNOWN_BUGS))
def test_planted_bugs_are_caught(bug: str) -> None:
    """The transcripts would notice each of the core's planted bugs (a mutation check)."""
    caught = []
    for path in scenario_files():
        if xfail_reason(path) is not None:
            continue
        try:
            if run_file(path, overrides={"bugs": frozenset({bug})}):
                caught.append(path.stem)
        except AssertionError:
            caught.append(path.stem)
    assert caught, f"no transcript notices the planted bug {bug!r}"
