"""``/docs`` is served entirely by the registry: Swagger UI's files come from the installed
package, the page names no other origin, and its Content-Security-Policy allows scripts from
this origin only. The browser test loads it in chromium with every other origin unreachable."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures.api import Api
from tests.fixtures.server import LiveServer

TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
REFERENCE = re.compile(r'\b(?:src|href|data-openapi-url)="([^"]*)"')
CHROMIUM = Path("/usr/bin/chromium")


def references(page: str) -> list[str]:
    return REFERENCE.findall(page)


def csp(header: str) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in map(str.strip, header.split(";")) if d}


def test_docs_page_names_only_this_origin(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    found = references(page.text)
    assert len(found) == 5, found  # favicon, stylesheet, two scripts, the OpenAPI document
    for url in found:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
    assert "cdn" not in page.text.lower() and "http" not in page.text.lower()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) is None  # no inline script


def test_docs_page_has_a_strict_content_security_policy(api: Api) -> None:
    page = api.client.get("/docs")
    policy = csp(page.headers["content-security-policy"])
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert policy["frame-ancestors"] == "'none'" and policy["connect-src"] == "'self'"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_every_asset_of_the_docs_page_is_served_with_its_type(api: Api) -> None:
    for url in references(api.client.get("/docs").text):
        answer = api.client.get(url)
        assert answer.status_code == 200, url
        if url.endswith("/openapi.json"):
            assert answer.json()["info"]["title"] == "lorareg"
            continue
        expected = TYPES[Path(url).suffix]
        assert answer.headers["content-type"].startswith(expected), (url, answer.headers)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert len(answer.content) > 0
    bundle = api.client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle


def test_only_the_listed_assets_are_served_and_redoc_is_off(api: Api) -> None:
    for path in ("/docs/assets/../../config.py", "/docs/assets/redoc.standalone.js",
                 "/docs/assets/nothing.js", "/redoc", "/docs/oauth2-redirect"):
        answer = api.client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("application/problem+json"), path


# --------------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if os.environ.get("CI") != "true":  # in CI a missing Playwright is an install bug: fail
        pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (CI=true: not skipping)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.mark.e2e
def test_swagger_ui_renders_offline_without_policy_violations(
    live_server: LiveServer, chromium: object,
) -> None:
    from playwright.sync_api import Browser, Route

    assert isinstance(chromium, Browser)
    page = chromium.new_context().new_page()
    page.set_default_timeout(20_000)
    elsewhere: list[str] = []

    def only_this_server(route: Route) -> None:
        if route.request.url.startswith(live_server.url + "/"):
            route.continue_()
        else:  # the machine is "offline": no other origin answers
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live_server.url}/docs")
    page.wait_for_selector(".opblock")  # operations rendered from /openapi.json
    assert page.locator(".opblock").count() > 50
    page.locator(".opblock-summary").first.click()  # an operation's parameters and answers
    page.wait_for_selector(".opblock-body .responses-table")
    assert page.locator(".information-container .title").inner_text().startswith("lorareg")
    assert elsewhere == [] and problems == []
