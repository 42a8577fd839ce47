"""The work commands of the CLI: ``rota job``, ``rota task`` and ``rota run``.

Each is a thin call of the HTTP API (SPEC "CLI") through ``node.cli.Cli``, so errors,
``--address``, ``--token`` and ``-o table|json`` behave as everywhere else.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.parse
from typing import Any, BinaryIO

import click

from node.cli import Cli, pass_cli, render_table
from node.httpclient import TransportError
from node.model import TERMINAL_STATES

FOLLOW_IDLE_S = 60.0


RUN_COLUMNS = ["ID", "JOB", "ATTEMPT", "STATE", "NODE", "SCHEDULED", "EXIT"]


def _run_row(r: dict[str, Any]) -> list[object]:
    return [
        r["id"],
        r["job_id"] or "-",
        r["attempt"],
        r["state"],
        r["node"] or "-",
        r["scheduled_at"],
        "-" if r["exit_code"] is None else r["exit_code"],
    ]


def _runs_table(runs: list[dict[str, Any]]) -> str:
    return render_table(RUN_COLUMNS, [_run_row(r) for r in runs])


def _job_table(jobs: list[dict[str, Any]]) -> str:
    rows = [
        [
            j["id"],
            j["namespace"],
            j["name"],
            json.dumps(j["schedule"]),
            j["paused"],
            j["next_fire_at"] or "-",
        ]
        for j in jobs
    ]
    return render_table(["ID", "NAMESPACE", "NAME", "SCHEDULE", "PAUSED", "NEXT"], rows)


def _body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object")
    return body


@click.group()
def job() -> None:
    """Scheduled jobs."""


@job.command("add")
@click.option("--name", required=True)
@click.option("--cron", help="cron expression (5 or 6 fields, or @hourly ...)")
@click.option("--tz", default="UTC", show_default=True)
@click.option("--every", "every_s", type=int, help="fixed interval in seconds")
@click.option("--shell", "command", help="shell command run by /bin/sh -c")
@click.option("--json", "raw", help="the whole job as JSON instead of the options above")
@pass_cli
def job_add(
    cli: Cli,
    name: str,
    cron: str | None,
    tz: str,
    every_s: int | None,
    command: str | None,
    raw: str | None,
) -> None:
    """Add a job, e.g. rota job add --name backup --cron '0 3 * * *' --shell 'run-backup'."""
    if raw is not None:
        body = _body(raw)
        body.setdefault("name", name)
    else:
        if (cron is None) == (every_s is None):
            raise click.UsageError("give exactly one of --cron or --every (or --json)")
        if command is None:
            raise click.UsageError("--shell is required (or --json)")
        schedule: dict[str, Any] = {"cron": cron, "tz": tz} if cron else {"every_s": every_s}
        body = {
            "name": name,
            "schedule": schedule,
            "executor": {"type": "shell", "command": ["/bin/sh", "-c", command]},
        }
    created = cli.call("POST", "/api/v1/jobs", body)
    cli.emit(created, lambda: _job_table([created]))


@job.command("edit")
@click.argument("job_id")
@click.option("--cron", help="a new cron expression (keeps --tz or the job's zone)")
@click.option("--tz", help="a new IANA time zone for the cron schedule")
@click.option("--every", "every_s", type=int, help="a new fixed interval in seconds")
@click.option("--shell", "command", help="a new shell command run by /bin/sh -c")
@click.option("--priority", type=int, help="0-9, 9 highest")
@click.option("--json", "raw", help="a JSON merge patch of the job (RFC 7396)")
@pass_cli
def job_edit(
    cli: Cli,
    job_id: str,
    cron: str | None,
    tz: str | None,
    every_s: int | None,
    command: str | None,
    priority: int | None,
    raw: str | None,
) -> None:
    """Change a job, e.g. rota job edit j000000000002 --cron '*/10 * * * *'. The change
    applies only to the version shown first (If-Match): a concurrent edit is refused."""
    path = f"/api/v1/jobs/{urllib.parse.quote(job_id)}"
    patch: dict[str, Any] = _body(raw) if raw is not None else {}
    if cron is not None and every_s is not None:
        raise click.UsageError("give at most one of --cron and --every")
    current = cli.call("GET", path)
    if cron is not None or tz is not None:
        zone = tz or current["schedule"].get("tz") or "UTC"
        expr = cron or current["schedule"].get("cron")
        if expr is None:
            raise click.UsageError("--tz alone applies to a cron schedule only; give --cron")
        patch["schedule"] = _replacing(current["schedule"], {"cron": expr, "tz": zone})
    if every_s is not None:
        patch["schedule"] = _replacing(current["schedule"], {"every_s": every_s})
    if command is not None:
        shell = {"type": "shell", "command": ["/bin/sh", "-c", command]}
        patch["executor"] = _replacing(current["executor"], shell)
    if priority is not None:
        patch["priority"] = priority
    if not patch:
        raise click.UsageError("nothing to change: give an option or --json")
    changed = cli.call("PATCH", path, patch, headers={"If-Match": str(current["version"])})
    cli.emit(changed, lambda: _job_table([changed]))


def _replacing(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new``: keys it no longer has become null."""
    return {**{key: None for key in old if key not in new}, **new}


@job.command("list")
@click.option("--namespace")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", help="the next page, as the previous page said")
@pass_cli
def job_list(cli: Cli, namespace: str | None, limit: int, cursor: str | None) -> None:
    """Jobs by namespace and name, a page at a time."""
    query = {"namespace": namespace, "limit": str(limit), "cursor": cursor}
    page = cli.call("GET", f"/api/v1/jobs?{_query(query)}")
    cli.emit(page, lambda: _job_table(page["items"]))
    _say_next(cli, page)


@job.command("show")
@click.argument("job_id")
@pass_cli
def job_show(cli: Cli, job_id: str) -> None:
    found = cli.call("GET", f"/api/v1/jobs/{urllib.parse.quote(job_id)}")
    cli.emit(found, lambda: json.dumps(found, indent=2))


@job.command("rm")
@click.argument("job_id")
@pass_cli
def job_rm(cli: Cli, job_id: str) -> None:
    cli.call("DELETE", f"/api/v1/jobs/{urllib.parse.quote(job_id)}")
    cli.emit({"deleted": job_id}, lambda: f"deleted {job_id}")


def _job_action(action: str) -> click.Command:
    @click.command(action, help=f"{action.capitalize()} a job.")
    @click.argument("job_id")
    @pass_cli
    def command(cli: Cli, job_id: str) -> None:
        result = cli.call("POST", f"/api/v1/jobs/{urllib.parse.quote(job_id)}/{action}")
        cli.emit(result, lambda: json.dumps(result, indent=2))

    return command


for _action in ("trigger", "pause", "resume"):
    job.add_command(_job_action(_action))


@job.command("next")
@click.argument("job_id")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 100))
@pass_cli
def job_next(cli: Cli, job_id: str, count: int) -> None:
    """Preview the next fire times."""
    found = cli.call("GET", f"/api/v1/jobs/{urllib.parse.quote(job_id)}/next?count={count}")
    cli.emit(found, lambda: "\n".join(found["next"]))


@click.group()
def task() -> None:
    """Ad-hoc tasks."""


@task.command("submit")
@click.option("--shell", "command", help="shell command run by /bin/sh -c")
@click.option("--json", "raw", help="the whole task as JSON")
@pass_cli
def task_submit(cli: Cli, command: str | None, raw: str | None) -> None:
    if (command is None) == (raw is None):
        raise click.UsageError("give exactly one of --shell or --json")
    body: dict[str, object] = (
        _body(raw)
        if raw is not None
        else {"executor": {"type": "shell", "command": ["/bin/sh", "-c", command or ""]}}
    )
    run = cli.call("POST", "/api/v1/tasks", body)
    cli.emit(run, lambda: _runs_table([run]))


@click.group()
def run() -> None:
    """Runs of jobs and tasks."""


@run.command("list")
@click.option("--state")
@click.option("--job", "job_id")
@click.option("--node")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", help="the next page, as the previous page said")
@pass_cli
def run_list(
    cli: Cli,
    state: str | None,
    job_id: str | None,
    node: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """Runs, newest first, a page at a time."""
    query = {"state": state, "job_id": job_id, "node": node, "limit": str(limit), "cursor": cursor}
    page = cli.call("GET", f"/api/v1/runs?{_query(query)}")
    cli.emit(page, lambda: _runs_table(page["items"]))
    _say_next(cli, page)


def _query(query: dict[str, str | None]) -> str:
    return urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


def _say_next(cli: Cli, page: dict[str, Any]) -> None:
    if page.get("next_cursor"):
        cli.progress(f"more: --cursor {page['next_cursor']}")


@run.command("show")
@click.argument("run_id")
@pass_cli
def run_show(cli: Cli, run_id: str) -> None:
    found = cli.call("GET", f"/api/v1/runs/{urllib.parse.quote(run_id)}")
    cli.emit(found, lambda: json.dumps(found, indent=2))


@run.command("cancel")
@click.argument("run_id")
@pass_cli
def run_cancel(cli: Cli, run_id: str) -> None:
    found = cli.call("POST", f"/api/v1/runs/{urllib.parse.quote(run_id)}/cancel")
    cli.emit(found, lambda: _runs_table([found]))


@run.command("logs")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the run has ended.")
@pass_cli
def run_logs(cli: Cli, run_id: str, follow: bool) -> None:
    """The run's output, read from the node that holds it; with -f, streamed while it
    runs (reconnecting where it left off if the stream is cut)."""
    path = f"/api/v1/runs/{urllib.parse.quote(run_id)}"
    if cli.output == "json" and not follow:
        collected = io.BytesIO()
        _read_output(cli, path, 0, False, collected)
        text = collected.getvalue().decode("utf-8", "replace")
        cli.emit({"run_id": run_id, "output": text}, lambda: text)
        return
    out = sys.stdout.buffer
    offset = 0
    while True:
        offset = _read_output(cli, path, offset, follow, out)
        if not follow or cli.call("GET", path)["state"] in TERMINAL_STATES:
            return


def _read_output(cli: Cli, run_path: str, offset: int, follow: bool, out: BinaryIO) -> int:
    """Copy the output from ``offset`` to ``out``; returns the offset reached. A stream
    that goes quiet for ``FOLLOW_IDLE_S`` is ended here (the caller reconnects)."""
    query = {"offset": str(offset), "follow": "true" if follow else "false"}
    with cli.errors():
        try:
            with cli.client().stream(
                f"{run_path}/output", query, idle_timeout_s=FOLLOW_IDLE_S
            ) as stream:
                offset = int(stream.headers.get("Rota-Output-Offset") or offset)
                for chunk in stream.chunks():
                    out.write(chunk)
                    out.flush()
                    offset += len(chunk)
        except TransportError:
            if not follow or offset == int(query["offset"]):
                raise  # nothing came at all: the node is not answering
    return offset
