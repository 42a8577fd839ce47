"""The dashboard's files: public, strict CSP, cache rules, and the vendored manifest."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.web.apphelpers import Harness
from web.dashboard import CSP, STATIC_DIR, load_static

VENDOR = STATIC_DIR / "vendor"


def manifest() -> list[dict[str, str]]:
    files: list[dict[str, str]] = json.loads((VENDOR / "manifest.json").read_text())["files"]
    return files


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: e["file"])
def test_every_vendored_file_matches_its_pinned_checksum_and_has_its_licence(
    entry: dict[str, str],
) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]), "pinned to an exact version"
    assert entry["file"].startswith(entry["name"].replace("@", "").replace("/", "-").lower() + "-")
    assert entry["version"] in entry["file"].split("/")[0], "the version is in the path"
    data = (VENDOR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    licence = (VENDOR / entry["license_file"]).read_bytes()
    assert hashlib.sha256(licence).hexdigest() == entry["license_sha256"]
    assert b"Permission is hereby granted" in licence and entry["license"] == "MIT"


def test_nothing_unlisted_is_vendored() -> None:
    listed = {e["file"] for e in manifest()} | {e["license_file"] for e in manifest()}
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert present == listed


def test_the_page_loads_only_local_scripts_and_has_no_inline_code() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" for _, body in scripts), "no inline script"
    assert all(re.search(r'src="/static/', attrs) for attrs, _ in scripts)
    assert "<style" not in html and " style=" not in html, "no inline style"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    assert "http://" not in html and "https://" not in html, "no CDN"
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert (STATIC_DIR / path.removeprefix("/static/")).is_file(), path


async def test_the_page_is_public_with_a_strict_csp() -> None:
    status, headers, body = await Harness().call("GET", "/", role=None)
    assert status == 200 and 'x-data="dashboard"' in body
    csp = headers["Content-Security-Policy"]
    assert csp == CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in csp and "*" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache"


async def test_vendored_files_are_cached_for_long_and_own_files_revalidate() -> None:
    h = Harness()
    entry = manifest()[0]
    status, headers, _ = await h.call("GET", "/static/vendor/" + entry["file"], role=None)
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = await h.call("GET", "/static/app.js", role=None)
    assert (status, headers["Cache-Control"]) == (200, "no-cache")
    again = await h.call(
        "GET", "/static/app.js", role=None, headers={"If-None-Match": headers["ETag"]}
    )
    assert again[0] == 304


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../app.py", "/static/%2e%2e/app.py"])
async def test_only_files_of_web_static_are_served(path: str) -> None:
    status, _, body = await Harness().call("GET", path, role=None)
    assert status == 404 and body["type"].endswith("/not-found")


def test_static_files_are_loaded_from_the_package_only(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("x")
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "b.css").write_text("y")
    files = load_static(tmp_path)
    assert set(files) == {"a.js", "vendor/b.css"}
    assert files["vendor/b.css"].content_type == "text/css; charset=utf-8"
