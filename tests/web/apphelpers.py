"""Shared pieces for the API tests: keys, tokens, an app over FakeNodePort, a live server."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from node.auth import TokenVerifier, key_id, mint_token
from node.metrics import Metrics
from web.app import create_app, serve
from web.problems import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from web.security import ApiLimits, Role
from web.testing import FakeEventFeed, FakeNodePort, FakeSchedulerPort

NOW_S = 1_800_000_000.0  # a fixed wall-clock instant for token times


class FakeClock:
    """A settable clock (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Keys:
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def kid(self) -> str:
        return key_id(self.private.public_key())


@dataclass
class Harness:
    """An app over a fake port, with its own keys, clocks and metrics."""

    limits: ApiLimits = field(default_factory=ApiLimits)
    keys: Keys = field(default_factory=Keys)
    wall: FakeClock = field(default_factory=lambda: FakeClock(NOW_S))
    mono: FakeClock = field(default_factory=lambda: FakeClock(1000.0))
    port: FakeNodePort = field(default_factory=FakeNodePort)
    metrics: Metrics = field(default_factory=lambda: Metrics(version="test"))
    events: FakeEventFeed = field(default_factory=FakeEventFeed)

    def __post_init__(self) -> None:
        self.verifier = TokenVerifier(
            {self.keys.kid: self.keys.private.public_key()}, clock=self.wall
        )
        self.scheduler = FakeSchedulerPort()
        self.app: QuartTrio = create_app(
            self.port,
            self.verifier,
            self.metrics,
            self.limits,
            scheduler=self.scheduler,
            events=self.events,
            clock=self.mono,
        )
        # As if the server were stopping: an event stream sends its preamble and ends,
        # so ``call`` returns. Tests that read a live stream set a fresh event.
        self.app.extensions["rota"].stopping.set()

    def token(self, role: Role = Role.ADMIN, *, ttl_s: int = 3600, sub: str = "tester") -> str:
        return mint_token(self.keys.private, self.keys.kid, role, ttl_s, sub, now=self.wall.now)

    def auth(self, role: Role = Role.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        role: Role | None = Role.ADMIN,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Headers, Any]:
        """One request; returns (status, headers, decoded body)."""
        all_headers = dict(self.auth(role)) if role is not None else {}
        all_headers.update(headers or {})
        if kwargs.get("json", 0) is None:
            del kwargs["json"]  # no body, rather than the JSON text "null"
        client = self.app.test_client()
        response = await client.open(path, method=method, headers=all_headers, **kwargs)
        raw = await response.get_data(as_text=True)
        content_type = response.headers.get("Content-Type", "")
        body: Any = raw
        if "json" in content_type and raw:
            body = json.loads(raw)
        return response.status_code, response.headers, body


def assert_problem(
    status: int, headers: Headers, body: Any, expected_status: int, slug: str
) -> None:
    """The response is an RFC 9457 problem with the expected status and type."""
    assert status == expected_status, (status, body)
    assert headers["Content-Type"] == PROBLEM_CONTENT_TYPE, headers
    assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == expected_status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@asynccontextmanager
async def live_server(
    app: QuartTrio, *, certfile: Path | None = None, keyfile: Path | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on a free loopback port; yields its base URL."""
    shutdown = trio.Event()
    cert = str(certfile) if certfile else None
    key = str(keyfile) if keyfile else None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(serve, app, "127.0.0.1", 0, shutdown, certfile=cert, keyfile=key)
        )
        try:
            yield urls[0]
        finally:
            shutdown.set()
