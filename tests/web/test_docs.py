"""/docs: vendored files match their manifest, the page needs nothing from outside and
no inline script, and only the named files are served."""

from __future__ import annotations

import hashlib
import re

from tests.web.apphelpers import Harness, assert_problem
from web import docs


def test_vendored_files_match_the_manifest_and_carry_their_licence() -> None:
    listed = docs.vendored_files()
    present = {p.name for p in docs.VENDOR_DIR.iterdir()} - {docs.MANIFEST_FILE.name}
    assert present == set(listed), "every vendored file is listed, and only those"
    for name, digest in listed.items():
        assert hashlib.sha256((docs.VENDOR_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (docs.VENDOR_DIR / "LICENSE").read_text()


async def test_the_page_loads_only_same_origin_files_and_no_inline_script() -> None:
    h = Harness()
    status, headers, page = await h.call("GET", "/docs", role=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\bon[a-z]+=", page), "no inline event handlers"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and not [a for a in assets if "//" in a], assets
    for asset in assets:
        status, headers, body = await h.call("GET", "/" + asset, role=None)
        assert status == 200 and body, asset
        assert headers["Content-Security-Policy"] == docs.CONTENT_SECURITY_POLICY
    init = (docs.DOCS_DIR / "init.js").read_text()
    assert "validatorUrl: null" in init and "http" not in init.replace("openapi", "")


async def test_only_named_files_are_served() -> None:
    h = Harness()
    for name in ("manifest.json", "index.html", "nope.js"):
        assert_problem(*await h.call("GET", f"/docs/{name}", role=None), 404, "not-found")
    for path in ("/docs/..%2Fapp.py", "/docs/../web/app.py"):  # no such route: token first
        assert_problem(*await h.call("GET", path, role=None), 401, "unauthorized")
        assert_problem(*await h.call("GET", path), 404, "not-found")
