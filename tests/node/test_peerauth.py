"""Peer authentication, both ends paired in memory (no sockets, so the clock can be mocked)."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from cryptography import x509

from node.peerauth import (
    HANDSHAKE_VERSION,
    AuthenticationFailed,
    Authenticator,
    HmacAuthenticator,
    TlsAuthenticator,
    receive_message,
    send_message,
)
from node.tls import (
    PemPair,
    TlsMaterialError,
    create_ca,
    issue_node_certificate,
    node_id_from_certificate,
)

KEY = b"k" * 32


async def pair(
    server: Authenticator, client: Authenticator, *, server_id: str = "n1", expect: str = "n1"
) -> tuple[object, object]:
    """Run both handshakes on a memory stream pair; each side's result or exception."""
    a, b = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def side(name: str, fn: Callable[[], Awaitable[object]], stream: trio.abc.Stream) -> None:
        try:
            results[name] = await fn()
        except (AuthenticationFailed, trio.BrokenResourceError) as e:
            results[name] = e
            await trio.aclose_forcefully(stream)  # as the transport does: close on failure

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "server", lambda: server.accept(a, server_id), a)
        nursery.start_soon(side, "client", lambda: client.connect(b, "n2", expect), b)
    for s in (a, b):
        await trio.aclose_forcefully(s)
    return results["server"], results["client"]


# ------------------------------------------------------------------------ HMAC


async def test_hmac_handshake_authenticates_both_ends() -> None:
    server, client = await pair(HmacAuthenticator(KEY), HmacAuthenticator(KEY))
    assert isinstance(server, tuple) and server[1] == "n2"
    assert isinstance(client, trio.abc.Stream)


async def test_a_wrong_cluster_key_fails_on_both_sides() -> None:
    server, client = await pair(HmacAuthenticator(KEY), HmacAuthenticator(b"x" * 32))
    assert isinstance(server, AuthenticationFailed) and "wrong cluster key" in str(server)
    assert isinstance(client, AuthenticationFailed)  # the server hung up without proof


async def test_the_client_refuses_a_server_that_is_not_the_node_it_dialled() -> None:
    _, client = await pair(HmacAuthenticator(KEY), HmacAuthenticator(KEY), expect="n3")
    assert isinstance(client, AuthenticationFailed) and "expected 'n3'" in str(client)


async def test_a_peer_claiming_the_servers_own_id_is_refused() -> None:
    server, _ = await pair(HmacAuthenticator(KEY), HmacAuthenticator(KEY), server_id="n2")
    assert isinstance(server, AuthenticationFailed) and "own id" in str(server)


async def test_a_forged_server_proof_is_refused() -> None:
    """A server without the key cannot answer, even reusing the client's own MAC."""
    auth = HmacAuthenticator(KEY)
    a, b = trio.testing.memory_stream_pair()
    outcome: list[BaseException] = []

    async def fake_server() -> None:
        await send_message(a, [1, HANDSHAKE_VERSION, b"s" * 32])
        hello = await receive_message(a)
        await send_message(a, [3, "n1", hello[3]])  # reflect the client's MAC

    async def client() -> None:
        with pytest.raises(AuthenticationFailed, match="does not hold the cluster key") as e:
            await auth.connect(b, "n2", "n1")
        outcome.append(e.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        nursery.start_soon(client)
    assert outcome
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        [2, "n2", b"c" * 32],  # too short
        [2, "N2", b"c" * 32, b"m" * 32],  # not a node id
        [2, "n2", b"c" * 31, b"m" * 32],  # short nonce
        [2, "n2", b"c" * 32, "m" * 32],  # MAC not bytes
        [True, "n2", b"c" * 32, b"m" * 32],  # tag must be the int 2
        [3, "n2", b"c" * 32],
    ],
)
async def test_malformed_hellos_are_refused(reply: list[object]) -> None:
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_message, b)  # swallow the challenge
        await send_message(b, reply)
        with pytest.raises(AuthenticationFailed):
            await HmacAuthenticator(KEY).accept(a, "n1")
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x01\x01" + b"x" * 257,  # longer than a handshake message may be
        b"\x00\x00\x00\x00",
        b"\x00\x00\x00\x02\xc1\xc1",  # not msgpack
        b"\x00\x00\x00\x01\x05",  # not an array
        b"\x00\x00\x00\x09",  # truncated, then closed
    ],
)
async def test_garbage_during_the_handshake_is_refused(raw: bytes) -> None:
    a, b = trio.testing.memory_stream_pair()
    await b.send_all(raw)
    await b.send_eof()
    with pytest.raises(AuthenticationFailed):
        await HmacAuthenticator(KEY).connect(a, "n2", "n1")
    await a.aclose()
    await b.aclose()


async def test_a_silent_peer_holds_the_handshake_only_until_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError), trio.fail_after(5):
        await HmacAuthenticator(KEY).accept(a, "n1")
    assert trio.current_time() - start == pytest.approx(5)
    await a.aclose()
    await b.aclose()


def test_short_cluster_keys_are_refused_and_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        HmacAuthenticator(b"short")
    assert "k" * 8 not in repr(HmacAuthenticator(KEY))


# ------------------------------------------------------------------------- TLS


def write_node(
    directory: Path, ca: PemPair, node_id: str, key_type: str = "p256"
) -> TlsAuthenticator:
    pair_ = issue_node_certificate(ca, node_id, key_type=key_type)  # type: ignore[arg-type]
    pair_.write(directory / f"{node_id}.pem", directory / f"{node_id}.key")
    ca_path = directory / "ca.pem"
    if not ca_path.exists():
        ca_path.write_bytes(ca.cert_pem)
    return TlsAuthenticator(ca_path, directory / f"{node_id}.pem", directory / f"{node_id}.key")


@pytest.mark.parametrize("key_type", ["p256", "ed25519"])
async def test_mutual_tls_names_both_peers(tmp_path: Path, key_type: str) -> None:
    ca = create_ca(key_type=key_type)  # type: ignore[arg-type]
    n1, n2 = write_node(tmp_path, ca, "n1", key_type), write_node(tmp_path, ca, "n2", key_type)
    server, client = await pair(n1, n2)
    assert isinstance(server, tuple) and server[1] == "n2"
    assert isinstance(client, trio.SSLStream)
    await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(server[0])  # type: ignore[arg-type]


async def test_tls_refuses_a_certificate_from_another_ca(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = write_node(tmp_path / "a", create_ca(), "n1")
    rogue = write_node(tmp_path / "b", create_ca(), "n2")
    server, client = await pair(good, rogue)  # rogue dials: both reject the other's CA
    assert isinstance(server, AuthenticationFailed | trio.BrokenResourceError)
    assert isinstance(client, AuthenticationFailed) and "CERTIFICATE_VERIFY_FAILED" in str(client)
    server, client = await pair(rogue, good)
    assert isinstance(client, AuthenticationFailed) and "CERTIFICATE_VERIFY_FAILED" in str(client)


async def test_tls_server_refuses_a_client_certificate_from_another_ca(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ca = create_ca()
    good = write_node(tmp_path / "a", ca, "n1")
    (tmp_path / "b" / "ca.pem").write_bytes(ca.cert_pem)  # the impostor trusts the cluster CA
    impostor = write_node(tmp_path / "b", create_ca(), "n2")  # but its cert is from another
    server, client = await pair(good, impostor)
    assert isinstance(server, AuthenticationFailed) and "CERTIFICATE_VERIFY_FAILED" in str(server)
    if isinstance(client, trio.abc.Stream):  # TLS 1.3: the client finished first
        await trio.aclose_forcefully(client)


async def test_tls_client_checks_the_id_in_the_servers_certificate(tmp_path: Path) -> None:
    ca = create_ca()
    n1, n2 = write_node(tmp_path, ca, "n1"), write_node(tmp_path, ca, "n2")
    server, client = await pair(n1, n2, expect="n3")
    assert isinstance(client, AuthenticationFailed) and "expected 'n3'" in str(client)
    if isinstance(server, tuple):
        await trio.aclose_forcefully(server[0])  # type: ignore[arg-type]


def test_tls_authenticator_speaks_only_for_its_certificates_node(tmp_path: Path) -> None:
    auth = write_node(tmp_path, create_ca(), "n1")
    auth.check_local_id("n1")
    with pytest.raises(ValueError, match="certificate is for 'n1'"):
        auth.check_local_id("n2")


# ------------------------------------------------------------------ TLS material


def test_node_certificates_name_their_node_and_chain_to_the_ca() -> None:
    ca = create_ca()
    leaf = issue_node_certificate(ca, "n7").certificate()
    assert node_id_from_certificate(leaf) == "n7"
    assert leaf.issuer == ca.certificate().subject
    leaf.verify_directly_issued_by(ca.certificate())
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False


def test_certificates_without_a_matching_node_id_are_refused() -> None:
    ca = create_ca()
    with pytest.raises(TlsMaterialError, match="common name is not a node id"):
        node_id_from_certificate(ca.certificate())  # "rota cluster CA"
    with pytest.raises(TlsMaterialError, match="node id"):
        issue_node_certificate(ca, "Bad Id")
    other = create_ca(name="n1")  # a CA whose CN looks like a node id, without SANs
    with pytest.raises(TlsMaterialError, match="no subject alternative names"):
        node_id_from_certificate(other.certificate())


def test_pem_files_are_written_privately_and_read_back(tmp_path: Path) -> None:
    ca = create_ca(now=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert PemPair.read(tmp_path / "ca.pem", tmp_path / "ca.key") == ca
    with pytest.raises(FileExistsError):
        create_ca().write(tmp_path / "ca.pem", tmp_path / "ca.key")
    other = create_ca()
    other.write(tmp_path / "other.pem", tmp_path / "other.key")
    with pytest.raises(TlsMaterialError, match="is not the key of"):
        PemPair.read(tmp_path / "ca.pem", tmp_path / "other.key")
    with pytest.raises(TlsMaterialError, match="cannot read"):
        PemPair.read(tmp_path / "missing.pem", tmp_path / "ca.key")


async def test_handshake_messages_are_length_prefixed_msgpack_arrays() -> None:
    a, b = trio.testing.memory_stream_pair()
    await send_message(a, [1, HANDSHAKE_VERSION, b"n" * 32])
    raw = await b.receive_some()
    assert int.from_bytes(raw[:4], "big") == len(raw) - 4
    assert msgpack.unpackb(raw[4:]) == [1, HANDSHAKE_VERSION, b"n" * 32]
    await a.aclose()
    await b.aclose()
