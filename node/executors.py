"""Executors: how a run's work is carried out on a node (shell, HTTP, Python handler).

Rules:
- ``Executor`` is the seam (a Protocol); ``ScriptedExecutor`` is its in-memory twin.
- Every run gets its identity: ``ROTA_JOB_ID``, ``ROTA_RUN_ID``, ``ROTA_SCHEDULED_AT``
  (RFC 3339, UTC), ``ROTA_ATTEMPT``, ``ROTA_IDEMPOTENCY_KEY``, ``ROTA_FENCING_TOKEN`` —
  as environment variables (shell), ``Rota-*`` headers (HTTP) or keyword arguments
  (Python), so the work itself can be idempotent and fenced.
- A shell run lives in its own process group; a timeout or a cancellation kills the
  whole group (SIGTERM, then SIGKILL after ``kill_grace_s``). Output is streamed to
  an ``OutputSink`` in chunks as it arrives and the last ``output_tail_bytes`` are
  kept for the run record.
- Results are values, never exceptions: ``RunResult(state, exit_code, error, tail)``
  with state ``succeeded | failed | timed_out``. Cancellation propagates (trio) after
  the process group is killed.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from node.schedule import format_ms

OUTPUT_TAIL_BYTES = 4096
READ_CHUNK_BYTES = 16 << 10
KILL_GRACE_S = 2.0
HTTP_BODY_BYTES_MAX = 64 << 10
ENTRY_POINT_GROUP = "rota.handlers"


@dataclass(frozen=True, slots=True)
class RunContext:
    job_id: str
    run_id: str
    scheduled_at_ms: int
    attempt: int
    fencing_token: int
    timeout_s: float

    @property
    def idempotency_key(self) -> str:
        return f"{self.job_id}:{self.scheduled_at_ms}:{self.attempt}"

    def variables(self) -> dict[str, str]:
        return {
            "JOB_ID": self.job_id,
            "RUN_ID": self.run_id,
            "SCHEDULED_AT": format_ms(self.scheduled_at_ms),
            "ATTEMPT": str(self.attempt),
            "IDEMPOTENCY_KEY": self.idempotency_key,
            "FENCING_TOKEN": str(self.fencing_token),
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    state: str  # succeeded | failed | timed_out
    exit_code: int | None = None
    error: str | None = None
    output_tail: bytes = b""


class OutputSink(Protocol):
    def write(self, chunk: bytes) -> None: ...


class Executor(Protocol):
    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        """Carry out one run described by ``spec`` (a validated executor object)."""
        ...


@dataclass
class TailBuffer:
    """Keeps the last ``limit`` bytes written, and forwards everything to ``sink``."""

    sink: OutputSink
    limit: int = OUTPUT_TAIL_BYTES
    data: bytearray = field(default_factory=bytearray)

    def write(self, chunk: bytes) -> None:
        self.sink.write(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]


class ShellExecutor:
    def __init__(self, kill_grace_s: float = KILL_GRACE_S) -> None:
        self.kill_grace_s = kill_grace_s

    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        command: Sequence[str] = spec["command"]
        env = dict(os.environ)
        env.update(spec.get("env") or {})
        env.update({f"ROTA_{k}": v for k, v in ctx.variables().items()})
        tail = TailBuffer(sink)
        try:
            proc = await trio.lowlevel.open_process(
                list(command),
                env=env,
                cwd=spec.get("cwd") or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as e:
            return RunResult("failed", None, f"cannot start {command[0]!r}: {e.strerror}")
        timed_out = False
        try:
            with trio.move_on_after(ctx.timeout_s) as scope:
                assert proc.stdout is not None
                while chunk := await proc.stdout.receive_some(READ_CHUNK_BYTES):
                    tail.write(bytes(chunk))
                await proc.wait()
            timed_out = scope.cancelled_caught
        finally:
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    await self._kill_group(proc)
            if proc.stdout is not None:
                await proc.stdout.aclose()
        if timed_out:
            return RunResult(
                "timed_out",
                proc.returncode,
                f"timed out after {ctx.timeout_s:g} s",
                bytes(tail.data),
            )
        code = proc.returncode
        state = "succeeded" if code == 0 else "failed"
        error = None if code == 0 else f"exit code {code}"
        return RunResult(state, code, error, bytes(tail.data))

    async def _kill_group(self, proc: trio.Process) -> None:
        for sig, wait_s in ((signal.SIGTERM, self.kill_grace_s), (signal.SIGKILL, math.inf)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with trio.move_on_after(wait_s):
                await proc.wait()
                return


class HttpExecutor:
    """Success is a 2xx answer. The request runs in a worker thread with the run's
    timeout as its socket timeout, so a cancelled run abandons it within that time."""

    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        headers = dict(spec.get("headers") or {})
        headers.update(
            {"Rota-" + k.title().replace("_", "-"): v for k, v in ctx.variables().items()}
        )
        body = spec.get("body")
        req = urllib.request.Request(
            spec["url"],
            data=body.encode() if isinstance(body, str) else None,
            method=spec.get("method", "POST"),
            headers=headers,
        )

        def call() -> tuple[int, bytes, str | None]:
            try:
                with urllib.request.urlopen(req, timeout=ctx.timeout_s) as resp:
                    return resp.status, resp.read(HTTP_BODY_BYTES_MAX), None
            except urllib.error.HTTPError as e:
                return e.code, e.read(HTTP_BODY_BYTES_MAX), None
            except (urllib.error.URLError, OSError, ValueError) as e:
                return 0, b"", str(getattr(e, "reason", e))

        with trio.move_on_after(ctx.timeout_s + 1) as scope:
            status, data, error = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        if scope.cancelled_caught or (error is not None and "timed out" in error):
            return RunResult("timed_out", None, f"timed out after {ctx.timeout_s:g} s")
        tail = TailBuffer(sink)
        tail.write(bytes(data))
        if error is not None:
            return RunResult("failed", None, f"request failed: {error}", bytes(tail.data))
        ok = 200 <= status < 300
        return RunResult(
            "succeeded" if ok else "failed",
            status,
            None if ok else f"HTTP {status}",
            bytes(tail.data),
        )


class PythonExecutor:
    """Calls ``module:function`` handlers that are registered (entry points in the
    ``rota.handlers`` group) or allow-listed in the node's configuration."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.allowed = frozenset(allowed) | registered_handlers()

    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        name = spec["handler"]
        if name not in self.allowed:
            return RunResult("failed", None, f"handler {name!r} is not registered on this node")
        try:
            fn = resolve_handler(name)
        except (ImportError, AttributeError) as e:
            return RunResult("failed", None, f"cannot load {name!r}: {e}")
        kwargs = dict(spec.get("args") or {})
        kwargs["rota"] = ctx.variables()
        tail = TailBuffer(sink)
        try:
            with trio.fail_after(ctx.timeout_s):
                if inspect.iscoroutinefunction(fn):
                    result = await fn(**kwargs)
                else:
                    result = await trio.to_thread.run_sync(
                        lambda: fn(**kwargs), abandon_on_cancel=True
                    )
        except trio.TooSlowError:
            return RunResult("timed_out", None, f"timed out after {ctx.timeout_s:g} s")
        except Exception as e:  # the handler's own failure is the run's outcome
            return RunResult("failed", None, f"{type(e).__name__}: {e}")
        if result is not None:
            tail.write(str(result).encode()[:OUTPUT_TAIL_BYTES])
        return RunResult("succeeded", 0, None, bytes(tail.data))


def registered_handlers() -> frozenset[str]:
    from importlib.metadata import entry_points

    return frozenset(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP))


def resolve_handler(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise AttributeError(f"{name} is not callable")
    return fn  # type: ignore[no-any-return]


@dataclass
class Executors:
    """Dispatch by ``spec["type"]``."""

    by_type: dict[str, Executor]

    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        executor = self.by_type.get(spec.get("type", ""))
        if executor is None:
            return RunResult("failed", None, f"no executor for type {spec.get('type')!r}")
        return await executor.run(spec, ctx, sink)


def default_executors(python_allowed: Sequence[str] = ()) -> Executors:
    return Executors(
        {"shell": ShellExecutor(), "http": HttpExecutor(), "python": PythonExecutor(python_allowed)}
    )


@dataclass
class ScriptedExecutor:
    """The in-memory twin: each run sleeps ``duration_s`` (trio time) and returns the
    scripted result; used by tests and the scheduler's simulations."""

    duration_s: float = 0.0
    result: RunResult = field(default_factory=lambda: RunResult("succeeded", 0))
    calls: list[RunContext] = field(default_factory=list)

    async def run(self, spec: Mapping[str, Any], ctx: RunContext, sink: OutputSink) -> RunResult:
        self.calls.append(ctx)
        with trio.move_on_after(ctx.timeout_s) as scope:
            await trio.sleep(self.duration_s)
        if scope.cancelled_caught:
            return RunResult("timed_out", None, f"timed out after {ctx.timeout_s:g} s")
        sink.write(self.result.output_tail)
        return self.result
