"""The CLI: keys and tokens on disk, and cluster commands against a live app (hypercorn)."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from node.auth import TokenVerifier
from node.cli import main, parse_duration, render_table
from tests.web.apphelpers import Harness, live_server
from web.security import Role
from web.testing import member


def run(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


async def run_in_thread(args: Sequence[str]) -> Result:
    """Run the CLI off the event loop, so the app it talks to keeps serving."""
    return await trio.to_thread.run_sync(run, args)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30m", 1800),
        ("24h", 86_400),
        ("7d", 604_800),
        ("1h30m", 5400),
        ("2w", 1_209_600),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1y", "h", "10 m", "-5m", "0s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_render_table_aligns_like_etcdctl() -> None:
    table = render_table(["NODE", "COMMIT"], [["n1", 7], ["n10", 1234], ["n2", None]])
    assert table.splitlines() == [
        "+------+--------+",
        "| NODE | COMMIT |",
        "+------+--------+",
        "| n1   |      7 |",
        "| n10  |   1234 |",
        "| n2   |      - |",
        "+------+--------+",
    ]


def test_keygen_then_token_create_gives_a_token_the_verifier_accepts(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = run(["-o", "json", "keygen", "--dir", str(keys)])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert Path(made["cluster_key_file"]).exists()
    assert Path(made["public_key_file"]).parent == keys / "jwt-public"

    signing = made["signing_key_file"]
    result = run(
        [
            "token",
            "create",
            "--role",
            "operator",
            "--ttl",
            "30m",
            "--key-file",
            signing,
            "--sub",
            "ci",
        ]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    principal = TokenVerifier.from_directory(keys / "jwt-public").verify(token)
    assert (principal.role, principal.subject) == (Role.OPERATOR, "ci")

    result = run(
        ["token", "create", "--role", "viewer"],
        env={"ROTA_JWT_SIGNING_KEY_FILE": signing, "ROTA_OUTPUT": "json"},
    )
    doc = json.loads(result.stdout)
    assert (doc["role"], doc["ttl_s"], doc["kid"]) == ("viewer", 86_400, made["kid"])


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run(["keygen", "--dir", str(tmp_path)]).exit_code == 0
    result = run(["keygen", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "refusing to overwrite" in result.stderr
    assert run(["keygen", "--dir", str(tmp_path), "--force"]).exit_code == 0


def test_token_create_errors(tmp_path: Path) -> None:
    result = run(["token", "create", "--role", "admin", "--key-file", str(tmp_path / "none.pem")])
    assert result.exit_code == 1 and "none.pem" in result.stderr
    result = run(["token", "create", "--role", "root"])
    assert result.exit_code == 2
    run(["keygen", "--dir", str(tmp_path)])
    key_file = str(tmp_path / "jwt-signing.pem")
    result = run(["token", "create", "--role", "admin", "--ttl", "soon", "--key-file", key_file])
    assert result.exit_code == 2 and "--ttl" in result.stderr
    result = run(["token", "create", "--role", "admin", "--ttl", "400d", "--key-file", key_file])
    assert result.exit_code == 2 and "ttl_s" in result.stderr


def test_tls_ca_then_node_certificates(tmp_path: Path) -> None:
    from node import tls

    ca_dir, out = tmp_path / "ca", tmp_path / "n1"
    result = run(["-o", "json", "tls", "ca", "create", "--dir", str(ca_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "ca_file": str(ca_dir / "ca.pem"),
        "ca_key_file": str(ca_dir / "ca-key.pem"),
    }
    assert (ca_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600

    args = ["tls", "cert", "create", "n1", "--ca-dir", str(ca_dir), "--out-dir", str(out)]
    result = run(args)
    assert result.exit_code == 0, result.output
    pair = tls.PemPair.read(out / "n1.pem", out / "n1-key.pem")
    assert tls.node_id_from_certificate(pair.certificate()) == "n1"
    ca_cert = tls.load_certificate((ca_dir / "ca.pem").read_bytes())
    pair.certificate().verify_directly_issued_by(ca_cert)

    again = run(args)
    assert again.exit_code == 1 and "refusing to overwrite" in again.stderr
    assert run([*args, "--force"]).exit_code == 0
    bad = run(["tls", "cert", "create", "N 1", "--ca-dir", str(ca_dir)])
    assert bad.exit_code == 1 and "node id" in bad.stderr
    missing = run(["tls", "cert", "create", "n2", "--ca-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


async def test_cluster_commands_against_a_live_app() -> None:
    h = Harness()
    with trio.fail_after(20):
        async with live_server(h.app) as url:
            admin = ["--address", url, "--token", h.token(Role.ADMIN)]

            result = await run_in_thread([*admin, "status"])
            assert result.exit_code == 0, result.output
            lines = result.stdout.splitlines()
            assert lines[1].split() == [
                "|",
                "NODE",
                "|",
                "ADDRESS",
                "|",
                "ROLE",
                "|",
                "TERM",
                "|",
                "COMMIT",
                "|",
                "APPLIED",
                "|",
                "LAG",
                "|",
                "LOAD",
                "|",
            ]
            assert "| n1   | 127.0.0.1:8080 | leader   |" in lines[3]
            assert "0 queued, 4 free" in lines[3]
            assert "| n2   | 127.0.0.1:8081 | follower |" in lines[4]

            healthy = h.port.members["n2"]
            h.port.members["n2"] = member("n2", state="dead")  # its figures are stale
            result = await run_in_thread([*admin, "status"])
            assert "| n2   | 127.0.0.1:8081 | follower (dead) |" in result.stdout.splitlines()[4]
            h.port.members["n2"] = healthy

            result = await run_in_thread([*admin, "-o", "json", "status"])
            assert json.loads(result.stdout)["leader"] == "n1"

            result = await run_in_thread([*admin, "members"])
            assert result.exit_code == 0 and result.stdout.count("alive") == 3

            result = await run_in_thread([*admin, "operator", "raft", "list-peers"])
            assert result.exit_code == 0 and "true" in result.stdout

            result = await run_in_thread([*admin, "operator", "raft", "transfer-leader", "n2"])
            assert result.exit_code == 0 and result.stdout.strip() == "leader is now n2"
            assert "transferring leadership" in result.stderr

            result = await run_in_thread(
                [*admin, "operator", "raft", "add-peer", "n4", "--address", "10.0.0.4:7000"]
            )
            assert result.exit_code == 0 and "n4" in h.port.members

            result = await run_in_thread([*admin, "operator", "raft", "remove-peer", "n4"])
            assert result.exit_code == 0 and "n4" not in h.port.members

            result = await run_in_thread(
                [*admin, "-o", "json", "operator", "raft", "snapshot", "save"]
            )
            assert json.loads(result.stdout) == {"index": h.port.commit_index}


async def test_api_errors_are_readable_with_exit_code_1() -> None:
    h = Harness()
    with trio.fail_after(20):
        async with live_server(h.app) as url:
            result = await run_in_thread(["--address", url, "status"])
            assert result.exit_code == 1
            assert "401 Unauthorized: missing bearer token" in result.stderr
            assert "ROTA_TOKEN" in result.stderr

            viewer = ["--address", url, "--token", h.token(Role.VIEWER)]
            result = await run_in_thread([*viewer, "operator", "raft", "remove-peer", "n2"])
            assert result.exit_code == 1 and "403 Forbidden" in result.stderr

            admin = ["--address", url, "--token", h.token(Role.ADMIN)]
            result = await run_in_thread([*admin, "operator", "raft", "remove-peer", "n9"])
            assert result.exit_code == 1 and "404 Not found: no member 'n9'" in result.stderr

            result = await run_in_thread(
                [*admin, "operator", "raft", "add-peer", "n5", "--address", "x"]
            )
            assert result.exit_code == 1 and "[field: address]" in result.stderr


def test_unreachable_node_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        result = run(["--address", f"127.0.0.1:{port}", "status"])
    assert result.exit_code == 3 and "cannot reach" in result.stderr


def test_bad_address_is_a_usage_error() -> None:
    result = run(["--address", "ftp://x", "status"])
    assert result.exit_code == 2 and "http:// or https://" in result.stderr


async def test_run_logs_prints_the_output_and_follows_it_to_the_end() -> None:
    h = Harness()
    run_id = "r000000000001000000"
    h.scheduler.outputs[run_id] = (b"first\n", False)
    with trio.fail_after(30):
        async with live_server(h.app) as url:
            viewer = ["--address", url, "--token", h.token(Role.VIEWER)]
            result = await run_in_thread([*viewer, "run", "logs", run_id])
            assert result.exit_code == 0 and result.stdout == "first\n"
            result = await run_in_thread([*viewer, "-o", "json", "run", "logs", run_id])
            assert json.loads(result.stdout) == {"run_id": run_id, "output": "first\n"}

            async def finish() -> None:
                await trio.sleep(1.0)
                h.scheduler.outputs[run_id] = (b"first\nsecond\n", False)
                await trio.sleep(1.0)
                h.scheduler.outputs[run_id] = (b"first\nsecond\n", True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(finish)
                result = await run_in_thread([*viewer, "run", "logs", "-f", run_id])
            assert result.exit_code == 0 and result.stdout == "first\nsecond\n"
            h.scheduler.missing_runs.add("r000000000009000000")
            missing = await run_in_thread([*viewer, "run", "logs", "r000000000009000000"])
            assert missing.exit_code == 1 and "404" in missing.stderr


async def test_job_add_then_edit_against_a_real_scheduler(tmp_path: Path) -> None:
    from tests.web.realnode import real_scheduler

    with real_scheduler(tmp_path) as (h, node), trio.fail_after(30):
        async with live_server(h.app) as url:
            op = ["--address", url, "--token", h.token(Role.OPERATOR), "-o", "json"]
            added = await run_in_thread(
                [*op, "job", "add", "--name", "b", "--cron", "0 3 * * *", "--shell", "backup"]
            )
            assert added.exit_code == 0, added.output
            job = json.loads(added.stdout)
            edit = ["job", "edit", job["id"]]
            result = await run_in_thread([*op, *edit, "--every", "60", "--priority", "7"])
            assert result.exit_code == 0, result.output
            changed = json.loads(result.stdout)
            assert changed["schedule"]["every_s"] == 60 and "cron" not in changed["schedule"]
            assert changed["priority"] == 7 and changed["version"] == job["version"] + 1
            result = await run_in_thread(
                [*op, *edit, "--cron", "*/5 * * * *", "--tz", "Europe/Berlin", "--shell", "x"]
            )
            changed = json.loads(result.stdout)
            assert changed["schedule"]["cron"] == "*/5 * * * *"
            assert changed["executor"]["command"] == ["/bin/sh", "-c", "x"]
            bad = await run_in_thread([*op, *edit, "--cron", "61 * * * *"])
            assert bad.exit_code == 1 and "schedule.cron" in bad.stderr
            nothing = await run_in_thread([*op, *edit])
            assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
            state = node.sm.state.job(job["id"])
            assert state is not None and state.version == job["version"] + 2
            for name in ("c", "d"):
                await run_in_thread(
                    [*op, "job", "add", "--name", name, "--every", "9", "--shell", "x"]
                )
            table = [a for a in op if a not in ("-o", "json")]
            first = await run_in_thread([*table, "job", "list", "--limit", "2"])
            assert first.stdout.count(" default ") == 2 and "more: --cursor" in first.stderr
            cursor = first.stderr.split("--cursor ")[1].split()[0]
            rest = await run_in_thread([*table, "job", "list", "--limit", "2", "--cursor", cursor])
            assert rest.stdout.count(" default ") == 1 and "more:" not in rest.stderr
