"""/metrics, request ids and JSON logs."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import update

from registry.db import make_session_factory, transaction
from registry.logs import JsonFormatter, request_id_var
from registry.models import Job, utcnow
from registry.services import jobs
from registry.services.context import Actor
from tests.fixtures.api import Api
from tests.registry.test_api import h, push
from tests.registry.test_resolve_paths import canary_on_prod


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


def sample(text: str, line_start: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).split()[-1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_fleet_gauges_count_finished_jobs_and_rollouts(api: Api) -> None:
    canary_on_prod(api)  # one rollout, progressing
    started = utcnow()
    with transaction(make_session_factory(api.engine)) as session:
        for seconds, succeeded in ((30, True), (12, True), (5, False)):
            job, _ = jobs.enqueue(session, Actor("t"), "gc", {}, max_attempts=1)
            jobs.claim(session, "w1", kinds=["gc"])
            if succeeded:
                jobs.complete(session, job.id, "w1", {})
            else:
                jobs.fail(session, job.id, "w1", "boom", retry=True)
            session.execute(update(Job).where(Job.id == job.id).values(
                started_at=started, finished_at=started + timedelta(seconds=seconds)))
    text = api.client.get("/metrics").text
    assert sample(text, 'lorareg_jobs_finished{kind="gc",outcome="succeeded"}') == 2
    assert sample(text, 'lorareg_job_duration_seconds_sum{kind="gc",outcome="succeeded"}') == 42
    assert sample(text, 'lorareg_jobs_finished{kind="gc",outcome="failed"}') == 1
    assert sample(text, 'lorareg_job_duration_seconds_sum{kind="gc",outcome="failed"}') == 5
    assert sample(text, 'lorareg_rollouts{state="progressing"}') == 1


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
