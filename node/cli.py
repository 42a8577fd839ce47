"""The ``rota`` command line (click): keys and tokens locally, cluster operations over HTTP.

Structure: ``main`` is the root group; every command or sub-group is attached with
``main.add_command`` (or a ``@group.command`` decorator), so adding one is a function
and one line. Global options (each with a ``ROTA_*`` variable) live on ``main`` and
reach commands through ``Cli``, the context object.

Rules:
- Output is a table for people or JSON (``-o json``) for scripts; JSON goes to
  stdout and is exactly what a script needs, messages go to stderr.
- Exit codes: 0 success; 1 the node refused the request or a local file is bad;
  2 usage errors (click); 3 the node could not be reached.
- Secrets are printed only when that is the command's purpose (``token create``).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click

from node import auth
from node.httpclient import ApiClient, ApiError, ClientError, TransportError
from web.security import ROLE_NAMES, Role

ADDRESS_DEFAULT = "http://127.0.0.1:8080"
KEY_DIR_DEFAULT = Path("data")
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
MEMBER_PAGES_MAX = 100
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class CommandError(click.ClickException):
    """The node refused, or a local file is bad: ``Error: ...`` and exit code 1."""

    exit_code = EXIT_REFUSED


class NodeUnreachable(CommandError):
    """The node could not be reached: exit code 3, so scripts can retry."""

    exit_code = EXIT_UNREACHABLE


def parse_duration(text: str) -> int:
    """``30m``, ``24h``, ``7d``, ``1h30m`` or bare seconds -> seconds (> 0)."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    elif re.fullmatch(r"(\d+[smhdw])+", text):
        seconds = sum(int(n) * _DURATION_UNITS_S[u] for n, u in re.findall(r"(\d+)([smhdw])", text))
    else:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d)")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An etcdctl-style boxed table; numbers right-aligned, None shown as '-'."""
    cells = [list(headers)] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [_is_numeric([row[i] for row in rows]) for i in range(len(headers))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(i: int, cell: str, header: bool) -> str:
        if header:
            return cell.center(widths[i])
        return cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])

    def line(row: list[str], header: bool) -> str:
        return "| " + " | ".join(fmt(i, c, header) for i, c in enumerate(row)) + " |"

    body = [line(r, header=False) for r in cells[1:]]
    return "\n".join([rule, line(cells[0], header=True), rule, *body, rule])


def _is_numeric(column: list[object]) -> bool:
    values = [c for c in column if c is not None]
    return bool(values) and all(isinstance(c, int) for c in values)


@dataclass(slots=True)
class Cli:
    """Global options and the helpers every command uses."""

    address: str
    token: str | None
    output: str

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One API request; client errors become ``CommandError`` with the right exit code."""
        with self.errors():
            return self.client().request(method, path, body=body, headers=headers)

    def client(self) -> ApiClient:
        try:
            return ApiClient(self.address, self.token)
        except ValueError as e:  # a malformed --address
            raise click.UsageError(str(e)) from None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Client errors inside become ``CommandError`` with the right exit code."""
        try:
            yield
        except ApiError as e:
            hint = " (set --token or ROTA_TOKEN)" if e.status == 401 and not self.token else ""
            field = f" [field: {e.field}]" if e.field else ""
            raise CommandError(f"{e}{field}{hint}") from None
        except TransportError as e:
            raise NodeUnreachable(str(e)) from None
        except ClientError as e:
            raise CommandError(str(e)) from None

    def emit(self, data: object, table: Callable[[], str]) -> None:
        """Print ``data`` as JSON or, for people, the text ``table()`` makes of it."""
        if self.output == "json":
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(table())

    def progress(self, message: str) -> None:
        """Say what a slow operation is doing (stderr, so stdout stays parseable)."""
        if self.output == "table":
            click.echo(message, err=True)


pass_cli: Callable[[Callable[..., Any]], Callable[..., Any]] = click.make_pass_decorator(Cli)


@contextlib.contextmanager
def _local_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Report a bad or existing local file as ``Error: ...`` with exit code 1."""
    try:
        yield
    except kinds as e:
        raise CommandError(str(e)) from None


def _emit_files(cli: Cli, files: dict[str, Path]) -> None:
    data = {k: str(v) for k, v in files.items()}
    cli.emit(data, lambda: render_table(["FILE", "PATH"], [[k, v] for k, v in data.items()]))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--address",
    envvar="ROTA_ADDRESS",
    default=ADDRESS_DEFAULT,
    show_default=True,
    help="HTTP address of any node [env ROTA_ADDRESS].",
)
@click.option("--token", envvar="ROTA_TOKEN", help="Bearer token [env ROTA_TOKEN].")
@click.option(
    "-o",
    "--output",
    envvar="ROTA_OUTPUT",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format [env ROTA_OUTPUT].",
)
@click.pass_context
def main(ctx: click.Context, address: str, token: str | None, output: str) -> None:
    """Rota: a distributed task scheduler."""
    ctx.obj = Cli(address, token, output)


# ---------------------------------------------------------------- keys and tokens


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=KEY_DIR_DEFAULT,
    show_default=True,
    help="Where to write the keys.",
)
@click.option("--force", is_flag=True, help="Overwrite existing keys (splits a running cluster).")
@pass_cli
def keygen(cli: Cli, directory: Path, force: bool) -> None:
    """Generate the cluster key and a JWT signing key pair."""
    with _local_errors(auth.KeyFileError, OSError):
        keys = auth.write_keys(directory, force=force)
    data = {
        "kid": keys.kid,
        "cluster_key_file": str(keys.cluster_key_path),
        "signing_key_file": str(keys.signing_key_path),
        "public_key_file": str(keys.public_key_path),
    }
    cli.emit(data, lambda: render_table(["KEY", "VALUE"], [[k, v] for k, v in data.items()]))


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(ROLE_NAMES), required=True)
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d ...")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ROTA_JWT_SIGNING_KEY_FILE",
    default=KEY_DIR_DEFAULT / auth.SIGNING_KEY_FILE,
    show_default=True,
    help="Ed25519 signing key [env ROTA_JWT_SIGNING_KEY_FILE].",
)
@click.option("--sub", help="Subject (who the token is for). Default: your user name.")
@pass_cli
def token_create(cli: Cli, role: str, ttl: str, key_file: Path, sub: str | None) -> None:
    """Mint a token signed with the cluster's signing key (printed on stdout)."""
    try:
        ttl_s = parse_duration(ttl)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ttl") from None
    try:
        kid, key = auth.load_signing_key(key_file)
        jwt = auth.mint_token(key, kid, Role(role), ttl_s, sub or _user())
    except auth.KeyFileError as e:
        raise CommandError(str(e)) from None
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    cli.emit({"token": jwt, "role": role, "ttl_s": ttl_s, "kid": kid}, lambda: jwt)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "rota-cli"


main.add_command(token)


# ---------------------------------------------------------------- TLS (node/tls.py)

TLS_DIR_DEFAULT = KEY_DIR_DEFAULT / "tls"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
KEY_TYPES = ("p256", "ed25519")


@click.group()
def tls() -> None:
    """Certificates for mutual TLS between peers: a cluster CA and node certificates.

    Files: DIR/ca.pem and DIR/ca-key.pem for the CA; OUT/<node>.pem and
    OUT/<node>-key.pem for a node (its tls_ca_file, tls_cert_file, tls_key_file)."""


@tls.group("ca")
def tls_ca() -> None:
    """The cluster certificate authority."""


@tls_ca.command("create")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=TLS_DIR_DEFAULT,
    show_default=True,
)
@click.option("--name", default="rota cluster CA", show_default=True, help="CA common name.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True)
@click.option("--days", type=click.IntRange(1, 36_500), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing CA (orphans its certificates).")
@pass_cli
def tls_ca_create(
    cli: Cli, directory: Path, name: str, key_type: str, days: int, force: bool
) -> None:
    """Create a self-signed CA that signs node certificates."""
    from node import tls as tlsmod  # imported here: only these commands need x509

    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    with _local_errors(FileExistsError, tlsmod.TlsMaterialError, OSError):
        pair = tlsmod.create_ca(name, key_type=cast(tlsmod.KeyType, key_type), valid_days=days)
        pair.write(cert_path, key_path, overwrite=force)
    _emit_files(cli, {"ca_file": cert_path, "ca_key_file": key_path})


@tls.group("cert")
def tls_cert() -> None:
    """Node certificates."""


@tls_cert.command("create")
@click.argument("node_id")
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=TLS_DIR_DEFAULT,
    show_default=True,
    help="Where ca.pem and ca-key.pem are.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the certificate and key [default: the CA directory].",
)
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True)
@click.option("--days", type=click.IntRange(1, 36_500), default=825, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing certificate and key.")
@pass_cli
def tls_cert_create(
    cli: Cli,
    node_id: str,
    ca_dir: Path,
    out_dir: Path | None,
    key_type: str,
    days: int,
    force: bool,
) -> None:
    """Issue NODE_ID a key and a certificate signed by the cluster CA."""
    from node import tls as tlsmod

    out = out_dir or ca_dir
    cert_path, key_path = out / f"{node_id}.pem", out / f"{node_id}-key.pem"
    with _local_errors(FileExistsError, tlsmod.TlsMaterialError, OSError):
        ca = tlsmod.PemPair.read(ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE)
        pair = tlsmod.issue_node_certificate(
            ca, node_id, key_type=cast(tlsmod.KeyType, key_type), valid_days=days
        )
        pair.write(cert_path, key_path, overwrite=force)
    _emit_files(cli, {"cert_file": cert_path, "key_file": key_path})


main.add_command(tls)


# ---------------------------------------------------------------- cluster


@main.command()
@pass_cli
def status(cli: Cli) -> None:
    """One line per node: role, term, commit and applied index, lag, load.

    ROLE names the gossip state too when the node is not alive ("follower (dead)"):
    its other figures are then the last it gossiped. LAG is the cluster's commit
    index minus the node's applied index; LOAD is the node's queued runs and free
    execution slots, as gossiped."""
    view = cli.call("GET", "/api/v1/cluster")
    headers = ["NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LOAD"]
    rows = [
        [
            m["id"],
            m["api_address"],
            m["role"] if m.get("state", "alive") == "alive" else f"{m['role']} ({m['state']})",
            view["term"],
            view["commit_index"],
            m["applied_index"],
            max(0, view["commit_index"] - m["applied_index"]),
            f"{m['queue_depth']} queued, {m['free_slots']} free",
        ]
        for m in view["members"]
    ]
    cli.emit(view, lambda: render_table(headers, rows))


@main.command()
@pass_cli
def members(cli: Cli) -> None:
    """Every member with its gossip state and load."""
    nodes: list[dict[str, Any]] = []
    path = "/api/v1/nodes"
    for _ in range(MEMBER_PAGES_MAX):
        page = cli.call("GET", path)
        nodes += page["nodes"]
        if not page.get("next_cursor"):
            break
        path = f"/api/v1/nodes?cursor={page['next_cursor']}"
    headers = ["ID", "ADDRESS", "ROLE", "STATE", "QUEUED", "FREE"]
    rows = [
        [n["id"], n["api_address"], n["role"], n["state"], n["queue_depth"], n["free_slots"]]
        for n in nodes
    ]
    cli.emit({"nodes": nodes}, lambda: render_table(headers, rows))


@click.group()
def operator() -> None:
    """Cluster operations (admin token)."""


@operator.group()
def raft() -> None:
    """The Raft configuration: peers, leadership, snapshots."""


@raft.command("list-peers")
@pass_cli
def list_peers(cli: Cli) -> None:
    """Raft peers: role, voter or learner, replication progress."""
    view = cli.call("GET", "/api/v1/cluster")
    headers = ["NODE", "ADDRESS", "STATE", "VOTER", "MATCH"]
    rows = [
        [
            m["id"],
            m["api_address"],
            m["role"],
            str(m["role"] != "learner").lower(),
            m["match_index"],
        ]
        for m in view["members"]
    ]
    cli.emit(view["members"], lambda: render_table(headers, rows))


@raft.command("transfer-leader")
@click.argument("target", required=False)
@pass_cli
def transfer_leader(cli: Cli, target: str | None) -> None:
    """Move leadership to TARGET (default: the most caught-up voter)."""
    cli.progress(f"transferring leadership to {target or 'the best voter'} ...")
    body: dict[str, object] = {"target": target} if target else {}
    result = cli.call("POST", "/api/v1/cluster/transfer-leader", body)
    cli.emit(result, lambda: f"leader is now {result['leader']}")


@raft.command("add-peer")
@click.argument("node_id")
@click.option("--address", "raft_address", help="Raft host:port (default: from gossip).")
@pass_cli
def add_peer(cli: Cli, node_id: str, raft_address: str | None) -> None:
    """Add NODE_ID as a learner; the leader promotes it once it has caught up."""
    body: dict[str, object] = {"id": node_id}
    if raft_address:
        body["address"] = raft_address
    view = cli.call("POST", "/api/v1/cluster/members", body)
    cli.emit(view, lambda: f"added {node_id} as a learner")


@raft.command("remove-peer")
@click.argument("node_id")
@pass_cli
def remove_peer(cli: Cli, node_id: str) -> None:
    """Remove NODE_ID from the Raft configuration."""
    view = cli.call("DELETE", f"/api/v1/cluster/members/{node_id}")
    cli.emit(view, lambda: f"removed {node_id}")


@raft.group()
def snapshot() -> None:
    """Raft snapshots."""


@snapshot.command("save")
@pass_cli
def snapshot_save(cli: Cli) -> None:
    """Snapshot the state machine on the node and compact its log."""
    cli.progress("taking a snapshot ...")
    result = cli.call("POST", "/api/v1/cluster/snapshot")
    cli.emit(result, lambda: f"snapshot taken at index {result['index']}")


main.add_command(operator)

from node.cli_agent import agent, dev, leave  # noqa: E402  (process commands)
from node.cli_jobs import job, run, task  # noqa: E402  (work commands)

main.add_command(job)
main.add_command(task)
main.add_command(run)
main.add_command(agent)
main.add_command(dev)
main.add_command(leave)
