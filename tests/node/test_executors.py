"""Executors: shell (env, output, exit codes, timeouts that kill the process group),
HTTP (2xx is success, Rota-* headers), Python handlers (allow-list), dispatch."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from node.executors import (
    HttpExecutor,
    PythonExecutor,
    RunContext,
    RunResult,
    ScriptedExecutor,
    ShellExecutor,
    default_executors,
)

CTX = RunContext("job-1", "run-7", 1_700_000_000_000, 2, 41, timeout_s=5.0)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode()


async def test_shell_run_sees_its_identity_and_streams_output() -> None:
    sink = Sink()
    spec = {
        "type": "shell",
        "command": [
            "/bin/sh",
            "-c",
            'echo "$ROTA_IDEMPOTENCY_KEY $ROTA_FENCING_TOKEN $ROTA_SCHEDULED_AT $GREETING"',
        ],
        "env": {"GREETING": "hi"},
    }
    result = await ShellExecutor().run(spec, CTX, sink)
    assert result == RunResult(
        "succeeded", 0, None, b"job-1:1700000000000:2 41 2023-11-14T22:13:20Z hi\n"
    )
    assert sink.text() == result.output_tail.decode()


async def test_shell_failure_reports_exit_code_and_missing_binary() -> None:
    result = await ShellExecutor().run(
        {"command": ["/bin/sh", "-c", "echo oops >&2; exit 3"]}, CTX, Sink()
    )
    assert (result.state, result.exit_code, result.error) == ("failed", 3, "exit code 3")
    assert result.output_tail == b"oops\n"
    missing = await ShellExecutor().run({"command": ["/nonexistent/tool"]}, CTX, Sink())
    assert missing.state == "failed" and "cannot start" in (missing.error or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    ctx = RunContext("j", "r", 0, 1, 1, timeout_s=0.5)
    result = await ShellExecutor(kill_grace_s=0.5).run(
        {"command": ["/bin/sh", "-c", script]}, ctx, Sink()
    )
    assert result.state == "timed_out"
    grandchild = int(pidfile.read_text())
    with trio.fail_after(5):
        while _alive(grandchild):
            await trio.sleep(0.05)


async def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    with trio.move_on_after(0.5):
        await ShellExecutor(kill_grace_s=0.5).run(
            {"command": ["/bin/sh", "-c", script]}, CTX, Sink()
        )
    grandchild = int(pidfile.read_text())
    with trio.fail_after(5):
        while _alive(grandchild):
            await trio.sleep(0.05)


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(dict(self.headers))
            code = 200 if self.path == "/ok" else 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"answer")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


async def test_http_2xx_succeeds_with_rota_headers_and_5xx_fails(
    http_server: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = http_server
    ok = await HttpExecutor().run(
        {"url": base + "/ok", "method": "POST", "body": "{}"}, CTX, Sink()
    )
    assert (ok.state, ok.exit_code, ok.output_tail) == ("succeeded", 200, b"answer")
    assert seen[0]["Rota-Idempotency-Key"] == "job-1:1700000000000:2"
    assert seen[0]["Rota-Fencing-Token"] == "41"
    bad = await HttpExecutor().run({"url": base + "/down", "method": "POST"}, CTX, Sink())
    assert (bad.state, bad.exit_code, bad.error) == ("failed", 503, "HTTP 503")


def handler_for_tests(x: int, rota: dict[str, str]) -> str:
    return f"{x * 2} {rota['ATTEMPT']}"


async def test_python_handlers_run_only_when_allowed() -> None:
    name = "tests.node.test_executors:handler_for_tests"
    allowed = await PythonExecutor([name]).run({"handler": name, "args": {"x": 21}}, CTX, Sink())
    assert allowed == RunResult("succeeded", 0, None, b"42 2")
    refused = await PythonExecutor([]).run({"handler": name, "args": {"x": 1}}, CTX, Sink())
    assert refused.state == "failed" and "not registered" in (refused.error or "")


async def test_dispatch_by_type_and_the_scripted_twin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    unknown = await default_executors().run({"type": "ftp"}, CTX, Sink())
    assert unknown.state == "failed"
    twin = ScriptedExecutor(duration_s=10.0)
    assert (await twin.run({}, CTX, Sink())).state == "timed_out"
    twin.duration_s = 1.0
    assert (await twin.run({}, CTX, Sink())).state == "succeeded"
    assert len(twin.calls) == 2
