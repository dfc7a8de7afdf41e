"""Request bodies over the limit get 413 problem+json and change nothing, however they are
sent: with a Content-Length, or chunked (no length: counted as the bytes arrive)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from registry.models import AdapterVersion, AuditEvent
from tests.fixtures.api import Api
from tests.fixtures.server import LiveServer
from tests.ui.conftest import ORIGIN

JSON = {"Content-Type": "application/json"}


def chunked_json(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON document of about ``total`` bytes, as a generator: httpx sends it chunked."""
    yield b'{"files": [], "description": "'
    for _ in range(total // piece):
        yield b"x" * piece
    yield b'"}'


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "payload_too_large"


def test_chunked_json_body_over_the_limit_is_413(api: Api) -> None:
    before = (api.count(AdapterVersion), api.count(AuditEvent))
    response = api.client.post(
        "/api/v1/adapters/acme/bot/versions", content=chunked_json(200 * 1024),
        headers={"Authorization": f"Bearer {api.admin}", **JSON})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_413(response)
    assert (api.count(AdapterVersion), api.count(AuditEvent)) == before


def test_chunked_form_body_over_the_limit_is_413_not_500(api: Api) -> None:
    form = (b"token=" + b"x" * 65536 for _ in range(2))
    response = api.client.post(
        "/ui/login", content=form, follow_redirects=False,
        headers={"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert_413(response)


def test_chunked_json_body_under_the_limit_still_reaches_the_route(api: Api) -> None:
    response = api.client.post(
        "/api/v1/adapters/acme/bot/versions", content=chunked_json(8 * 1024),
        headers={"Authorization": f"Bearer {api.admin}", **JSON})
    # The route read the whole body and judged it (an empty file list), not the limit.
    assert response.status_code == 422, response.text


def test_chunked_9_9_mb_json_body_to_a_real_server_is_413(live_server: LiveServer) -> None:
    """The default limit (8 MiB) of a real uvicorn process, a 9.9 MB chunked body."""
    headers = {"Authorization": f"Bearer {live_server.admin_token}", **JSON}
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        response = client.post("/api/v1/adapters/acme/bot/versions",
                               content=chunked_json(9_900_000), headers=headers)
        assert_413(response)
        listed = client.get("/api/v1/adapters", headers=headers)
    assert listed.status_code == 200 and listed.json()["items"] == []
