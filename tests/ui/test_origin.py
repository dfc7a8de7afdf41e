"""The UI's Origin check compares scheme, host and port with the request's own origin: a page
on ``http://host`` cannot post to ``https://host`` (nor the other way round), and behind a
proxy that terminates TLS the scheme comes from ``X-Forwarded-Proto`` (uvicorn's
``--proxy-headers``)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from registry.models import AuditEvent, Rollout
from registry.ui.session import TOKEN_COOKIE
from tests.ui.conftest import CSRF_RE, UI

HTTP, HTTPS = "http://testserver", "https://testserver"


def client_at(ui: UI, base_url: str, *, behind_proxy: bool = False) -> TestClient:
    app: Any = ui.client.app
    if behind_proxy:  # what `uvicorn --proxy-headers --forwarded-allow-ips=...` wraps it in
        app = ProxyHeadersMiddleware(app, trusted_hosts="*")
    return TestClient(app, base_url=base_url, raise_server_exceptions=False)


def sign_in(client: TestClient, token: str, origin: str, **headers: str) -> Any:
    return client.post("/ui/login", data={"token": token, "next": "/ui"},
                       headers={"Origin": origin, **headers}, follow_redirects=False)


@pytest.mark.parametrize(("served_at", "origin", "status"), [
    (HTTPS, HTTP, 403),
    (HTTP, HTTPS, 403),
    (HTTP, "http://testserver:8080", 403),
    (HTTPS, "https://testserver:8443", 403),
    (HTTPS, "https://testserver.evil.example", 403),
    (HTTP, "http://[::1", 403),
    (HTTPS, HTTPS, 303),
    (HTTPS, "https://TestServer:443", 303),  # the default port, spelled out
    (HTTP, "http://testserver:80", 303),
])
def test_sign_in_needs_the_same_scheme_host_and_port(
    ui: UI, served_at: str, origin: str, status: int,
) -> None:
    answer = sign_in(client_at(ui, served_at), ui.token("reader"), origin)
    assert answer.status_code == status, answer.text
    if status == 403:
        assert "another origin" in answer.text and not _signed_in(answer)


def test_referer_of_the_other_scheme_is_refused(ui: UI) -> None:
    client = client_at(ui, HTTPS)
    answer = client.post("/ui/login", data={"token": ui.token("reader"), "next": "/ui"},
                         headers={"Referer": f"{HTTP}/ui/login"}, follow_redirects=False)
    assert answer.status_code == 403 and not _signed_in(answer)


def test_action_posted_from_the_other_scheme_changes_nothing(ui: UI) -> None:
    client = client_at(ui, HTTPS)
    assert sign_in(client, ui.token("admin"), HTTPS).status_code == 303
    url = f"/ui/rollouts/{ui.seeded.rollout_id}/abort"
    found = CSRF_RE.search(client.get(url).text)
    assert found is not None
    form = {"reason": "from a plain-http page", "csrf_token": found.group(1)}
    events = _events(ui)
    refused = client.post(url, data=form, headers={"Origin": HTTP}, follow_redirects=False)
    assert refused.status_code == 403 and "another origin" in refused.text
    assert _status(ui) == "progressing" and _events(ui) == events
    # The same form from the page's own origin goes through: only the scheme differed.
    done = client.post(url, data=form, headers={"Origin": HTTPS}, follow_redirects=False)
    assert done.status_code == 303 and _status(ui) == "aborted"


@pytest.mark.parametrize(("origin", "status"), [(HTTPS, 303), (HTTP, 403)])
def test_behind_a_tls_proxy_the_forwarded_scheme_counts(
    ui: UI, origin: str, status: int,
) -> None:
    client = client_at(ui, HTTP, behind_proxy=True)  # the proxy talks plain http to us
    answer = sign_in(client, ui.token("reader"), origin, **{"X-Forwarded-Proto": "https"})
    assert answer.status_code == status, answer.text
    if status == 303:  # the cookie is Secure: the app knows it is served over https
        assert re.search(r"(?i);\s*secure", answer.headers["set-cookie"])


def _signed_in(answer: Any) -> bool:
    return TOKEN_COOKIE in answer.headers.get("set-cookie", "")


def _status(ui: UI) -> str:
    with ui.engine.connect() as conn:
        return str(conn.scalar(select(Rollout.status).where(Rollout.id == ui.seeded.rollout_id)))


def _events(ui: UI) -> int:
    with ui.engine.connect() as conn:
        return len(conn.execute(select(AuditEvent.id)).all())
