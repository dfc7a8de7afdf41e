"""Read-only summaries shown beside listed rows: per namespace its adapter count, per adapter
its version count, latest version and channels, per version the channels serving it, and the
metric points of an adapter's charts.

Nothing here writes or filters which rows a list shows (that is :func:`registry.services.
adapters.list_adapters` and its peers); everything here is batched per page, never per row,
and chart queries select plain columns, never ORM objects with their files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session, aliased

from registry.models import Adapter, AdapterVersion, Channel, Metric, Namespace
from registry.statuses import VersionStatus

CHART_MAX_VERSIONS = 2000


@dataclass
class NamespaceSummary:
    name: str
    description: str
    adapters: int
    last_push: datetime | None


def namespaces(session: Session, scope: Sequence[str] | None) -> list[NamespaceSummary]:
    """Every visible namespace with its adapter count and last push."""
    stmt = (select(Namespace.name, Namespace.description, func.count(Adapter.id),
                   func.max(Adapter.updated_at))
            .outerjoin(Adapter, Adapter.namespace_id == Namespace.id)
            .group_by(Namespace.id, Namespace.name, Namespace.description)
            .order_by(Namespace.name))
    if scope is not None:
        stmt = stmt.where(Namespace.name.in_(scope))
    return [NamespaceSummary(n, d, int(c), last) for n, d, c, last in session.execute(stmt)]


@dataclass
class ChannelBadge:
    name: str
    stable: int | None
    canary: int | None
    weight_bp: int


@dataclass
class AdapterSummary:
    adapter: Adapter
    versions: int = 0
    latest: int | None = None
    latest_status: VersionStatus | None = None
    base: str | None = None
    channels: list[ChannelBadge] = field(default_factory=list)


def adapters(session: Session, items: Sequence[Adapter]) -> list[AdapterSummary]:
    """``items`` in their order, each with its version count, latest version and channels."""
    rows = {a.id: AdapterSummary(a) for a in items}
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
        _add_latest(session, rows, pairs)
    for adapter_id, badge in _channel_badges(session, list(rows)):
        rows[adapter_id].channels.append(badge)
    return list(rows.values())


def _add_latest(session: Session, rows: dict[int, AdapterSummary],
                pairs: list[tuple[int, int]]) -> None:
    latest_rows = session.execute(
        select(AdapterVersion.adapter_id, AdapterVersion.status, AdapterVersion.base_hub_id,
               AdapterVersion.base_revision)
        .where(tuple_(AdapterVersion.adapter_id, AdapterVersion.number).in_(pairs)))
    for adapter_id, status, hub_id, revision in latest_rows:
        rows[adapter_id].latest_status = status
        rows[adapter_id].base = f"{hub_id}@{revision}"


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


@dataclass
class VersionPoint:
    """What a chart needs of one version: its number, status and latest metric values."""

    id: int
    number: int
    status: VersionStatus
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
