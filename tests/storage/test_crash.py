"""Crash safety with real processes: a child writes Ready-like batches through
``LmdbLogStorage.save`` and acknowledges each one on stdout; the parent SIGKILLs it at
random moments, reopens the directory and checks that

- every acknowledged write is there, exactly (unless a later acknowledged write
  legitimately truncated or compacted it), and nothing else;
- the one write in flight when the child died is either wholly there or wholly
  absent (no partial batch);
- term and vote never go backwards; every entry passes its checksum (``verify``).

``ROTA_CRASH_KILLS`` sets the number of kills (default 15). The ``slow`` test does at
least 100 (about 40 s) and runs only when asked for: ``pytest -m slow`` or with
``ROTA_CRASH_KILLS`` set.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from crash_child import Save, batch_crc, entry

from consensus.types import HardState
from storage import LmdbLogStorage

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS_DEFAULT = 15
KILLS_SLOW = 100
READY_WAIT_S = 10.0


@dataclass(frozen=True)
class Model:
    """What the acknowledged writes say the store holds."""

    floor: int = 0
    terms: tuple[int, ...] = ()  # terms of floor+1 .. floor+len(terms)
    hard_state: HardState = field(default_factory=HardState)

    @property
    def last(self) -> int:
        return self.floor + len(self.terms)

    def apply(self, words: list[str]) -> Model:
        if words[0] == "compact":
            index = int(words[1])
            assert self.floor <= index <= self.last
            return replace(self, floor=index, terms=self.terms[index - self.floor :])
        save = Save.parse(words[1:])
        expect = [entry(i, save.term) for i in range(save.lo, save.hi)]
        assert batch_crc(expect) == save.crc, "the child wrote something else than it said"
        terms = self.terms
        if save.hi > save.lo:
            assert self.floor < save.lo <= self.last + 1
            terms = terms[: save.lo - self.floor - 1] + (save.term,) * (save.hi - save.lo)
        return replace(self, terms=terms, hard_state=save.hard_state or self.hard_state)


@dataclass(frozen=True)
class Observed:
    floor: int
    terms: tuple[int, ...]
    hard_state: HardState


def observe(path: Path) -> Observed:
    with LmdbLogStorage(path) as s:
        assert s.verify() == s.last_index() - s.first_index() + 1
        first, last = s.first_index(), s.last_index()
        entries = s.entries(first, last + 1)
        assert [e.index for e in entries] == list(range(first, last + 1))
        for e in entries:
            assert e == entry(e.index, e.term), f"entry {e.index} is not what was written"
        return Observed(first - 1, tuple(e.term for e in entries), s.initial_state()[0])


def replay(lines: list[str], model: Model) -> tuple[Model, list[str] | None]:
    """The model after every ack, and the write in flight (intent without ack), if any."""
    inflight: list[str] | None = None
    for line in lines:
        kind, *words = line.split()
        if kind == "intent":
            inflight = words
        elif kind == "ack":
            assert words == inflight, f"ack without its intent: {line}"
            model, inflight = model.apply(words), None
    return model, inflight


def run_child(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out.open("wb") as f:
        return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=f, env=env)


def wait_for(out: Path, word: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while word not in out.read_text():
        assert child.poll() is None, f"child exited early: {out.read_text()[-500:]}"
        assert time.monotonic() < deadline, f"child never printed {word!r}"
        time.sleep(0.002)


def kill_cycles(tmp_path: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    path, out = tmp_path / "node", tmp_path / "child.out"
    model = Model()
    acks = 0
    for cycle in range(kills):
        child = run_child(["log", str(path), str(seed * 10_000 + cycle)], out)
        wait_for(out, "ready", child)
        time.sleep(rng.uniform(0.0, 0.08))
        child.send_signal(signal.SIGKILL)
        child.wait()
        lines = out.read_text().splitlines()
        assert lines[0] == "ready"
        # A line cut by the kill is not an ack (the child flushes whole lines).
        complete = [ln for ln in lines[1:] if ln.count(" ") >= 2]
        acked, inflight = replay(complete, model)
        acks += sum(ln.startswith("ack") for ln in complete)
        seen = observe(path)
        candidates = [acked] + ([acked.apply(inflight)] if inflight is not None else [])
        matches = [
            m
            for m in candidates
            if (m.floor, m.terms, m.hard_state) == (seen.floor, seen.terms, seen.hard_state)
        ]
        assert matches, f"cycle {cycle}: {seen} matches neither {candidates}"
        before, after = model.hard_state, matches[0].hard_state
        assert after.term >= before.term, "term went backwards"
        assert after.term > before.term or before.vote in (None, after.vote), "vote changed"
        model = matches[0]
    return acks


def kills_wanted(default: int) -> int:
    return int(os.environ.get("ROTA_CRASH_KILLS", default))


def test_killed_writers_lose_nothing_acknowledged(tmp_path: Path) -> None:
    acks = kill_cycles(tmp_path, kills_wanted(KILLS_DEFAULT), seed=1)
    assert acks > 0


def long_mode(config: pytest.Config) -> bool:
    """Long runs are asked for by ``ROTA_CRASH_KILLS`` or by selecting ``-m slow``."""
    expr = config.getoption("markexpr") or ""
    return "ROTA_CRASH_KILLS" in os.environ or ("slow" in expr and "not slow" not in expr)


@pytest.mark.slow
def test_killed_writers_lose_nothing_acknowledged_long(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not long_mode(request.config):
        pytest.skip("long crash run: select with -m slow or set ROTA_CRASH_KILLS")
    acks = kill_cycles(tmp_path, max(KILLS_SLOW, kills_wanted(KILLS_SLOW)), seed=2)
    assert acks > 0
