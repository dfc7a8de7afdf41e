"""/metrics, request ids and JSON logs."""

from __future__ import annotations

import json
import logging

from registry.logs import JsonFormatter, request_id_var
from tests.fixtures.api import Api
from tests.registry.test_api import h, push


def test_metrics_exposition_covers_requests_bytes_jobs_rollouts_webhooks(api: Api) -> None:
    assert push(api, api.admin).status_code == 201
    api.client.get("/api/v1/adapters/acme/bot/versions/1", headers=h(api.admin))
    text = api.client.get("/metrics").text
    for name in ("lorareg_http_requests_total", "lorareg_http_request_duration_seconds",
                 "lorareg_blob_bytes_total", "lorareg_jobs", "lorareg_queue_oldest_age_seconds",
                 "lorareg_jobs_finished", "lorareg_rollouts", "lorareg_webhook_deliveries"):
        assert name in text, name
    assert ('route="/api/v1/adapters/{ns}/{name}/versions/{sel}",status="200"' in text)
    assert 'lorareg_blob_bytes_total{direction="in"}' in text


def test_request_id_is_echoed_and_recorded(api: Api) -> None:
    r = api.client.get("/api/v1/whoami", headers={**h(api.admin), "X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(api.client.get("/healthz").headers["x-request-id"]) == 32
    push(api, api.admin, seed=3)  # audit events carry the request id of their request
    events = api.client.get("/api/v1/audit?action=version.pushed",
                            headers={**h(api.admin), "X-Request-ID": "q"}).json()["items"]
    assert events and all(e["request_id"] for e in events)


def test_json_log_lines_carry_the_request_id() -> None:
    token = request_id_var.set("rid-42")
    try:
        record = logging.LogRecord("lorareg.api", logging.INFO, __file__, 1, "hello %s",
                                   ("world",), None)
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello world" and line["request_id"] == "rid-42"
    assert line["level"] == "INFO" and line["logger"] == "lorareg.api"
