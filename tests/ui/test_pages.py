"""Read pages of the UI in-process: sign-in, lists, an adapter, a version, a channel, jobs,
the audit log, error pages, escaping and pagination."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markupsafe import escape
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.db import make_session_factory, transaction
from registry.errors import BadRequest
from registry.services.metrics import MetricInput, check_metric
from registry.ui import session
from tests.ui.conftest import ORIGIN, UI
from tests.ui.helpers import ACCURACY, ADAPTER, XSS, bulk_versions, push

ADAPTER_PAGE = f"/ui/adapters/{ADAPTER}"


def rows(html: str, table_id: str) -> list[str]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)[1:]  # skip the header row


def circles(html: str, chart_id: str) -> list[str]:
    svg = html.split(f'data-chart="{chart_id}"', 1)[1].split("</svg>", 1)[0]
    return re.findall(r"<circle[^>]*>.*?</circle>", svg, flags=re.S)


def test_pages_need_sign_in_and_the_cookie_is_strict(ui: UI) -> None:
    first = ui.get("/ui/adapters?q=bot")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=%2Fui%2Fadapters%3Fq%3Dbot"
    assert "Sign in" in ui.get("/ui/login").text
    token = ui.token("reader")
    signed = ui.client.post("/ui/login", data={"token": token, "next": "/ui/jobs"},
                            headers={"Origin": ORIGIN}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/jobs"
    cookie = next(c for c in signed.headers.get_list("set-cookie")
                  if c.startswith("lorareg_token="))
    assert token in cookie
    assert {"HttpOnly", "Path=/ui", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    assert "Secure" not in cookie  # plain http here; https requests get Secure
    assert ui.get("/ui").status_code == 200
    # The cookie is scoped to /ui: the JSON API never receives it.
    assert ui.get("/api/v1/adapters").status_code == 401


def test_sign_in_refusals(ui: UI) -> None:
    bad = ui.client.post("/ui/login", data={"token": "lrg_nope_nope"},
                         headers={"Origin": ORIGIN})
    assert bad.status_code == 401 and "invalid token" in bad.text
    assert "lorareg_token" not in bad.headers.get("set-cookie", "")
    token = ui.token("admin")
    foreign = ui.client.post("/ui/login", data={"token": token},
                             headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "another origin" in foreign.text
    elsewhere = ui.client.post("/ui/login", data={"token": token, "next": "//evil.example/x"},
                               headers={"Origin": ORIGIN}, follow_redirects=False)
    assert elsewhere.headers["location"] == "/ui"  # never an open redirect


def test_adapter_list_searches_filters_and_sorts(ui: UI) -> None:
    ui.sign_in("reader")

    def names(query: str) -> list[str]:
        page = ui.get(f"/ui/adapters?{query}")
        assert page.status_code == 200, page.text
        return re.findall(r'<a class="strong" href="/ui/adapters/([^"]+)"', page.text)

    assert names("") == ["acme/xss", "ml-infra/router", ADAPTER]  # last push first
    assert names("sort=name") == ["ml-infra/router", ADAPTER, "acme/xss"]  # by name
    assert names("q=support") == [ADAPTER]
    assert names("label=team%3Dsupport") == [ADAPTER]
    assert names("namespace=ml-infra") == ["ml-infra/router"]
    assert names("base=tiny/llama@abc&q=router") == ["ml-infra/router"]
    assert names("base=other/model") == []
    assert names("q=&namespace=&label=&base=&sort=updated_at") == names("")  # empty fields
    page = ui.get("/ui").text
    assert "prod v4" in page and "+v5 50%" in page  # channel summary with the canary


def test_adapter_page_table_metrics_chart_and_sorting(ui: UI) -> None:
    ui.sign_in("reader")
    page = ui.get(ADAPTER_PAGE).text
    table = rows(page, "versions")
    assert [re.search(r">v(\d+)</a>", r).group(1) for r in table] == ["5", "4", "3", "2", "1"]  # type: ignore[union-attr]
    assert "accuracy" in page and "f1" in page and "CI run" in page and "fp <code" in page
    assert "prod · canary" in table[0] and "prod · stable" in table[1]
    points = circles(page, "metric:accuracy")
    assert len(points) == 5  # one point per version
    assert "<title>v3: accuracy = 0.86</title>" in points[2]
    by_metric = ui.get(f"{ADAPTER_PAGE}?sort=metric.accuracy&order=asc").text
    ordered = [re.search(r">v(\d+)</a>", r).group(1) for r in rows(by_metric, "versions")]  # type: ignore[union-attr]
    assert ordered == [str(i + 1) for i in sorted(range(5), key=lambda i: ACCURACY[i])]


def test_version_page_shows_files_config_base_jobs_and_audit(ui: UI) -> None:
    ui.sign_in("reader")
    page = ui.get(f"{ADAPTER_PAGE}/versions/5").text
    assert "adapter_model.safetensors" in page and "adapter_config.json" in page
    assert re.search(r'<code class="digest full">[0-9a-f]{64}</code>', page)
    assert "&#34;peft_type&#34;: &#34;LORA&#34;" in page  # the PEFT config, escaped JSON
    assert "tiny/llama@abc" in page and "tensor names and shapes checked" in page
    assert "https://ci.example.com/runs/104" in page
    assert f"#{ui.seeded.queued_job}" in page  # the merge job queued for it
    assert "version.pushed" in page and "prod · canary" in page


def test_channel_page_shows_rollout_gates_and_history(ui: UI) -> None:
    ui.sign_in("reader")
    prod = ui.get(f"{ADAPTER_PAGE}/channels/prod").text
    assert "step 2 of 3" in prod and "serves 50%" in prod
    assert len(circles(prod, "gate:live.error_rate &lt;= 0.02")) == 1
    assert "error_rate = 0.004 meets &lt;= 0.02" in prod
    assert re.findall(r'data-action="([^"]+)"', prod) == [
        "rollout.step", "rollout.step", "rollout.started", "promoted"]
    staging = ui.get(f"{ADAPTER_PAGE}/channels/staging").text
    marked = re.findall(r'<tr class="row-rollback" data-action="rollback">', staging)
    assert len(marked) == 1 and "latency regression" in staging


def test_jobs_page_shows_queue_progress_and_failures(ui: UI) -> None:
    ui.sign_in("reader")
    page = ui.get("/ui/jobs").text
    assert '<progress max="1" value="0.42">' in page and "merging layer 9 of 22" in page
    assert "[incompatible_base] base weights fingerprint mismatch" in page
    assert 'id="jobs-queued"' in page and f"#{ui.seeded.queued_job}" in page
    failed_only = ui.get("/ui/jobs?status=failed").text
    assert "fingerprint mismatch" in failed_only and "merging layer" not in failed_only


def test_audit_log_filters(ui: UI) -> None:
    ui.sign_in("reader")
    page = ui.get("/ui/audit?action=channel.rollback").text
    actions = re.findall(r'<span class="badge action">([^<]+)</span>', page)
    assert actions == ["channel.rollback"]
    by_target = ui.get("/ui/audit?target=ml-infra/").text
    assert set(re.findall(r'<span class="badge action">([^<]+)</span>', by_target)) == {
        "version.pushed", "adapter.created"}


def test_unknown_pages_and_bad_input_are_html_errors(ui: UI) -> None:
    ui.sign_in("reader")
    for path, status in (("/ui/adapters/acme/nope", 404), ("/ui/no/such/page", 404),
                         (f"{ADAPTER_PAGE}/versions/99", 404),
                         (f"{ADAPTER_PAGE}/channels/none", 404),
                         (f"{ADAPTER_PAGE}?sort=bogus", 400), ("/ui/jobs?limit=x", 400),
                         ("/ui/adapters/Bad Name/x", 400)):
        page = ui.get(path)
        assert page.status_code == status, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert 'class="error-page' in page.text and "Traceback" not in page.text


def test_every_page_carries_the_security_headers(ui: UI) -> None:
    ui.sign_in("reader")
    for path in ("/ui", ADAPTER_PAGE, "/ui/adapters/acme/nope", "/ui/login"):
        headers = ui.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"


def test_html_in_labels_descriptions_and_metrics_is_escaped(ui: UI) -> None:
    ui.sign_in("reader")
    for path, exact in (("/ui", True), ("/ui/adapters/acme/xss", True),
                        ("/ui/adapters/acme/xss/versions/1", True), ("/ui/audit", False)):
        page = ui.get(path).text
        assert "<script>window" not in page and "<img src=x" not in page, path
        # Exactly as typed, escaped (the audit log shows it inside JSON, so quotes differ).
        assert (str(escape(XSS)) if exact else "&lt;script&gt;window.__xss=1") in page, path
    adapter = ui.get("/ui/adapters/acme/xss").text
    assert adapter.count(str(escape(XSS))) >= 4  # description, label key and value, metric
    version = ui.get("/ui/adapters/acme/xss/versions/1").text
    assert 'href="javascript:' not in version  # an unsafe provenance URL is not a link
    with pytest.raises(BadRequest):  # the services refuse HTML as a metric name
        check_metric(MetricInput("<script>", 1.0))


def test_scoped_reader_sees_only_its_namespace(ui: UI) -> None:
    ui.sign_in("reader", namespace="ml-infra")
    assert re.findall(r'class="strong" href="/ui/adapters/([^"]+)"', ui.get("/ui").text) == [
        "ml-infra/router"]
    denied = ui.get(ADAPTER_PAGE)
    assert denied.status_code == 403 and "may not read in namespace" in denied.text
    targets = re.findall(r'<code class="mono small">([^<]+)</code>', ui.get("/ui/audit").text)
    assert "ml-infra/router@1" in targets and not any("acme" in t for t in targets)


def test_adapter_page_paginates_1000_versions(ui: UI, tmp_path: Path) -> None:
    with transaction(make_session_factory(ui.engine)) as session:
        bulk_versions(session, "bulk/many", 1000)
    ui.sign_in("reader")
    first = ui.get("/ui/adapters/bulk/many")
    assert first.status_code == 200
    numbers = re.findall(r'class="vlink" href="/ui/adapters/bulk/many/versions/(\d+)"',
                         "".join(rows(first.text, "versions")))
    assert numbers == [str(n) for n in range(1000, 950, -1)]
    assert 'data-chart="metric:accuracy" data-points="1000"' in first.text
    assert "Showing 50 of 1000" in first.text
    nxt = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert nxt is not None
    second = ui.get(nxt.group(1).replace("&amp;", "&"))
    numbers = re.findall(r'class="vlink" href="/ui/adapters/bulk/many/versions/(\d+)"',
                         "".join(rows(second.text, "versions")))
    assert numbers == [str(n) for n in range(950, 900, -1)]

    # The big page travels gzipped (the client asked for it); the API's JSON never does.
    assert first.headers["content-encoding"] == "gzip"
    assert int(first.headers["content-length"]) < len(first.content) / 5
    plain = ui.get("/ui/adapters/bulk/many", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers

    def timeless(html: str) -> str:  # "3 s ago" may tick between the two requests
        return re.sub(r"<time [^>]*>[^<]*</time>", "", html)

    assert timeless(plain.text) == timeless(first.text)
    api = ui.get("/api/v1/adapters/bulk/many/versions?limit=50",
                 headers={"Authorization": f"Bearer {ui.token('reader')}"})
    assert api.status_code == 200 and "content-encoding" not in api.headers


def test_embedded_mode_needs_no_sign_in(embedded_ui: UI) -> None:
    page = embedded_ui.get("/ui")
    assert page.status_code == 200 and "single-user mode" in page.text
    assert "lorareg_csrf=" in page.headers["set-cookie"]  # the CSRF secret without a token
    assert "Sign out" not in page.text


def test_new_push_appears_without_restart(ui: UI, tmp_path: Path) -> None:
    ui.sign_in("reader")
    with Session(ui.engine) as session, session.begin():
        push(session, LocalBlobStore(tmp_path / "blobs"), ADAPTER, 77, {"accuracy": 0.95})
    assert len(circles(ui.get(ADAPTER_PAGE).text, "metric:accuracy")) == 6


def test_an_unexpected_failure_is_a_500_page_without_a_trace(
        ui: UI, monkeypatch: pytest.MonkeyPatch) -> None:
    ui.sign_in("reader")

    def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("registry.services.summaries.namespaces", broken)
    page = ui.get("/ui/namespaces")
    assert page.status_code == 500 and 'class="error-page' in page.text
    assert "see the server log" in page.text
    assert "secret internals" not in page.text and "Traceback" not in page.text


def test_the_root_leads_to_the_ui(embedded_ui: UI) -> None:
    root = embedded_ui.get("/")
    assert root.status_code == 307 and root.headers["location"] == "/ui"
    assert embedded_ui.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")


def test_a_revoked_or_bogus_cookie_leads_back_to_sign_in(ui: UI) -> None:
    ui.client.cookies.set("lorareg_token", "lrg_bogus_token", path="/ui")
    page = ui.get(ADAPTER_PAGE)
    assert page.status_code == 303 and page.headers["location"].startswith("/ui/login?next=")
    assert 'lorareg_token=""' in page.headers["set-cookie"]  # the stale cookie is cleared
    unsafe = ("https://evil.example", "//evil.example", "/ui\r\nSet-Cookie: x=1", "/uix", "")
    assert {session.safe_next(t) for t in unsafe} == {"/ui"}
    assert session.safe_next("/ui/jobs?status=failed") == "/ui/jobs?status=failed"
