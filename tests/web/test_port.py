"""The web port's contract: views refuse impossible states, addresses parse, the fake
behaves as the contract says, and web/ never reaches into the layers below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_layering import imports_of
from web.port import (
    ClusterView,
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
    format_host_port,
    is_node_id,
    parse_host_port,
)
from web.testing import FakeNodePort, member

WEB = Path(__file__).resolve().parents[2] / "web"
LOWER_LAYERS = {"node", "storage", "consensus", "simulations"}


def test_web_never_imports_the_node_or_lower_layers() -> None:
    for path in sorted(WEB.glob("*.py")):
        assert not set(imports_of(path)) & LOWER_LAYERS, path


def test_the_contract_modules_are_cheap_for_node_to_import() -> None:
    # node/ imports these for validation and roles; they must not drag in the web stack.
    for name in ("port.py", "security.py"):
        assert not set(imports_of(WEB / name)) & {"quart", "quart_trio", "hypercorn", "trio"}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("node-1.example.com:65535", ("node-1.example.com", 65535)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_host_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(text) == parsed
    assert format_host_port(*parsed) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host",
        ":7000",
        "host:",
        "host:0",
        "host:65536",
        "::1:7000",
        "[127.0.0.1]:7000",
        "a b:1",
        "-x:1",
    ],
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"must|host|port|brackets"):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("n1", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("N1", False),
        ("-n", False),
        ("", False),
        (3, False),
    ],
)
def test_node_ids(value: object, ok: bool) -> None:
    assert is_node_id(value) is ok


def test_views_refuse_impossible_states() -> None:
    a, b = member("n1", "leader"), member("n2")
    ClusterView("n1", 1, 0, (a, b))
    with pytest.raises(AssertionError):
        ClusterView("n2", 1, 0, (a, b))  # n1 claims to lead, the view says n2
    with pytest.raises(AssertionError):
        ClusterView("n1", 1, 0, (b, a))  # not sorted
    with pytest.raises(AssertionError):
        ClusterView(None, 1, 0, (member("n2"), member("n2")))
    with pytest.raises(AssertionError):
        ClusterView("n1", 1, 0, (a, member("n2", "leader")))
    with pytest.raises(AssertionError):
        member("n1", "boss")
    with pytest.raises(AssertionError):
        member("n1", queue_depth=-1)


async def test_fake_port_follows_the_contract() -> None:
    port = FakeNodePort(members=2)
    with pytest.raises(NotFound):
        await port.remove_member("n9")
    await port.add_member("n3", None)
    with pytest.raises(Conflict):
        await port.add_member("n3", None)
    with pytest.raises(Invalid) as info:
        await port.transfer_leadership("n3")  # a learner
    assert info.value.field == "target"
    assert await port.transfer_leadership(None) == "n2"
    await port.remove_member("n1")
    with pytest.raises(Conflict, match="last voter"):
        await port.remove_member("n2")
    await port.remove_member("n3")
    assert [m.id for m in port.cluster_view().members] == ["n2"]
    leaderless = FakeNodePort(leader=None)
    assert not leaderless.is_ready()
    with pytest.raises(Unavailable):
        await leaderless.transfer_leadership(None)
