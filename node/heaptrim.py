"""Heap that CPython has freed goes back to the system (glibc's ``malloc_trim``).

Why: CPython returns freed objects to the C allocator, and glibc keeps the freed
pages of its heap mapped unless asked. After a burst (10,000 job registrations
served 64 at a time), the leader kept ~5 MiB more resident memory than its
followers; a tracemalloc comparison found ~1.1 MiB of it in live objects, and
``malloc_trim(0)`` gave back 1.7 MiB at once. A node that serves bursts should not
keep its peak transient working set resident forever.

Policy: every ``TRIM_INTERVAL_S`` the agent calls ``malloc_trim(0)`` in a worker
thread (1-3 ms on a 200 MiB heap, measured here; the event loop does not wait for
it). Memory the allocator still uses is untouched: only whole free pages are
released, and the next allocation that needs one takes a fresh zeroed page. With
a C library other than glibc (musl, macOS) ``find_malloc_trim`` finds nothing and
the loop is not started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

TRIM_INTERVAL_S: Final = 5.0

Trim = Callable[[], object]


def find_malloc_trim() -> Trim | None:
    """``malloc_trim(0)`` of the process's C library, or None when it has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


async def trim_forever(
    trim: Trim,
    interval_s: float = TRIM_INTERVAL_S,
    offload: Callable[[Trim], Awaitable[Any]] = trio.to_thread.run_sync,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``trim`` (through ``offload``) every ``interval_s`` until cancelled."""
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        await offload(trim)
