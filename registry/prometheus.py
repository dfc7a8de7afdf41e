"""Prometheus collectors of one API app (``GET /metrics``).

Metrics are per process for what a process does (HTTP requests and bytes moved: counted by
``registry.web.observer`` and the blob routes) and read from the database at scrape time for
what the fleet shares (queue depth, job outcomes and durations, rollout states, webhook
deliveries), so every API replica reports the same fleet view.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from registry.db import transaction
from registry.services import jobs, residency, rollouts, webhooks
from registry.services.resolve_state import ResolveState
from registry.statuses import BaseVerdict


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


class ResolveCollector(Collector):
    """This process's resolve state (registry.services.resolve_state): how many channels it
    holds, how old its view of the change feed is, how often it loaded in full or failed."""

    def __init__(self, state: ResolveState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.state.stats
        yield GaugeMetricFamily("lorareg_resolve_channels", "channels held in memory",
                                value=stats.channels)
        yield GaugeMetricFamily(
            "lorareg_resolve_feed_age_seconds", "since the last successful poll of the change "
            "feed began (answers from memory only below the staleness bound)",
            value=self.state.age())
        yield CounterMetricFamily("lorareg_resolve_full_loads", "full loads of every channel",
                                  value=stats.full_loads)
        yield CounterMetricFamily("lorareg_resolve_feed_failures", "failed polls of the feed",
                                  value=stats.failures)


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
            yield from _pool_metrics(session)


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
    for (kind, outcome), (n, total) in sorted(jobs.outcome_totals(session).items()):
        done.add_metric([kind, outcome], n)
        seconds.add_metric([kind, outcome], total)
    yield done
    yield seconds


def _rollout_metric(session: Session) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("lorareg_rollouts", "rollouts by state", labels=["state"])
    for state, n in rollouts.count_by_status(session).items():
        gauge.add_metric([state], n)
    return gauge


def _webhook_metric(session: Session) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("lorareg_webhook_deliveries", "webhook deliveries by outcome",
                              labels=["status"])
    for status, n in webhooks.stats(session).items():
        gauge.add_metric([status], n)
    return gauge


def _pool_metrics(session: Session) -> Iterator[GaugeMetricFamily]:
    """Per pool with replicas: live replicas by verdict, served names with drift on a live
    replica, and each replica's heartbeat age. Labels are pool and replica names only (never
    served names or versions), and replicas silent for a day leave the ledger
    (residency.RETIRE_AFTER), so series stay as many as the fleet's replicas."""
    replicas = GaugeMetricFamily("lorareg_pool_replicas", "live replicas of a pool by verdict",
                                 labels=["pool", "verdict"])
    drift = GaugeMetricFamily("lorareg_pool_drift_versions",
                              "served names with drift on a live replica of the pool",
                              labels=["pool"])
    age = GaugeMetricFamily("lorareg_pool_heartbeat_age_seconds",
                            "seconds since a replica's last heartbeat",
                            labels=["pool", "replica"])
    for st in residency.fleet(session):
        name = st.pool.full_name
        for verdict in BaseVerdict:
            replicas.add_metric([name, verdict.value], sum(
                r.live and r.row.verdict == verdict for r in st.replicas))
        drift.add_metric([name], len(st.drift_versions))
        for r in st.replicas:
            age.add_metric([name, r.row.replica_id], r.age_seconds)
    yield replicas
    yield drift
    yield age
