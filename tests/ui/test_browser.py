"""The UI in a real browser (Debian's chromium, driven by Playwright) against a real server
process (uvicorn, tokens required). Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # in CI a missing Playwright is an install bug: fail
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor
from tests.fixtures.server import ROOT, LiveServer
from tests.ui.helpers import ADAPTER, XSS, Seeded, seed_database

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
EVIL = "http://evil.test"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI=true: not skipping)")
        pytest.skip(why)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def seeded(live_server: LiveServer) -> Seeded:
    blobs = Path(live_server.env["LORAREG_BLOB_URL"].removeprefix("file://"))
    return seed_database(live_server.env["LORAREG_DATABASE_URL"], blobs)


def new_token(server: LiveServer, role: str) -> str:
    engine = make_engine(server.env["LORAREG_DATABASE_URL"])
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("test"), name=role, role=role)
        return plaintext
    finally:
        engine.dispose()


def open_page(browser: Browser) -> Page:
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:  # an alert() would mean injected script ran
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    return page


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, server: LiveServer, token: str) -> None:
    page.goto(f"{server.url}/ui")
    assert "/ui/login" in page.url
    shot(page, "login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/ui")


def post_status(page: Page, url: str, body: str) -> int:
    """POST a form body with fetch from the page (same origin, the page's cookies)."""
    status: int = page.evaluate(
        """([url, body]) => fetch(url, {method: "POST", body: body, headers:
             {"Content-Type": "application/x-www-form-urlencoded"}}).then(r => r.status)""",
        [url, body])
    return status


def test_sign_in_find_adapter_and_abort_a_canary(browser: Browser, live_server: LiveServer,
                                                 seeded: Seeded) -> None:
    page = open_page(browser)
    sign_in(page, live_server, new_token(live_server, "promoter"))
    page.fill("input[name=q]", "support")
    page.click("text=Apply")
    shot(page, "adapters")
    page.click(f"a.strong:has-text('{ADAPTER}')")
    page.wait_for_url(f"**/ui/adapters/{ADAPTER}")
    chart = page.locator('svg[data-chart="metric:accuracy"]')
    assert chart.locator("circle").count() == len(seeded.versions) == 5
    assert page.locator("#versions tbody tr").count() == 5
    shot(page, "adapter")

    page.click("a.stat-link:has-text('prod')")
    page.wait_for_url("**/channels/prod")
    assert page.inner_text("#canary .stat-v").strip() == "v5"
    assert page.locator('svg[data-chart^="gate:"]').count() == 2
    shot(page, "channel")
    _forged_posts_are_refused(page, live_server, seeded)

    page.click("#abort")
    page.wait_for_url(f"**/rollouts/{seeded.rollout_id}/abort")
    shot(page, "confirm-abort")
    page.fill("textarea[name=reason]", "p95 latency regression")
    page.click("#confirm-button")
    page.wait_for_url("**/channels/prod?done=aborted")
    assert "Rollout aborted" in page.inner_text(".notice")
    first = page.locator("#history tbody tr").first
    assert first.get_attribute("data-action") == "rollout.aborted"
    assert "p95 latency regression" in first.inner_text()
    assert page.inner_text("#stable .stat-v").strip() == "v4"  # stable unchanged
    assert page.inner_text("#canary .stat-v").strip() == "-"
    assert page.locator("#abort").count() == 0
    shot(page, "channel-aborted")

    for path, name in ((f"/ui/adapters/{ADAPTER}/versions/5", "version"),
                       (f"/ui/adapters/{ADAPTER}/channels/staging", "channel-rollback"),
                       ("/ui/jobs", "jobs"), ("/ui/audit", "audit"),
                       ("/ui/adapters/acme/nope", "not-found")):
        page.goto(live_server.url + path)
        shot(page, name)
    assert page.locator(".error-code").inner_text() == "404"
    assert page.dialogs == []  # type: ignore[attr-defined]


def _forged_posts_are_refused(page: Page, server: LiveServer, seeded: Seeded) -> None:
    """While a promoter is signed in: a same-origin POST without the CSRF token, and a
    cross-site form posted from another origin, change nothing."""
    abort = f"{server.url}/ui/rollouts/{seeded.rollout_id}/abort"
    assert post_status(page, abort, "reason=no+token") == 403
    attacker = page.context.new_page()
    attacker.route(f"{EVIL}/**", lambda route: route.fulfill(content_type="text/html", body=(
        f'<form id="f" method="post" action="{abort}"><input name="reason" value="x"></form>'
        '<script>document.getElementById("f").submit()</script>')))
    attacker.goto(f"{EVIL}/")
    attacker.wait_for_url(abort)
    assert attacker.locator(".error-code").inner_text() == "403"
    assert "another origin" in attacker.inner_text("#error-detail")
    attacker.close()
    page.reload()
    assert page.inner_text("#canary .stat-v").strip() == "v5"  # still running


def test_reader_sees_no_actions_and_cannot_post(browser: Browser, live_server: LiveServer,
                                                seeded: Seeded) -> None:
    page = open_page(browser)
    sign_in(page, live_server, new_token(live_server, "reader"))
    for path in (f"/ui/adapters/{ADAPTER}/channels/prod",
                 f"/ui/adapters/{ADAPTER}/channels/staging",
                 f"/ui/adapters/{ADAPTER}/versions/5", "/ui/jobs"):
        page.goto(live_server.url + path)
        assert page.locator("#actions a.btn, #actions button, a.btn-danger").count() == 0, path
    # The reader's own, valid CSRF token (from its sign-out form) grants no permission.
    csrf = page.get_attribute("input[name=csrf_token]", "value")
    abort = f"{live_server.url}/ui/rollouts/{seeded.rollout_id}/abort"
    assert post_status(page, abort, f"csrf_token={csrf}&reason=forged") == 403
    page.goto(f"{live_server.url}/ui/adapters/{ADAPTER}/channels/prod")
    assert page.inner_text("#canary .stat-v").strip() == "v5"
    shot(page, "channel-reader")


def test_html_in_user_input_never_runs(browser: Browser, live_server: LiveServer,
                                       seeded: Seeded) -> None:
    page = open_page(browser)
    sign_in(page, live_server, live_server.admin_token or "")
    for path in ("/ui", "/ui/adapters/acme/xss", "/ui/adapters/acme/xss/versions/1",
                 "/ui/audit"):
        page.goto(live_server.url + path)
        assert page.evaluate("() => window.__xss") is None, path
    page.goto(f"{live_server.url}/ui/adapters/acme/xss")
    assert page.inner_text("#description") == XSS  # shown as text, exactly as typed
    assert page.locator('svg[data-chart="metric:accuracy"] circle').count() == 1
    shot(page, "xss")
    assert page.dialogs == []  # type: ignore[attr-defined]
