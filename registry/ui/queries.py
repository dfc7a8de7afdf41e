"""Read-only queries the pages need beyond the services: batched per page, never per row.

Nothing here writes. A page of N adapters or versions costs a fixed number of queries; charts
over all versions of an adapter select plain columns, never ORM objects with their files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, tuple_
from sqlalchemy.orm import Session, aliased

from registry.errors import BadRequest
from registry.models import (
    Adapter,
    AdapterLabel,
    AdapterVersion,
    AuditEvent,
    Channel,
    Job,
    MergedArtifact,
    Metric,
    Namespace,
    Rollout,
)
from registry.services.pagination import Page, paginate

CHART_MAX_VERSIONS = 2000


@dataclass
class NamespaceRow:
    name: str
    description: str
    adapters: int
    last_push: datetime | None


def namespaces(session: Session, scope: Sequence[str] | None) -> list[NamespaceRow]:
    """Every visible namespace with its adapter count and last push."""
    stmt = (select(Namespace.name, Namespace.description, func.count(Adapter.id),
                   func.max(Adapter.updated_at))
            .outerjoin(Adapter, Adapter.namespace_id == Namespace.id)
            .group_by(Namespace.id, Namespace.name, Namespace.description)
            .order_by(Namespace.name))
    if scope is not None:
        stmt = stmt.where(Namespace.name.in_(scope))
    return [NamespaceRow(n, d, int(c), last) for n, d, c, last in session.execute(stmt)]


@dataclass
class ChannelBadge:
    name: str
    stable: int | None
    canary: int | None
    weight_bp: int


@dataclass
class AdapterRow:
    adapter: Adapter
    versions: int = 0
    latest: int | None = None
    latest_status: str | None = None
    base: str | None = None
    channels: list[ChannelBadge] = field(default_factory=list)


@dataclass
class AdapterFilter:
    scope: Sequence[str] | None = None
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    query: str | None = None
    base: str | None = None
    sort: str = "updated_at"


def adapters(session: Session, f: AdapterFilter, *, cursor: str | None, limit: int
             ) -> Page[AdapterRow]:
    """Adapters (search, label and base filters), by last push or name, with summaries."""
    stmt = select(Adapter).join(Namespace, Adapter.namespace_id == Namespace.id)
    if f.scope is not None:
        stmt = stmt.where(Namespace.name.in_(f.scope))
    if f.namespace:
        stmt = stmt.where(Namespace.name == f.namespace)
    for key, value in f.labels.items():
        stmt = stmt.where(exists().where(AdapterLabel.adapter_id == Adapter.id,
                                         AdapterLabel.key == key, AdapterLabel.value == value))
    if f.query:
        stmt = stmt.where(Adapter.name.contains(f.query, autoescape=True)
                          | Adapter.description.contains(f.query, autoescape=True))
    if f.base:
        hub_id, _, revision = f.base.partition("@")
        on_base = (AdapterVersion.adapter_id == Adapter.id) & (
            AdapterVersion.base_hub_id == hub_id)
        if revision:
            on_base = on_base & (AdapterVersion.base_revision == revision)
        stmt = stmt.where(exists().where(on_base))
    if f.sort == "name":
        page = paginate(session, stmt, Adapter.name, Adapter.id, descending=False,
                        cursor=cursor, limit=limit, sort_value=lambda a: a.name)
    elif f.sort == "updated_at":
        page = paginate(session, stmt, Adapter.updated_at, Adapter.id, descending=True,
                        cursor=cursor, limit=limit, sort_value=lambda a: a.updated_at)
    else:
        raise BadRequest(f"unknown sort {f.sort!r}: use updated_at or name")
    return Page(_summaries(session, page.items), page.next_cursor)


def _summaries(session: Session, items: Sequence[Adapter]) -> list[AdapterRow]:
    rows = {a.id: AdapterRow(a) for a in items}
    if not rows:
        return []
    counts = session.execute(
        select(AdapterVersion.adapter_id, func.count(), func.max(AdapterVersion.number))
        .where(AdapterVersion.adapter_id.in_(rows)).group_by(AdapterVersion.adapter_id))
    pairs = []
    for adapter_id, count, latest in counts:
        rows[adapter_id].versions, rows[adapter_id].latest = int(count), latest
        pairs.append((adapter_id, latest))
    if pairs:
        latest_rows = session.execute(
            select(AdapterVersion.adapter_id, AdapterVersion.status, AdapterVersion.base_hub_id,
                   AdapterVersion.base_revision)
            .where(tuple_(AdapterVersion.adapter_id, AdapterVersion.number).in_(pairs)))
        for adapter_id, status, hub_id, revision in latest_rows:
            rows[adapter_id].latest_status = status
            rows[adapter_id].base = f"{hub_id}@{revision}"
    for adapter_id, badge in _channel_badges(session, list(rows)):
        rows[adapter_id].channels.append(badge)
    return list(rows.values())


def _channel_badges(session: Session, adapter_ids: Sequence[int]
                    ) -> list[tuple[int, ChannelBadge]]:
    stable, canary = aliased(AdapterVersion), aliased(AdapterVersion)
    stmt = (select(Channel.adapter_id, Channel.name, stable.number, canary.number,
                   Channel.canary_weight_bp)
            .outerjoin(stable, stable.id == Channel.stable_version_id)
            .outerjoin(canary, canary.id == Channel.canary_version_id)
            .where(Channel.adapter_id.in_(adapter_ids)).order_by(Channel.name))
    return [(a, ChannelBadge(n, s, c, w)) for a, n, s, c, w in session.execute(stmt)]


def channel_badges(session: Session, adapter_id: int) -> list[ChannelBadge]:
    return [badge for _, badge in _channel_badges(session, [adapter_id])]


@dataclass
class VersionPoint:
    """What a chart needs of one version: its number, status and latest metric values."""

    id: int
    number: int
    status: str
    created_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)


def version_points(session: Session, adapter_id: int, limit: int = CHART_MAX_VERSIONS
                   ) -> list[VersionPoint]:
    """The newest ``limit`` versions of an adapter, oldest first, with latest metric values."""
    rows = session.execute(
        select(AdapterVersion.id, AdapterVersion.number, AdapterVersion.status,
               AdapterVersion.created_at)
        .where(AdapterVersion.adapter_id == adapter_id)
        .order_by(AdapterVersion.number.desc()).limit(limit)).all()
    points = {vid: VersionPoint(vid, n, s, t) for vid, n, s, t in reversed(rows)}
    if not points:
        return []
    metric_rows = session.execute(
        select(Metric.version_id, Metric.key, Metric.value)
        .join(AdapterVersion, AdapterVersion.id == Metric.version_id)
        .where(AdapterVersion.adapter_id == adapter_id,
               AdapterVersion.number >= min(p.number for p in points.values()))
        .order_by(Metric.id))
    for version_id, key, value in metric_rows:  # ascending ids: the latest value wins
        if version_id in points:
            points[version_id].metrics[key] = value
    return list(points.values())


def metric_keys(points: Sequence[VersionPoint]) -> list[str]:
    return sorted({key for p in points for key in p.metrics})


def version_channels(session: Session, adapter_id: int) -> dict[int, list[tuple[str, str]]]:
    """version id -> [(channel name, "stable" | "canary")] for the adapter's channels."""
    out: dict[int, list[tuple[str, str]]] = {}
    stmt = select(Channel.name, Channel.stable_version_id, Channel.canary_version_id).where(
        Channel.adapter_id == adapter_id).order_by(Channel.name)
    for name, stable, canary in session.execute(stmt):
        if stable is not None:
            out.setdefault(stable, []).append((name, "stable"))
        if canary is not None:
            out.setdefault(canary, []).append((name, "canary"))
    return out


def artifacts(session: Session, version_id: int) -> list[MergedArtifact]:
    return list(session.scalars(select(MergedArtifact).where(
        MergedArtifact.version_id == version_id).order_by(MergedArtifact.id.desc())))


def jobs_for(session: Session, target: str, limit: int = 20) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.target == target)
                                .order_by(Job.id.desc()).limit(limit)))


def audit_for(session: Session, target_type: str, target: str, limit: int = 50
              ) -> list[AuditEvent]:
    """The audit trail of exactly one target, newest first."""
    return list(session.scalars(
        select(AuditEvent).where(AuditEvent.target_type == target_type,
                                 AuditEvent.target == target)
        .order_by(AuditEvent.id.desc()).limit(limit)))


def rollouts_of(session: Session, channel_id: int, limit: int = 20) -> list[Rollout]:
    return list(session.scalars(select(Rollout).where(Rollout.channel_id == channel_id)
                                .order_by(Rollout.id.desc()).limit(limit)))


def job_counts(session: Session, scope: Sequence[str] | None) -> dict[str, int]:
    stmt: Any = select(Job.status, func.count()).group_by(Job.status)
    if scope is not None:
        stmt = stmt.where(Job.namespace.in_(scope))
    return {status: int(n) for status, n in session.execute(stmt)}
