"""The dashboard's files: ``/`` and ``/static/...``, served from this package.

Rules:
- Public: the page and its scripts hold no data; everything they show comes from
  the API with the user's token.
- Every file is read once, when the app is built, into memory (``STATIC_BYTES_MAX``
  in all): a request only looks a relative path up in that table, so no request
  can reach a file outside ``web/static`` and nothing touches the disk per request.
- Headers: a strict Content-Security-Policy (only this origin; no inline script or
  style; no eval: Alpine's CSP build evaluates directives without ``Function``),
  ``nosniff``, no referrer, no framing. Vendored files (``vendor/<name>-<version>/``,
  the version in the path) are cached for a year as immutable; the page and the
  dashboard's own files are revalidated by ETag on every load.
- ``vendor/manifest.json`` pins each vendored file (npm name, version, sha256, licence
  file); a test checks the files against it.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from quart import Response, request
from quart.typing import ResponseReturnValue

from web import problems
from web.problems import ApiProblem

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_BYTES_MAX = 4 << 20
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def load_static(root: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every file under ``root`` by its relative POSIX path."""
    files: dict[str, StaticFile] = {}
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        body = path.read_bytes()
        total += len(body)
        assert total <= STATIC_BYTES_MAX, f"web/static exceeds {STATIC_BYTES_MAX} bytes"
        content_type = _TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        cache = IMMUTABLE if relative.startswith("vendor/") else REVALIDATE
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[relative] = StaticFile(body, content_type, etag, cache)
    return files


_FILES: dict[str, StaticFile] = {}


def _files() -> dict[str, StaticFile]:
    if not _FILES:
        _FILES.update(load_static())
    return _FILES


def _send(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        raise ApiProblem(problems.NOT_FOUND, "no such file")
    if request.headers.get("If-None-Match") == found.etag:
        response = Response(b"", status=304)
    else:
        response = Response(found.body, content_type=found.content_type)
    response.headers["ETag"] = found.etag
    response.headers["Cache-Control"] = found.cache_control
    response.headers.update(SECURITY_HEADERS)
    return response


async def dashboard() -> ResponseReturnValue:
    """The single page (``index.html``); its routes are URL fragments."""
    return _send("index.html")


async def static_file(filename: str) -> ResponseReturnValue:
    """A file of ``web/static`` (public: scripts, styles, vendored libraries)."""
    return _send(filename)
