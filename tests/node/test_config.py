"""Configuration: precedence, parsing from each source, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.config import FIELDS, ConfigError, HostPort, NodeConfig, env_var, load_config
from web.security import ApiLimits


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rota.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_match_the_design() -> None:
    c = load_config(None, {}, {})
    assert c == NodeConfig()
    assert (c.tick_ms, c.election_ticks_min, c.election_ticks_max, c.heartbeat_ticks) == (
        50,
        10,
        20,
        2,
    )
    assert (c.bootstrap_expect, c.fault_injection, c.http_port) == (3, False, 8080)
    assert c.cluster_key_path == Path("data/cluster.key")
    assert c.jwt_signing_key_path == Path("data/jwt-signing.pem")
    assert c.jwt_public_keys_path == Path("data/jwt-public")


def test_precedence_flags_over_env_over_toml_over_defaults(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "tick_ms = 40\nheartbeat_ticks = 3\nhttp_port = 9000\n")
    env = {"ROTA_TICK_MS": "30", "ROTA_HEARTBEAT_TICKS": "4"}
    flags = {"tick_ms": 20, "heartbeat_ticks": None}  # None: flag not given
    c = load_config(toml, env, flags)
    assert (c.tick_ms, c.heartbeat_ticks, c.http_port, c.gossip_port) == (20, 4, 9000, 7001)
    assert load_config(toml, env, {}).tick_ms == 30
    assert load_config(toml, {}, {}).tick_ms == 40


def test_toml_tables_and_lists(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        """
node_id = "n1"
join = ["10.0.0.2:7001", "[fd00::3]:7001"]
data_dir = "/var/lib/rota"
metrics_public = true
rate_limit_per_s = 50
[peers]
n1 = "10.0.0.1:7000"
n2 = "10.0.0.2:7000"
[tags]
zone = "eu-1"
""",
    )
    c = load_config(toml, {}, {})
    assert c.join == (HostPort("10.0.0.2", 7001), HostPort("fd00::3", 7001))
    assert str(c.join[1]) == "[fd00::3]:7001"
    assert dict(c.peers) == {"n1": HostPort("10.0.0.1", 7000), "n2": HostPort("10.0.0.2", 7000)}
    assert dict(c.tags) == {"zone": "eu-1"}
    assert c.data_dir == Path("/var/lib/rota") and c.metrics_public is True
    assert c.rate_limit_per_s == 50.0


def test_env_values_are_parsed_from_text() -> None:
    env = {
        "ROTA_NODE_ID": "n2",
        "ROTA_JOIN": "127.0.0.1:7001, 127.0.0.1:7002",
        "ROTA_PEERS": "n1=127.0.0.1:7000,n2=127.0.0.1:7010",
        "ROTA_TAGS": "zone=a,gpu=yes",
        "ROTA_FAULT_INJECTION": "yes",
        "ROTA_VOTER_GRACE_S": "2.5",
        "ROTA_MAX_FRAME_BYTES": "1_048_576",
        "ROTA_TLS_CA_FILE": "",
        "ROTA_SECRETS_DIR": "/etc/rota",
        "ROTA_ADDRESS": "http://x",  # a CLI variable, not configuration: ignored
        "ROTA_JOB_ID": "j1",  # a run's environment: ignored
    }
    c = load_config(None, env, {})
    assert c.node_id == "n2" and len(c.join) == 2 and c.peers["n2"].port == 7010
    assert dict(c.tags) == {"gpu": "yes", "zone": "a"}
    assert c.fault_injection is True and c.voter_grace_s == 2.5
    assert c.max_frame_bytes == 1 << 20 and c.tls_ca_file is None
    assert c.cluster_key_path == Path("/etc/rota/cluster.key")


def test_string_flags_are_parsed_like_env() -> None:
    c = load_config(None, {}, {"node_id": "n1", "tick_ms": "25", "peers": "n1=h1:7000,n2=h2:7000"})
    assert c.tick_ms == 25 and set(c.peers) == {"n1", "n2"}
    c = load_config(None, {}, {"node_id": "n1", "peers": ["n1=h1:7000"], "join": ["h1:7001"]})
    assert c.peers["n1"] == HostPort("h1", 7000) and c.join == (HostPort("h1", 7001),)


@pytest.mark.parametrize(
    ("toml", "env", "flags", "message"),
    [
        (
            "",
            {"ROTA_TICK_MS": "abc"},
            {},
            "tick_ms: must be an integer in [1, 1000], got 'abc' (from env ROTA_TICK_MS)",
        ),
        (
            "",
            {"ROTA_TICK_MS": "0"},
            {},
            "tick_ms: must be an integer in [1, 1000], got '0' (from env ROTA_TICK_MS)",
        ),
        ('tick_ms = "50"\n', {}, {}, "tick_ms: must be an integer in [1, 1000], got '50' (from "),
        ("tick_ms = true\n", {}, {}, "tick_ms: must be an integer"),
        ("tickms = 5\n", {}, {}, "tickms: unknown key (from "),
        (
            "",
            {},
            {"http_prot": 1},
            "http_prot: unknown key (from flag --http-prot); did you mean 'http_port'?",
        ),
        (
            "",
            {"ROTA_FAULT_INJECTION": "maybe"},
            {},
            "fault_injection: must be true or false, got 'maybe'",
        ),
        ("", {"ROTA_NODE_ID": "Node 1"}, {}, "node_id: must be 1-63 characters"),
        ("", {"ROTA_JOIN": "nohost"}, {}, "join: must be host:port"),
        ("", {"ROTA_PEERS": "n1"}, {}, "peers: must be comma-separated key=value pairs"),
        ("", {"ROTA_TAGS": "Zone=a"}, {}, "tags: tag name must be"),
        (
            "",
            {"ROTA_RATE_LIMIT_PER_S": "-1"},
            {},
            "rate_limit_per_s: must be a number in [0, 1e+06]",
        ),
        (
            "",
            {"ROTA_ELECTION_TICKS_MAX": "10"},
            {},
            "election_ticks_max: must be greater than election_ticks_min (10), got 10 (from env ROTA_ELECTION_TICKS_MAX)",
        ),
        (
            "",
            {},
            {"heartbeat_ticks": 10},
            "heartbeat_ticks: must be less than election_ticks_min (10), got 10 (from flag --heartbeat-ticks)",
        ),
        ("", {}, {"gossip_port": 7000}, "gossip_port: must differ from raft_port (7000)"),
        ("", {}, {"tls_cert_file": "c.pem"}, "tls_ca_file: is required with tls_cert_file"),
        (
            "",
            {},
            {"http_tls_key_file": "k.pem"},
            "http_tls_cert_file: is required with http_tls_key_file",
        ),
        ("", {}, {"bind_host": "0.0.0.0"}, "advertise_host: is required when bind_host is 0.0.0.0"),
        ("[tags]\nzone = 3\n", {}, {}, "tags: tag 'zone' must be a string"),
        ("[peers]\nn1 = 7000\n", {}, {}, "peers: must be host:port, got 7000"),
    ],
)
def test_errors_name_the_key_and_the_source(
    tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, object], message: str
) -> None:
    path = write_toml(tmp_path, toml) if toml else None
    with pytest.raises(ConfigError) as info:
        load_config(path, env, flags)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.key == message.split(":")[0]


def test_toml_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rota\.toml: invalid TOML"):
        load_config(write_toml(tmp_path, "tick_ms = = 3"), {}, {})
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml", {}, {})


def test_direct_construction_is_validated_and_normalised() -> None:
    with pytest.raises(ConfigError, match=r"^tick_ms: must be an integer"):
        NodeConfig(tick_ms=0)
    c = NodeConfig(node_id="n1", tags={"zone": "a"}, data_dir="d")  # type: ignore[arg-type]
    assert c.data_dir == Path("d")
    with pytest.raises(TypeError):
        c.tags["zone"] = "b"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tick_ms = 3  # type: ignore[misc]


def test_api_limits_come_from_the_config() -> None:
    c = NodeConfig(max_body_bytes=2048, page_size_max=10, rate_limit_per_s=0, metrics_public=True)
    assert c.api_limits() == ApiLimits(
        max_body_bytes=2048,
        page_size_max=10,
        rate_limit_per_s=0.0,
        rate_limit_burst=400,
        metrics_public=True,
    )


def test_every_key_has_an_environment_variable_and_round_trips_its_default() -> None:
    defaults = NodeConfig()
    for name in FIELDS:
        assert env_var(name) == "ROTA_" + name.upper()
        value = getattr(defaults, name)
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            assert getattr(load_config(None, {env_var(name): str(value)}, {}), name) == value


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_tick_ms_accepts_exactly_its_bounds(tick_ms: int) -> None:
    if 1 <= tick_ms <= 1000:
        assert load_config(None, {"ROTA_TICK_MS": str(tick_ms)}, {}).tick_ms == tick_ms
    else:
        with pytest.raises(ConfigError, match=r"^tick_ms: "):
            load_config(None, {"ROTA_TICK_MS": str(tick_ms)}, {})


def test_worker_slots_come_from_config_and_are_bounded() -> None:
    from node.config import ConfigError, load_config

    assert load_config(None, {"ROTA_WORKER_SLOTS": "8"}, {}).worker_slots == 8
    with pytest.raises(ConfigError, match="worker_slots"):
        load_config(None, {}, {"worker_slots": "5000"})


def test_stealing_and_queue_ahead_come_from_config_and_are_bounded() -> None:
    from node.config import ConfigError, load_config

    cfg = load_config(None, {"ROTA_STEAL_BATCH_MAX": "0"}, {"worker_queue_max": "3"})
    assert (cfg.steal_batch_max, cfg.worker_queue_max, cfg.steal_threshold) == (0, 3, 0)
    assert cfg.steal_interval_ms == 200
    for key, bad in (
        ("steal_interval_ms", "5"),
        ("steal_batch_max", "-1"),
        ("worker_queue_max", "x"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, {}, {key: bad})
