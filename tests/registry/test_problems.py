"""Unexpected server failures, against a real uvicorn process: a problem+json 500 that names
the request id, and a connection that stays usable for the client's next request."""

from __future__ import annotations

import sqlite3

import httpx

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
