"""The process commands of the CLI: ``rota agent``, ``rota dev`` and ``rota leave``.

``rota agent`` takes every configuration key as a flag (``tick_ms`` -> ``--tick-ms``),
over ``ROTA_*`` variables, over the TOML file (SPEC "Configuration"); an invalid
value stops it before anything starts, with a message naming the key.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from node.config import FIELDS, ConfigError, load_config

LEAVE_TIMEOUT_S = 15.0


def _config_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one text option per configuration key."""
    for key in sorted(FIELDS, reverse=True):
        flag = "--" + key.replace("_", "-")
        fn = click.option(flag, key, default=None, metavar="VALUE", help=f"config {key}")(fn)
    return fn


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
@_config_flags
def agent(config_path: Path | None, log_level: str, **flags: str | None) -> None:
    """Run one Rota node until SIGTERM or Ctrl-C."""
    from node.daemon import run_agent  # heavy imports only for this command

    try:
        cfg = load_config(config_path, os.environ, flags)
    except ConfigError as e:
        raise click.ClickException(f"invalid configuration: {e}") from None
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s {cfg.node_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(partial(run_agent, cfg))
    except OSError as e:
        raise click.ClickException(f"cannot start: {e}") from None


@click.command()
@click.option("--nodes", "nodes_total", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--data-dir", default="data", show_default=True, type=click.Path(path_type=Path))
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(1, 60000))
def dev(nodes_total: int, data_dir: Path, http_port: int) -> None:
    """Start a local cluster of N agents (what `make run` calls); Ctrl-C stops it."""
    from node.devcluster import run_dev

    sys.exit(run_dev(data_dir, nodes_total, http_port))


@click.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, exists=True))
def leave(data_dir: Path) -> None:
    """Ask the local agent whose data is in DATA_DIR to hand over and leave, and wait."""
    pid_file = data_dir / "agent.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise click.ClickException(f"no running agent found ({pid_file})") from None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LEAVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if not pid_file.exists():
            click.echo(f"agent {pid} left")
            return
        time.sleep(0.1)
    raise click.ClickException(f"agent {pid} did not exit within {LEAVE_TIMEOUT_S:.0f} s")
