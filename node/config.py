"""A node's configuration: one frozen ``NodeConfig``, loaded from TOML, ``ROTA_*`` and flags.

Rules:
- Precedence: flags > environment (``ROTA_<KEY>``, e.g. ``ROTA_TICK_MS``) > TOML file >
  defaults. Every key has the same name in all three places.
- Units are in the names (``tick_ms``, ``max_frame_bytes``, ``voter_grace_s``); every
  number has bounds, declared next to the field.
- Invalid configuration stops the node: ``ConfigError``'s message starts with the
  key and says where the bad value came from, e.g.
  ``tick_ms: must be an integer in [1, 1000], got 'abc' (from env ROTA_TICK_MS)``.
- Unknown keys in the TOML file or in flags are errors (with a did-you-mean). Unknown
  ``ROTA_*`` variables are ignored: the CLI (``ROTA_ADDRESS``, ``ROTA_TOKEN``) and
  shell runs (``ROTA_JOB_ID`` ...) share the prefix.
- TOML values must have the right TOML type; environment values (and string flags)
  are parsed from text: lists are comma-separated, maps are ``k=v,k2=v2``.
- Relative paths are relative to the working directory. Key files default to the
  ``rota keygen`` layout (see ``node/auth.py``) under ``secrets_dir``, which
  defaults to ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import socket
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from node.auth import CLUSTER_KEY_FILE, PUBLIC_KEYS_DIR, SIGNING_KEY_FILE
from web.port import NODE_ID_DESCRIPTION, format_host_port, is_host, is_node_id, parse_host_port
from web.security import ApiLimits

ENV_PREFIX = "ROTA_"
TAGS_MAX = 32
TAG_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TAG_VALUE_CHARS_MAX = 255
PEERS_MAX = 15
JOIN_MAX = 64
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


class ConfigError(ValueError):
    """Invalid configuration. ``key`` names the offending key (None for file errors)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


# ---------------------------------------------------------------- value kinds


@dataclass(frozen=True, slots=True)
class Kind:
    """How one key's value is read: from a typed value (TOML, flags) or from text (env)."""

    from_value: Callable[[object], Any]
    from_text: Callable[[str], Any]


def _int(lo: int, hi: int) -> Kind:
    what = f"must be an integer in [{lo}, {hi}]"

    def check(v: object) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{what}, got {v!r}")
        return v

    def text(s: str) -> int:
        try:
            return check(int(s.strip().replace("_", "")))
        except ValueError:
            raise ValueError(f"{what}, got {s!r}") from None

    return Kind(check, text)


def _float(lo: float, hi: float) -> Kind:
    what = f"must be a number in [{lo:g}, {hi:g}]"

    def check(v: object) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{what}, got {v!r}")
        return float(v)

    def text(s: str) -> float:
        try:
            return check(float(s))
        except ValueError:
            raise ValueError(f"{what}, got {s!r}") from None

    return Kind(check, text)


def _bool_value(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


_BOOL_TEXT = {"true": True, "1": True, "yes": True, "on": True}
_BOOL_TEXT |= {"false": False, "0": False, "no": False, "off": False}


def _bool_text(s: str) -> bool:
    if s.strip().lower() not in _BOOL_TEXT:
        raise ValueError(f"must be true or false, got {s!r}")
    return _BOOL_TEXT[s.strip().lower()]


def _string(accept: Callable[[str], bool], what: str, optional: bool = False) -> Kind:
    def check(v: object) -> str | None:
        if optional and v in (None, ""):
            return None
        if not isinstance(v, str) or not accept(v):
            raise ValueError(f"must be {what}, got {v!r}")
        return v

    return Kind(check, check)


def _path(optional: bool) -> Kind:
    def check(v: object) -> Path | None:
        if optional and v in (None, ""):
            return None
        if isinstance(v, str) and v:
            return Path(v)
        if isinstance(v, Path):
            return v
        raise ValueError(f"must be a path, got {v!r}")

    return Kind(check, check)


def _host_port(v: object) -> HostPort:
    if isinstance(v, HostPort):
        return v
    if not isinstance(v, str):
        raise ValueError(f"must be host:port, got {v!r}")
    return HostPort(*parse_host_port(v.strip()))


def _join_value(v: object) -> tuple[HostPort, ...]:
    if not isinstance(v, list | tuple) or len(v) > JOIN_MAX:
        raise ValueError(f"must be a list of at most {JOIN_MAX} host:port seeds, got {v!r}")
    return tuple(_host_port(item) for item in v)


def _split_pairs(s: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in s.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"must be comma-separated key=value pairs, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _peers_value(v: object) -> Mapping[str, HostPort]:
    if isinstance(v, list | tuple):  # ["n1=host:port", ...] from flags
        v = _split_pairs(",".join(str(item) for item in v))
    if not isinstance(v, Mapping) or len(v) > PEERS_MAX:
        raise ValueError(f"must map at most {PEERS_MAX} node ids to host:port, got {v!r}")
    peers: dict[str, HostPort] = {}
    for node_id, address in sorted(v.items()):
        if not is_node_id(node_id):
            raise ValueError(f"peer id must be {NODE_ID_DESCRIPTION}, got {node_id!r}")
        peers[node_id] = _host_port(address)
    return types.MappingProxyType(peers)


def _tags_value(v: object) -> Mapping[str, str]:
    if not isinstance(v, Mapping) or len(v) > TAGS_MAX:
        raise ValueError(f"must map at most {TAGS_MAX} tag names to strings, got {v!r}")
    for key, value in v.items():
        if not isinstance(key, str) or TAG_KEY_RE.fullmatch(key) is None:
            raise ValueError(f"tag name must be 1-63 of a-z, 0-9, '_', '.', '-', got {key!r}")
        if not isinstance(value, str) or len(value) > TAG_VALUE_CHARS_MAX:
            raise ValueError(f"tag {key!r} must be a string of <= {TAG_VALUE_CHARS_MAX} chars")
    return types.MappingProxyType(dict(sorted(v.items())))


NODE_ID = _string(is_node_id, NODE_ID_DESCRIPTION)
HOST = _string(is_host, "an IP address or a DNS name")
OPTIONAL_HOST = _string(is_host, "an IP address or a DNS name", optional=True)
PORT = _int(0, 65_535)  # 0: pick a free port (tests)
PATH = _path(optional=False)
OPTIONAL_PATH = _path(optional=True)
BOOL = Kind(_bool_value, _bool_text)
JOIN = Kind(_join_value, lambda s: _join_value([p for p in s.split(",") if p.strip()]))
PEERS = Kind(_peers_value, lambda s: _peers_value(_split_pairs(s)))
TAGS = Kind(_tags_value, lambda s: _tags_value(_split_pairs(s)))


def _m(kind: Kind) -> dict[str, Kind]:
    """A field's metadata: how its value is read and checked."""
    return {"kind": kind}


def _empty_map() -> Mapping[str, Any]:
    return types.MappingProxyType({})


def _default_node_id() -> str:
    """The host's short name made into a valid node id (what Nomad and Consul do)."""
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().split(".")[0].lower())
    name = name.strip("-._")[:63]
    return name if is_node_id(name) else "node"


# ---------------------------------------------------------------- the configuration


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to start. Validated when built, whichever way it is built."""

    # Identity and addresses. Ports 0 pick a free port (tests only).
    node_id: str = field(default_factory=_default_node_id, metadata=_m(NODE_ID))
    data_dir: Path = field(default=Path("data"), metadata=_m(PATH))
    bind_host: str = field(default="127.0.0.1", metadata=_m(HOST))
    raft_port: int = field(default=7000, metadata=_m(PORT))
    gossip_port: int = field(default=7001, metadata=_m(PORT))
    http_port: int = field(default=8080, metadata=_m(PORT))
    advertise_host: str | None = field(default=None, metadata=_m(OPTIONAL_HOST))
    # Cluster formation: gossip seeds, optional static Raft peers (id -> host:port).
    join: tuple[HostPort, ...] = field(default=(), metadata=_m(JOIN))
    # The founding voters' Raft addresses (the first bootstrap_expect ids); a node not
    # listed here joins later as a learner and learns the others by gossip.
    peers: Mapping[str, HostPort] = field(default_factory=_empty_map, metadata=_m(PEERS))
    bootstrap_expect: int = field(default=3, metadata=_m(_int(1, 9)))
    voter_grace_s: float = field(default=30.0, metadata=_m(_float(1, 86_400)))
    # Time and the transport.
    tick_ms: int = field(default=50, metadata=_m(_int(1, 1000)))
    election_ticks_min: int = field(default=10, metadata=_m(_int(2, 1000)))
    election_ticks_max: int = field(default=20, metadata=_m(_int(3, 2000)))
    heartbeat_ticks: int = field(default=2, metadata=_m(_int(1, 100)))
    max_frame_bytes: int = field(default=4 << 20, metadata=_m(_int(64 << 10, 256 << 20)))
    send_queue_frames_max: int = field(default=1024, metadata=_m(_int(1, 1_000_000)))
    # Secrets. Unset key files default to the keygen layout under secrets_dir (or data_dir).
    secrets_dir: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    cluster_key_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    jwt_public_keys_dir: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    jwt_signing_key_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    tls_ca_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    tls_cert_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    tls_key_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    http_tls_cert_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    http_tls_key_file: Path | None = field(default=None, metadata=_m(OPTIONAL_PATH))
    # Placement: this node's tags, matched by jobs' constraints.
    tags: Mapping[str, str] = field(default_factory=_empty_map, metadata=_m(TAGS))
    # API limits. rate_limit_per_s is per token; 0 disables rate limiting.
    max_body_bytes: int = field(default=1 << 20, metadata=_m(_int(1 << 10, 64 << 20)))
    page_size_max: int = field(default=500, metadata=_m(_int(1, 10_000)))
    rate_limit_per_s: float = field(default=200.0, metadata=_m(_float(0, 1_000_000)))
    rate_limit_burst: int = field(default=400, metadata=_m(_int(1, 1_000_000)))
    metrics_public: bool = field(default=False, metadata=_m(BOOL))  # /metrics without a token
    # GET /api/v1/events: open streams per token subject and in all; run events kept
    # for Last-Event-ID resumption (and each stream's buffer, before it is dropped).
    sse_streams_per_client_max: int = field(default=4, metadata=_m(_int(1, 1024)))
    sse_streams_max: int = field(default=256, metadata=_m(_int(1, 10_000)))
    events_ring_max: int = field(default=4096, metadata=_m(_int(16, 1_000_000)))
    # Testing: the authenticated fault-injection control on the transport.
    fault_injection: bool = field(default=False, metadata=_m(BOOL))
    worker_slots: int = field(default=4, metadata=_m(_int(0, 1024)))  # runs executed at once
    # Runs the leader may queue on a node beyond its free slots, so a slot that frees
    # starts the next run without a round trip to the leader.
    worker_queue_max: int = field(default=8, metadata=_m(_int(0, 10_000)))
    # Work stealing: an idle node takes queued runs from a node whose backlog (queued
    # runs beyond its free slots) exceeds steal_threshold, at most steal_batch_max at a
    # time (0 turns stealing off), looking at most every steal_interval_ms.
    steal_threshold: int = field(default=0, metadata=_m(_int(0, 10_000)))
    steal_batch_max: int = field(default=32, metadata=_m(_int(0, 1024)))
    steal_interval_ms: int = field(default=200, metadata=_m(_int(10, 60_000)))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                value = f.metadata["kind"].from_value(getattr(self, f.name))
            except ValueError as e:
                raise ConfigError(f"{f.name}: {e}", f.name) from None
            object.__setattr__(self, f.name, value)
        for key, problem in _cross_checks(self):
            raise ConfigError(f"{key}: {problem}", key)

    @property
    def advertised_host(self) -> str:
        """The host other nodes and clients dial."""
        return self.advertise_host or self.bind_host

    @property
    def cluster_key_path(self) -> Path:
        return self.cluster_key_file or self._secrets / CLUSTER_KEY_FILE

    @property
    def jwt_public_keys_path(self) -> Path:
        return self.jwt_public_keys_dir or self._secrets / PUBLIC_KEYS_DIR

    @property
    def jwt_signing_key_path(self) -> Path:
        return self.jwt_signing_key_file or self._secrets / SIGNING_KEY_FILE

    @property
    def _secrets(self) -> Path:
        return self.secrets_dir or self.data_dir

    def api_limits(self) -> ApiLimits:
        return ApiLimits(
            max_body_bytes=self.max_body_bytes,
            page_size_max=self.page_size_max,
            rate_limit_per_s=self.rate_limit_per_s,
            rate_limit_burst=self.rate_limit_burst,
            metrics_public=self.metrics_public,
            sse_streams_per_subject_max=self.sse_streams_per_client_max,
            sse_streams_max=self.sse_streams_max,
        )


def _cross_checks(c: NodeConfig) -> list[tuple[str, str]]:
    """Rules between keys, each as (key to blame, problem)."""
    problems: list[tuple[str, str]] = []
    if c.election_ticks_max <= c.election_ticks_min:
        problems.append(
            (
                "election_ticks_max",
                f"must be greater than election_ticks_min ({c.election_ticks_min}), "
                f"got {c.election_ticks_max}",
            )
        )
    if c.heartbeat_ticks >= c.election_ticks_min:
        problems.append(
            (
                "heartbeat_ticks",
                f"must be less than election_ticks_min ({c.election_ticks_min}), "
                f"got {c.heartbeat_ticks}",
            )
        )
    if c.sse_streams_per_client_max > c.sse_streams_max:
        problems.append(
            (
                "sse_streams_per_client_max",
                f"must not exceed sse_streams_max ({c.sse_streams_max}), "
                f"got {c.sse_streams_per_client_max}",
            )
        )
    ports = [("raft_port", c.raft_port), ("gossip_port", c.gossip_port), ("http_port", c.http_port)]
    seen: dict[int, str] = {}
    for name, number in ports:
        if number and number in seen:
            problems.append((name, f"must differ from {seen[number]} ({number})"))
        seen.setdefault(number, name)
    peer_tls = {"tls_ca_file": c.tls_ca_file, "tls_cert_file": c.tls_cert_file}
    peer_tls["tls_key_file"] = c.tls_key_file
    problems += _all_or_none(peer_tls)
    problems += _all_or_none(
        {"http_tls_cert_file": c.http_tls_cert_file, "http_tls_key_file": c.http_tls_key_file}
    )
    if c.bind_host in WILDCARD_HOSTS and c.advertise_host is None:
        problems.append(("advertise_host", f"is required when bind_host is {c.bind_host}"))
    return problems


def _all_or_none(group: dict[str, Path | None]) -> list[tuple[str, str]]:
    missing = [k for k, v in group.items() if v is None]
    if not missing or len(missing) == len(group):
        return []
    given = [k for k in group if k not in missing]
    return [(missing[0], f"is required with {', '.join(given)}")]


# ---------------------------------------------------------------- loading

FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(NodeConfig)}


def env_var(key: str) -> str:
    """The environment variable for a key: ``tick_ms`` -> ``ROTA_TICK_MS``."""
    return ENV_PREFIX + key.upper()


def load_config(
    toml_path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> NodeConfig:
    """Merge defaults < TOML < ``ROTA_*`` env < flags (``None`` flags are unset)."""
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, object], bool]] = []
    if toml_path is not None:
        layers.append((str(toml_path), _read_toml(toml_path), False))
    from_env = {k: env[env_var(k)] for k in FIELDS if env_var(k) in env}
    layers.append(("env", from_env, True))
    layers.append(("flag", {k: v for k, v in flags.items() if v is not None}, True))
    for origin, layer, is_text in layers:
        for key, raw in layer.items():
            source = _source(origin, key)
            values[key] = _coerce(key, raw, is_text, source)
            sources[key] = source
    try:
        return NodeConfig(**values)  # type: ignore[arg-type]
    except ConfigError as e:
        if e.key in sources:
            raise ConfigError(f"{e} (from {sources[e.key]})", e.key) from None
        raise


def _source(origin: str, key: str) -> str:
    if origin == "env":
        return f"env {env_var(key)}"
    if origin == "flag":
        return "flag --" + key.replace("_", "-")
    return f"{origin} key {key}"


def _coerce(key: str, raw: object, is_text: bool, source: str) -> object:
    f = FIELDS.get(key)
    if f is None:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: unknown key (from {source}){hint}", key)
    kind: Kind = f.metadata["kind"]
    try:
        return kind.from_text(raw) if is_text and isinstance(raw, str) else kind.from_value(raw)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} (from {source})", key) from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
