"""Live serving metrics reported by routers, aggregated per version over a time window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import BadRequest
from registry.models import AdapterVersion, LiveSample
from registry.services.jobs import db_now
from registry.services.metrics import METRIC_KEY_RE

MAX_REPORTS = 1000


@dataclass(frozen=True)
class LiveReport:
    version: AdapterVersion
    requests: int
    errors: int = 0
    values: dict[str, float] = field(default_factory=dict)


def check_report(r: LiveReport) -> None:
    if r.requests < 0 or r.errors < 0 or r.errors > r.requests:
        raise BadRequest("live report needs 0 <= errors <= requests")
    for key, value in r.values.items():
        if not METRIC_KEY_RE.match(key) or key in ("requests", "errors", "error_rate"):
            raise BadRequest(f"live metric key {key!r} is invalid or reserved")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise BadRequest(f"live metric {key!r} must be a finite number")


def record(session: Session, reports: Sequence[LiveReport], reporter: str) -> int:
    """Store a batch of reports (validated first, all or nothing)."""
    if not reports or len(reports) > MAX_REPORTS:
        raise BadRequest(f"send 1..{MAX_REPORTS} live reports per call")
    for r in reports:
        check_report(r)
    now = db_now(session)  # the same clock the rollout windows use
    session.add_all(LiveSample(version_id=r.version.id, requests=r.requests, errors=r.errors,
                               values={k: float(v) for k, v in r.values.items()},
                               reporter=reporter, recorded_at=now) for r in reports)
    session.flush()
    return len(reports)


def aggregate(session: Session, version_id: int, since: datetime, until: datetime
              ) -> dict[str, float]:
    """``requests``, ``errors``, ``error_rate`` and request-weighted means of other keys."""
    rows = session.scalars(select(LiveSample).where(
        LiveSample.version_id == version_id, LiveSample.recorded_at >= since,
        LiveSample.recorded_at <= until))
    requests = errors = 0
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for row in rows:
        requests += row.requests
        errors += row.errors
        weight = float(max(row.requests, 1))
        for key, value in row.values.items():
            sums[key] = sums.get(key, 0.0) + value * weight
            weights[key] = weights.get(key, 0.0) + weight
    if requests == 0 and not sums:
        return {}
    out = {k: sums[k] / weights[k] for k in sums}
    out.update(requests=float(requests), errors=float(errors))
    if requests:
        out["error_rate"] = errors / requests
    return out
