"""Peer authentication: proving who is at each end of a transport connection.

An ``Authenticator`` runs once per TCP connection, before any frame: ``accept`` on
the listening side returns the stream to use and the peer's authenticated node id;
``connect`` on the dialling side checks that the peer is the node it meant to reach.
The transport bounds both with its handshake timeout and closes the connection on
any failure.

Two implementations:

- ``HmacAuthenticator(cluster_key)`` (local development): a mutual challenge-response
  on the cluster key, then the plain TCP stream. Messages are length-prefixed
  msgpack arrays, each at most ``HANDSHAKE_MESSAGE_BYTES_MAX``::

      server -> client   [1, version, server_nonce]
      client -> server   [2, client_id, client_nonce, client_mac]
      server -> client   [3, server_id, server_mac]

      client_mac = HMAC-SHA256(key, "rota-peer-v1" 0x00 "client" | server_nonce |
                               client_nonce | client_id)
      server_mac = HMAC-SHA256(key, "rota-peer-v1" 0x00 "server" | client_nonce |
                               server_nonce | client_id 0x00 server_id)

  Fresh 32-byte nonces on both sides defeat replay; the role labels keep one
  side's proof from being reflected as the other's; the server's proof names both
  ids, so the client knows it reached the node it dialled. MACs are compared in
  constant time. Limit: only the opening is authenticated; frames after it are
  neither encrypted nor MACed, so an on-path attacker could hijack the stream.
  Use TLS on networks you do not trust.
- ``TlsAuthenticator(ca_cert, cert, key)``: mutual TLS 1.3 with ``trio.SSLStream``.
  Both sides require a certificate signed by the cluster CA; the peer id is the
  node id in the peer's certificate (``node/tls.py``), which the dialler compares
  with the node it meant to reach. Host-name checking is off on purpose: the
  identity is the node id, checked explicitly, not the address dialled.

Both refuse a peer that claims the local node's own id (a misconfigured peer list
or a reflected handshake).

Exceptions: ``AuthenticationFailed`` (the peer did not prove an acceptable
identity or broke the handshake protocol); I/O errors (``trio.BrokenResourceError``,
``trio.ClosedResourceError``, ``OSError``) pass through unchanged. Reasons never
contain keys, nonces or MACs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
from pathlib import Path
from typing import Final, Protocol

import msgpack
import trio
from cryptography import x509

from consensus.types import NodeId
from node.tls import PemPair, TlsMaterialError, node_id_from_certificate
from node.wire import LENGTH_PREFIX_BYTES
from web.port import is_node_id

HANDSHAKE_VERSION: Final = 1
HANDSHAKE_LABEL: Final = b"rota-peer-v1\x00"
HANDSHAKE_MESSAGE_BYTES_MAX: Final = 256
NONCE_BYTES: Final = 32
MAC_BYTES: Final = 32
CLUSTER_KEY_BYTES_MIN: Final = 16

_CHALLENGE, _HELLO, _ACCEPT = 1, 2, 3


class AuthenticationFailed(Exception):
    """The peer did not authenticate; the message is safe to log."""


class Authenticator(Protocol):
    """How a transport connection proves both ends' identities (see the module doc)."""

    def check_local_id(self, node_id: NodeId) -> None:
        """Raise ``ValueError`` if this authenticator cannot speak for ``node_id``."""
        ...

    async def accept(
        self, stream: trio.abc.Stream, local_id: NodeId
    ) -> tuple[trio.abc.Stream, NodeId]:
        """Listening side: the stream to use from now on and the peer's node id."""
        ...

    async def connect(
        self, stream: trio.abc.Stream, local_id: NodeId, peer_id: NodeId
    ) -> trio.abc.Stream:
        """Dialling side: the stream to use, once the peer has proven to be ``peer_id``."""
        ...


# ----------------------------------------------------------------------------- HMAC


class HmacAuthenticator:
    """Mutual challenge-response on a shared cluster key (see the module doc)."""

    def __init__(self, cluster_key: bytes) -> None:
        if len(cluster_key) < CLUSTER_KEY_BYTES_MIN:
            raise ValueError(f"cluster key: at least {CLUSTER_KEY_BYTES_MIN} bytes")
        self._key = cluster_key

    def __repr__(self) -> str:
        return "HmacAuthenticator(<key>)"  # never show the key

    def check_local_id(self, node_id: NodeId) -> None:
        if not is_node_id(node_id):
            raise ValueError(f"not a node id: {node_id!r}")

    def _client_mac(self, server_nonce: bytes, client_nonce: bytes, client_id: NodeId) -> bytes:
        msg = HANDSHAKE_LABEL + b"client" + server_nonce + client_nonce + client_id.encode()
        return hmac.digest(self._key, msg, hashlib.sha256)

    def _server_mac(
        self, client_nonce: bytes, server_nonce: bytes, client_id: NodeId, server_id: NodeId
    ) -> bytes:
        ids = client_id.encode() + b"\x00" + server_id.encode()
        msg = HANDSHAKE_LABEL + b"server" + client_nonce + server_nonce + ids
        return hmac.digest(self._key, msg, hashlib.sha256)

    async def accept(
        self, stream: trio.abc.Stream, local_id: NodeId
    ) -> tuple[trio.abc.Stream, NodeId]:
        server_nonce = secrets.token_bytes(NONCE_BYTES)
        await send_message(stream, [_CHALLENGE, HANDSHAKE_VERSION, server_nonce])
        hello = _expect(await receive_message(stream), _HELLO, 4, "a hello")
        client_id = _node_id(hello[1])
        client_nonce = _blob(hello[2], NONCE_BYTES, "client nonce")
        mac = _blob(hello[3], MAC_BYTES, "client MAC")
        if not hmac.compare_digest(mac, self._client_mac(server_nonce, client_nonce, client_id)):
            raise AuthenticationFailed(f"wrong cluster key (peer claims {client_id!r})")
        if client_id == local_id:
            raise AuthenticationFailed("peer claims this node's own id")
        proof = self._server_mac(client_nonce, server_nonce, client_id, local_id)
        await send_message(stream, [_ACCEPT, local_id, proof])
        return stream, client_id

    async def connect(
        self, stream: trio.abc.Stream, local_id: NodeId, peer_id: NodeId
    ) -> trio.abc.Stream:
        challenge = _expect(await receive_message(stream), _CHALLENGE, 3, "a challenge")
        if type(challenge[1]) is not int or challenge[1] != HANDSHAKE_VERSION:
            raise AuthenticationFailed(f"handshake version {challenge[1]!r} not supported")
        server_nonce = _blob(challenge[2], NONCE_BYTES, "server nonce")
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        mac = self._client_mac(server_nonce, client_nonce, local_id)
        await send_message(stream, [_HELLO, local_id, client_nonce, mac])
        accept = _expect(await receive_message(stream), _ACCEPT, 3, "an accept")
        server_id = _node_id(accept[1])
        if server_id != peer_id:
            raise AuthenticationFailed(f"peer is {server_id!r}, expected {peer_id!r}")
        proof = _blob(accept[2], MAC_BYTES, "server MAC")
        if not hmac.compare_digest(
            proof, self._server_mac(client_nonce, server_nonce, local_id, peer_id)
        ):
            raise AuthenticationFailed("peer does not hold the cluster key")
        return stream


def _expect(msg: list[object], tag: int, n: int, what: str) -> list[object]:
    if len(msg) != n or type(msg[0]) is not int or msg[0] != tag:
        raise AuthenticationFailed(f"expected {what}")
    return msg


def _blob(v: object, n: int, what: str) -> bytes:
    if type(v) is not bytes or len(v) != n:
        raise AuthenticationFailed(f"{what}: expected {n} bytes")
    return v


def _node_id(v: object) -> NodeId:
    if type(v) is not str or not is_node_id(v):
        raise AuthenticationFailed("not a node id")
    return v


async def send_message(stream: trio.abc.Stream, fields: list[object]) -> None:
    """Send one handshake message (length-prefixed msgpack array)."""
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    assert len(body) <= HANDSHAKE_MESSAGE_BYTES_MAX, len(body)
    await stream.send_all(len(body).to_bytes(LENGTH_PREFIX_BYTES, "big") + body)


async def receive_message(stream: trio.abc.Stream) -> list[object]:
    """Receive one handshake message, reading exactly its bytes and nothing after it."""
    n = int.from_bytes(await _receive_exactly(stream, LENGTH_PREFIX_BYTES), "big")
    if not 0 < n <= HANDSHAKE_MESSAGE_BYTES_MAX:
        raise AuthenticationFailed(f"handshake message of {n} bytes")
    body = await _receive_exactly(stream, n)
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:  # any msgpack failure is the peer's (see node/wire.py)
        raise AuthenticationFailed("handshake message is not msgpack") from None
    if type(obj) is not list or not obj:
        raise AuthenticationFailed("handshake message is not an array")
    return obj


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise AuthenticationFailed("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------------------ TLS


class TlsAuthenticator:
    """Mutual TLS 1.3 under the cluster CA; peer ids come from certificates."""

    def __init__(self, ca_cert: Path | str, cert: Path | str, key: Path | str) -> None:
        ca_cert, cert, key = Path(ca_cert), Path(cert), Path(key)
        self.node_id = node_id_from_certificate(PemPair.read(cert, key).certificate())
        self._server = self._context(ssl.Purpose.CLIENT_AUTH, ca_cert, cert, key)
        self._client = self._context(ssl.Purpose.SERVER_AUTH, ca_cert, cert, key)

    @staticmethod
    def _context(purpose: ssl.Purpose, ca_cert: Path, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=str(ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the identity is the node id, checked by the caller
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def check_local_id(self, node_id: NodeId) -> None:
        if node_id != self.node_id:
            raise ValueError(f"the TLS certificate is for {self.node_id!r}, not {node_id!r}")

    async def accept(
        self, stream: trio.abc.Stream, local_id: NodeId
    ) -> tuple[trio.abc.Stream, NodeId]:
        tls = trio.SSLStream(stream, self._server, server_side=True)
        peer = await self._handshake(tls)
        if peer == local_id:
            raise AuthenticationFailed("peer claims this node's own id")
        return tls, peer

    async def connect(
        self, stream: trio.abc.Stream, local_id: NodeId, peer_id: NodeId
    ) -> trio.abc.Stream:
        tls = trio.SSLStream(stream, self._client, server_side=False)
        peer = await self._handshake(tls)
        if peer != peer_id:
            raise AuthenticationFailed(f"peer is {peer!r}, expected {peer_id!r}")
        return tls

    @staticmethod
    async def _handshake(tls: trio.SSLStream[trio.abc.Stream]) -> NodeId:
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as e:
            if isinstance(e.__cause__, ssl.SSLError):
                reason = e.__cause__.reason or type(e.__cause__).__name__
                raise AuthenticationFailed(f"TLS handshake failed: {reason}") from None
            raise
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise AuthenticationFailed("peer sent no certificate")
        try:
            return node_id_from_certificate(x509.load_der_x509_certificate(der))
        except (TlsMaterialError, ValueError) as e:
            raise AuthenticationFailed(f"peer certificate: {e}") from None
