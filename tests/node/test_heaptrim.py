"""node.heaptrim: the trim loop's rhythm, and that glibc's trim gives freed heap back."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

from node.heaptrim import TRIM_INTERVAL_S, find_malloc_trim, trim_forever


async def test_the_heap_is_trimmed_once_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def inline(fn: Any) -> Any:
        return fn()

    async with trio.open_nursery() as nursery:
        await nursery.start(trim_forever, lambda: calls.append(trio.current_time()), 5.0, inline)
        await trio.sleep(16.0)
        nursery.cancel_scope.cancel()
    assert calls == [5.0, 10.0, 15.0]
    assert TRIM_INTERVAL_S > 0


def test_a_freed_hole_in_the_heap_is_given_back_to_the_system() -> None:
    if find_malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    # In a child process: 48 MiB of 600-byte buffers (malloc, not CPython's small-object
    # arenas), then a buffer above them that keeps the heap's top in place, then the
    # 48 MiB freed: a hole glibc keeps resident until it is trimmed.
    code = """
from pathlib import Path
from node.heaptrim import find_malloc_trim

def anon_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

hole = [bytearray(600) for _ in range(80_000)]
keeper = [bytearray(600) for _ in range(10)]
del hole
before = anon_kib()
find_malloc_trim()()
after = anon_kib()
print(before - after)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert int(out.stdout) > 24 * 1024, out.stdout  # KiB given back
