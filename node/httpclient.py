"""A small blocking JSON client for the Rota API, for the CLI (stdlib ``urllib`` only).

Exceptions::

    ClientError          base
    ├── TransportError   the node could not be reached (refused, DNS, TLS, timeout)
    │   └── ConnectionRefused   refused before anything was sent: it certainly did nothing
    ├── BadResponse      a success status with a body that is not JSON (not a Rota node?)
    └── ApiError         the node answered with an error status; fields come from
                         its problem+json body (``type``, ``title``, ``detail``, ``field``)

Rules: every request has a timeout; response bodies are read up to
``RESPONSE_BYTES_MAX``; the bearer token is sent only in the ``Authorization``
header and never appears in an exception message.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESPONSE_BYTES_MAX = 16 * 1024 * 1024
TIMEOUT_S_DEFAULT = 10.0
STREAM_CHUNK_BYTES = 64 << 10
DETAIL_CHARS_MAX = 300


class ClientError(Exception):
    """Base of the client's errors."""


class TransportError(ClientError):
    """The request did not get an HTTP answer."""


class ConnectionRefused(TransportError):
    """The node refused the connection, so the request was never sent."""


class BadResponse(ClientError):
    """The answer was a success but not JSON."""


class ApiError(ClientError):
    """The node answered with a 4xx/5xx; a problem+json body is parsed when present."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        field: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.field = field
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")


def normalize_address(address: str) -> str:
    """``127.0.0.1:8080`` -> ``http://127.0.0.1:8080``; keeps an explicit scheme."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    scheme = urllib.parse.urlsplit(address).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"address must be http:// or https://, got {address!r}")
    return address


class ApiClient:
    """Talks JSON to one node at ``address`` (``http[s]://host:port``)."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        ca_file: Path | None = None,
    ) -> None:
        assert timeout_s > 0
        self.address = normalize_address(address)
        self._token = token
        self._timeout_s = timeout_s
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Mapping[str, object] | None = None) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, object] | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request (with extra ``headers``, e.g. ``If-Match``); return the
        decoded JSON body (None when empty)."""
        with self._open(method, path, body=body, query=query, headers=headers) as resp:
            raw = resp.read(RESPONSE_BYTES_MAX)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise BadResponse(f"{resp.url} did not answer with JSON; is it a Rota node?") from None

    @contextlib.contextmanager
    def stream(
        self, path: str, query: Mapping[str, str] | None = None, *, idle_timeout_s: float
    ) -> Iterator[Stream]:
        """GET ``path`` and read its body as it arrives (``Stream.chunks``); a pause in
        the body longer than ``idle_timeout_s`` raises ``TransportError``."""
        with self._open("GET", path, query=query, accept="*/*", timeout_s=idle_timeout_s) as resp:
            yield Stream(resp.headers, resp, self.address)

    def _open(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, object] | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: str = "application/json",
        timeout_s: float | None = None,
    ) -> Any:
        url = self.address + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(
                req, timeout=timeout_s or self._timeout_s, context=self._ssl
            )
        except urllib.error.HTTPError as e:
            with e:
                raise _api_error(e.code, e.reason, e.read(RESPONSE_BYTES_MAX)) from None
        except (urllib.error.URLError, OSError) as e:
            raise _transport_error(self.address, e) from None


@dataclass
class Stream:
    """An open streaming response: its headers and its body in pieces."""

    headers: Mapping[str, str]
    _resp: Any
    _address: str

    def chunks(self, size: int = STREAM_CHUNK_BYTES) -> Iterator[bytes]:
        """The body's bytes as they arrive, until it ends."""
        while True:
            try:
                chunk: bytes = self._resp.read1(size)
            except OSError as e:
                raise _transport_error(self._address, e) from None
            if not chunk:
                return
            yield chunk


def _transport_error(address: str, e: Exception) -> TransportError:
    reason = getattr(e, "reason", e)
    kind = ConnectionRefused if isinstance(reason, ConnectionRefusedError) else TransportError
    return kind(f"cannot reach {address}: {reason}")


def _api_error(status: int, reason: str, raw: bytes) -> ApiError:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = raw.decode("utf-8", "replace").strip()[:DETAIL_CHARS_MAX]
        return ApiError(status, str(reason or "error"), text)
    field = doc.get("field")
    return ApiError(
        status,
        str(doc.get("title") or reason or "error"),
        str(doc.get("detail") or ""),
        str(doc.get("type") or "about:blank"),
        field if isinstance(field, str) else None,
    )
