"""Eval metrics: appended after push as often as needed, never rewritten."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import BadRequest
from registry.models import AdapterVersion, Metric
from registry.services import audit
from registry.services.context import Actor

METRIC_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,127}\Z")
MAX_METRICS_PER_CALL = 1000


@dataclass(frozen=True)
class MetricInput:
    key: str
    value: float
    dataset: str | None = None
    split: str | None = None


def check_metric(m: MetricInput) -> MetricInput:
    if not isinstance(m.key, str) or not METRIC_KEY_RE.match(m.key):
        raise BadRequest(f"metric key {m.key!r} is invalid: letters, digits, '_', '.', '-', '/'")
    if isinstance(m.value, bool) or not isinstance(m.value, int | float):
        raise BadRequest(f"metric {m.key!r} value must be a number")
    if not math.isfinite(m.value):
        raise BadRequest(f"metric {m.key!r} value must be finite")
    for what, text in (("dataset", m.dataset), ("split", m.split)):
        if text is not None and (len(text) > 256 or not text.isprintable()):
            raise BadRequest(f"metric {m.key!r} {what} must be printable, at most 256 chars")
    return MetricInput(m.key, float(m.value), m.dataset, m.split)


def add_metrics(
    session: Session, version: AdapterVersion, metrics: Sequence[MetricInput], actor: Actor
) -> list[Metric]:
    """Append metrics to ``version`` (validated first, all or nothing)."""
    if len(metrics) > MAX_METRICS_PER_CALL:
        raise BadRequest(f"at most {MAX_METRICS_PER_CALL} metrics per call")
    checked = [check_metric(m) for m in metrics]
    rows = [
        Metric(version_id=version.id, key=m.key, value=m.value, dataset=m.dataset,
               split=m.split, recorded_by=actor.name)
        for m in checked
    ]
    session.add_all(rows)
    session.flush()
    return rows


def log_metrics(
    session: Session, actor: Actor, version: AdapterVersion, metrics: Sequence[MetricInput]
) -> list[Metric]:
    """Append metrics after push; one audit event for the batch."""
    if not metrics:
        raise BadRequest("no metrics given")
    rows = add_metrics(session, version, metrics, actor)
    name = f"{version.adapter.full_name}@{version.number}"
    audit.record(
        session, actor, "metrics.logged", "version", name,
        namespace=version.adapter.namespace.name,
        payload={"metrics": {m.key: m.value for m in rows}},
    )
    return rows


def history(session: Session, version: AdapterVersion) -> list[Metric]:
    """Every recorded value, oldest first."""
    stmt = select(Metric).where(Metric.version_id == version.id).order_by(Metric.id)
    return list(session.scalars(stmt))


def latest(session: Session, version_ids: Sequence[int]) -> dict[int, dict[str, float]]:
    """The latest value of each key, per version id."""
    out: dict[int, dict[str, float]] = {vid: {} for vid in version_ids}
    if not version_ids:
        return out
    stmt = select(Metric).where(Metric.version_id.in_(version_ids)).order_by(Metric.id)
    for m in session.scalars(stmt):
        out[m.version_id][m.key] = m.value
    return out
