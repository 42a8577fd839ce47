"""``/docs``: Swagger UI over ``/api/v1/openapi.json``, from vendored files only.

Rules:
- Nothing is fetched from outside: the page, its init script and the vendored
  ``swagger-ui-dist`` files (``web/docs/vendor/``) are served by the node itself, so
  the docs work with no internet access.
- Only named files are served: the vendored ones listed in ``vendor/manifest.json``
  (with their SHA-256, verified by a test) and the page's own ``init.js``. Any other
  name is a 404; there is no path to traverse.
- A strict Content-Security-Policy: scripts only from this origin (no inline script,
  no eval), requests only to this origin. Styles allow ``'unsafe-inline'`` because
  Swagger UI sets ``style`` attributes from script; no script can be injected by that.
- Files are read once per process and kept in memory (about 2 MB).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Final

from quart import Response

from web import problems
from web.problems import ApiProblem

DOCS_DIR: Final = Path(__file__).resolve().parent / "docs"
VENDOR_DIR: Final = DOCS_DIR / "vendor"
MANIFEST_FILE: Final = VENDOR_DIR / "manifest.json"
OWN_ASSETS: Final = ("init.js",)
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
_TEXT: Final = "text/plain; charset=utf-8"  # LICENSE, NOTICE


def vendored_files() -> dict[str, str]:
    """Vendored file name -> its SHA-256 (hex), as the manifest records them."""
    manifest = json.loads(MANIFEST_FILE.read_text())
    files = manifest["sha256"]
    assert isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
    return dict(files)


@functools.cache
def _assets() -> dict[str, tuple[bytes, str]]:
    paths = {name: VENDOR_DIR / name for name in vendored_files()}
    paths |= {name: DOCS_DIR / name for name in OWN_ASSETS}
    return {name: (path.read_bytes(), _content_type(name)) for name, path in paths.items()}


def _content_type(name: str) -> str:
    return _CONTENT_TYPES.get(Path(name).suffix, _TEXT)


def _response(body: bytes, content_type: str) -> Response:
    response = Response(body, content_type=content_type)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"  # revalidate: files change with upgrades
    return response


async def docs_page() -> Response:
    """The documentation page."""
    return _response((DOCS_DIR / "index.html").read_bytes(), _CONTENT_TYPES[".html"])


async def docs_asset(name: str) -> Response:
    """One of the page's files, by name."""
    asset = _assets().get(name)
    if asset is None:
        raise ApiProblem(problems.NOT_FOUND, f"no documentation asset {name!r:.80}")
    return _response(*asset)
