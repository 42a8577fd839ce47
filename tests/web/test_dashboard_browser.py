"""The dashboard in headless Chromium against a real 3-node cluster (node.devcluster).

Debian's ``/usr/bin/chromium`` driven by Playwright's Python package (never its own
browser download). Skipped, saying why, where that binary is absent. Screenshots go to
``test-artifacts/dashboard/``; ``ROTA_UPDATE_SCREENSHOT=1`` also refreshes the README's
``docs/dashboard.png``. The whole file is budgeted at 90 s.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.devcluster import LocalCluster, free_http_base

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="browser tests need Debian's chromium at /usr/bin/chromium"
    ),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster", nodes_total=3, http_port=free_http_base(3))
    c.start()
    try:
        c.wait_leader()
        yield c
    finally:
        c.stop()


def shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def test_watch_create_run_and_fail_over(cluster: LocalCluster) -> None:
    started = time.monotonic()
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes.values() if n.name != leader)
    problems: list[str] = []
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        expect = playwright_sync.expect
        expect.set_options(timeout=TIMEOUT_MS)

        # Log in on a follower; the topology fills from the event stream.
        page.goto(follower.api + "/#/cluster")
        page.get_by_test_id("token").fill(cluster.admin_token)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_test_id("role")).to_have_text("admin")
        expect(page.get_by_test_id("leader")).to_have_text(leader)
        expect(page.locator("[data-testid=topology] tbody tr")).to_have_count(3)
        expect(page.get_by_test_id("stream")).to_have_text("live")
        shot(page, "1-cluster")

        # A bad cron expression is refused with the API's field message: while typing
        # (the live preview), and again on save.
        page.goto(follower.api + "/#/jobs")
        page.get_by_test_id("new-job").click()
        form = page.get_by_test_id("job-form")
        preview = page.get_by_test_id("schedule-preview")
        expect(preview.locator("li")).to_have_count(5)  # the default schedule's
        form.locator("input[name=name]").fill("browser-hello")
        form.locator("input[name=cron]").fill("not a cron")
        expect(page.get_by_test_id("schedule-error")).to_contain_text("schedule.cron")
        expect(preview).to_be_hidden()
        form.locator("input[name=command]").fill("echo hello-from-the-browser")
        page.get_by_test_id("save-job").click()
        expect(page.get_by_test_id("schedule-error")).to_contain_text("schedule.cron")
        shot(page, "2-validation")

        # Every 2 s (6 fields: seconds first): saved, previewed, listed.
        form.locator("input[name=cron]").fill("*/2 * * * * *")
        expect(preview.locator("li")).to_have_count(5)  # previewed before it is saved
        expect(page.get_by_test_id("schedule-error")).to_be_hidden()
        page.get_by_test_id("save-job").click()
        expect(page.get_by_test_id("flash")).to_contain_text("saved browser-hello")
        expect(form.locator("li").first).to_be_visible()
        page.get_by_role("link", name="browser-hello").click()

        # Its runs appear live on the job page; one succeeds and shows its output.
        runs = page.locator("[data-testid=job-runs] tbody tr")
        expect(runs.filter(has_text="succeeded").first).to_be_visible()
        shot(page, "3-job-runs")
        runs.filter(has_text="succeeded").first.locator("a").first.click()
        expect(page.get_by_test_id("run-state")).to_have_text("succeeded")
        expect(page.get_by_test_id("run-output")).to_contain_text("hello-from-the-browser")
        shot(page, "4-run-output")

        # Kill the leader: within seconds the page shows a new leader and the old one down.
        page.goto(follower.api + "/#/cluster")
        expect(page.get_by_test_id("leader")).to_have_text(leader)
        if os.environ.get("ROTA_UPDATE_SCREENSHOT") == "1":
            README_SHOT.parent.mkdir(exist_ok=True)
            page.wait_for_timeout(3000)  # a few chart points
            page.screenshot(path=str(README_SHOT))
        cluster.kill(leader)
        killed_at = time.monotonic()
        expect(page.get_by_test_id("leader")).not_to_have_text(leader, timeout=15_000)
        expect(page.get_by_test_id("leader")).not_to_have_text("none", timeout=15_000)
        old_row = page.locator(f"[data-testid=topology] tr[data-node={leader}]")
        expect(old_row).to_have_class("down", timeout=15_000)
        failover_s = time.monotonic() - killed_at
        shot(page, "5-failover")
        browser.close()
    assert failover_s < 15
    # Nothing the page did may have tripped the CSP or thrown an Alpine error.
    assert not [p for p in problems if "Content Security Policy" in p or "Alpine" in p], problems
    assert time.monotonic() - started < 90
    shutil.rmtree(cluster.data_dir, ignore_errors=True)
