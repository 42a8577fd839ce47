"""node.gcpolicy: when survivors are frozen, and what install does to a process."""

from __future__ import annotations

import subprocess
import sys

from node.gcpolicy import FREEZE_MIN_OBJECTS, GEN0_THRESHOLD, freeze_due


def test_survivors_are_frozen_only_past_the_minimum_and_the_frozen_count() -> None:
    assert not freeze_due(FREEZE_MIN_OBJECTS - 1, 0)
    assert freeze_due(FREEZE_MIN_OBJECTS, 0)
    assert not freeze_due(FREEZE_MIN_OBJECTS * 3, FREEZE_MIN_OBJECTS * 4)
    assert freeze_due(FREEZE_MIN_OBJECTS * 4, FREEZE_MIN_OBJECTS * 4)


def test_install_freezes_what_lives_and_freezes_a_grown_state_after_a_full_collection() -> None:
    # In a child process: the policy changes the process's collector for good.
    code = f"""
import gc
from node import gcpolicy
gcpolicy.install()
gcpolicy.install()
assert gc.get_threshold()[0] == {GEN0_THRESHOLD}, gc.get_threshold()
assert gc.callbacks.count(gcpolicy._after_collection) == 1
frozen = gc.get_freeze_count()
assert frozen > 0
state = [[i] for i in range(max({FREEZE_MIN_OBJECTS}, frozen) + 1000)]
gc.collect()
assert gc.get_freeze_count() >= frozen + len(state), (frozen, gc.get_freeze_count())
assert len(gc.get_objects(generation=2)) < 1000
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
