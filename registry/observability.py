"""Structured logs with a request id, and Prometheus metrics.

The request id comes from ``X-Request-ID`` (or is made up), is echoed in the response, is in
every log line of the request, is stored on jobs the request queues, and is put back in the
log context while a worker runs that job.

Metrics are per process for what a process does (HTTP requests and bytes moved) and read from
the database at scrape time for what the fleet shares (queue depth, job outcomes and durations,
rollout states, webhook deliveries), so every API replica reports the same fleet view.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.db import transaction
from registry.models import Job, Rollout
from registry.services import jobs, webhooks

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lorareg_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
            "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Metrics:
    """The process-local instruments of one app (own registry: several apps may coexist)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lorareg_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("lorareg_http_request_duration_seconds", "HTTP latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10))
        self.bytes = Counter("lorareg_blob_bytes_total", "blob bytes moved through the API",
                             ["direction"], registry=self.registry)
        self.registry.register(FleetCollector(sessions))


class FleetCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with transaction(self.sessions, readonly=True) as session:
            yield from _queue_metrics(session)
            yield from _job_metrics(session)
            yield _rollout_metric(session)
            yield _webhook_metric(session)


def _queue_metrics(session: Session) -> Iterator[GaugeMetricFamily]:
    stats = jobs.queue_stats(session)
    depth = GaugeMetricFamily("lorareg_jobs", "jobs by status", labels=["status"])
    for status, n in stats["counts"].items():
        depth.add_metric([status], n)
    yield depth
    yield GaugeMetricFamily("lorareg_queue_oldest_age_seconds", "age of the oldest queued job",
                            value=stats["oldest_queued_age"])


def _job_metrics(session: Session) -> Iterator[GaugeMetricFamily]:
    done = GaugeMetricFamily("lorareg_jobs_finished", "finished jobs by kind and outcome",
                             labels=["kind", "outcome"])
    seconds = GaugeMetricFamily("lorareg_job_duration_seconds_sum",
                                "total run time of finished jobs", labels=["kind", "outcome"])
    rows = session.execute(select(Job.kind, Job.status, Job.started_at, Job.finished_at)
                           .where(Job.finished_at.is_not(None))
                           .execution_options(yield_per=1000))
    totals: dict[tuple[str, str], list[float]] = {}
    for kind, status, started, finished in rows:
        entry = totals.setdefault((kind, status), [0.0, 0.0])
        entry[0] += 1
        if started is not None and finished is not None:
            entry[1] += (finished - started).total_seconds()
    for (kind, status), (n, total) in sorted(totals.items()):
        done.add_metric([kind, status], n)
        seconds.add_metric([kind, status], total)
    yield done
    yield seconds


def _rollout_metric(session: Session) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("lorareg_rollouts", "rollouts by state", labels=["state"])
    for state, n in session.execute(select(Rollout.status, func.count())
                                    .group_by(Rollout.status)):
        gauge.add_metric([state], n)
    return gauge


def _webhook_metric(session: Session) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("lorareg_webhook_deliveries", "webhook deliveries by outcome",
                              labels=["status"])
    for status, n in webhooks.stats(session).items():
        gauge.add_metric([status], n)
    return gauge


class RequestObserver:
    """ASGI middleware: request id in, request id out, and request metrics by route."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id_var.set(rid)
        started, status = time.perf_counter(), [500]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            request_id_var.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(
                time.perf_counter() - started)

