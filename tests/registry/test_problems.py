"""Problem answers: unexpected server failures against a real uvicorn process (a problem+json
500 that names the request id, and a connection that stays usable for the client's next
request), and every other refusal built from its class of registry.errors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

import httpx

from registry import errors
from registry.api.problems import PROBLEM, render
from tests.fixtures.api import Api
from tests.fixtures.server import LiveServer


def test_internal_error_answers_problem_and_keeps_the_connection(
    live_server: LiveServer,
) -> None:
    # A real fault the code does not expect: the database lost a table under the server.
    database = live_server.env["LORAREG_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as conn:
        conn.execute("ALTER TABLE adapters RENAME TO adapters_gone")
    headers = {"Authorization": f"Bearer {live_server.admin_token}", "X-Request-ID": "req-500"}
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=live_server.url, limits=one_connection, timeout=10) as client:
        failed = client.get("/api/v1/adapters", headers=headers)
        after = client.get("/healthz")
    assert failed.status_code == 500, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    problem = failed.json()
    assert problem["code"] == "internal" and "req-500" in problem["detail"]
    assert "Traceback" not in failed.text and "adapters_gone" not in failed.text
    assert failed.headers.get("connection", "").lower() != "close"
    assert after.status_code == 200
    # The same connection carried both answers: the server did not close it after the 500.
    assert after.extensions["network_stream"] is failed.extensions["network_stream"]
    log = live_server.log.read_text()
    assert "unhandled error" in log and "Exception in ASGI application" not in log


# --- Every problem answer is built from a class of registry.errors ---------------------------

def assert_problem_of(response: Any, cls: type[errors.RegistryError]) -> dict[str, Any]:
    """The answer is ``cls``'s problem document: its status, code, type and title."""
    assert response.status_code == cls.status_code, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem == {**problem, "type": f"https://lorareg.dev/problems/{cls.code}",
                       "title": cls.title, "status": cls.status_code, "code": cls.code}
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert response.headers["content-length"] == str(len(response.content))
    return problem


def test_routing_refusals_are_classes(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.admin}"}
    assert_problem_of(api.client.get("/api/v1/nowhere", headers=auth), errors.NotFound)
    wrong = api.client.delete("/api/v1/whoami", headers=auth)
    assert_problem_of(wrong, errors.MethodNotAllowed)
    assert wrong.headers["allow"] == "GET"


def test_validation_and_bad_bodies_are_classes(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.admin}"}
    invalid = api.client.post("/api/v1/namespaces", json={"name": 5}, headers=auth)
    problem = assert_problem_of(invalid, errors.ValidationFailed)
    assert problem["errors"][0]["loc"] == ["body", "name"]
    not_json = api.client.post("/api/v1/namespaces", content=b"{", headers={
        **auth, "Content-Type": "application/json"})
    assert_problem_of(not_json, errors.ValidationFailed)
    huge = api.client.get("/api/v1/jobs/" + "9" * 30, headers=auth)  # past any integer column
    problem = assert_problem_of(huge, errors.BadRequest)
    assert problem["detail"] == "a number in the request is out of range"


def test_body_limit_answer_is_payload_too_large(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.admin}"}
    big = api.client.post("/api/v1/namespaces", content=b"x" * (64 * 1024 + 1), headers=auth)
    problem = assert_problem_of(big, errors.PayloadTooLarge)
    assert problem["detail"] == f"request body exceeds the limit of {64 * 1024} bytes"


def test_unsatisfiable_range_is_a_class_with_content_range(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.admin}"}
    data = b"lorareg" * 10
    digest = hashlib.sha256(data).hexdigest()
    assert api.client.put(f"/api/v1/blobs/{digest}", content=data,
                          headers=auth).status_code == 201
    past = api.client.get(f"/api/v1/blobs/{digest}",
                          headers={**auth, "Range": f"bytes={len(data)}-"})
    problem = assert_problem_of(past, errors.RangeNotSatisfiable)
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    assert problem["size"] == len(data)


def test_render_gives_middleware_the_same_answer() -> None:
    """What an ASGI middleware sends (the resolve fast path, the body limit) is what the
    exception handlers send: one builder."""
    status, headers, body = render(errors.Unauthenticated("no token"))
    assert (status, headers["WWW-Authenticate"], headers["Content-Type"]) == (
        401, "Bearer", PROBLEM)
    assert json.loads(body) == errors.Unauthenticated("no token").to_problem()
    status, headers, body = render(errors.TooManyRequests("busy", retry_after=3))
    assert (status, headers["Retry-After"], json.loads(body)["retry_after"]) == (429, "3", 3)
