"""Garbage collection of blobs, and optional per-adapter retention.

A blob is garbage when no version file, merged artifact file or uploaded base file refers to
it **and** it was neither stored nor last offered to a client ("you need not upload this")
within the grace period. Safety against a push running at the same moment:

* a blob uploaded (or skipped as already present) for a push in flight was stored or seen
  within the grace window, so it is not a candidate;
* each candidate is deleted under its row lock (``FOR UPDATE``), after re-checking references;
  a push locks the rows of its blobs ``FOR SHARE`` until it commits, so the two serialize and
  the loser sees the winner's result (the push finds the blob gone and uploads it again, or
  the collector finds the new reference and keeps the blob);
* the stored object is deleted before the row, so a row never points at a missing blob.

Blobs present in the store with no row at all (an upload whose row never committed) are
deleted once older than the grace period. Staging uploads and abandoned S3 multipart uploads
older than the grace period are swept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import BlobStore
from registry.db import transaction
from registry.errors import BadRequest
from registry.models import (
    Adapter,
    AdapterVersion,
    BaseModel,
    Blob,
    MergedFile,
    VersionFile,
    utcnow,
)
from registry.services import audit, channels
from registry.services.context import Actor
from registry.statuses import VersionStatus


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    deleted: list[str] = field(default_factory=list)
    bytes_reclaimed: int = 0
    kept_referenced: int = 0
    kept_recent: int = 0
    orphans_deleted: int = 0
    uploads_swept: int = 0


def base_file_digests(session: Session) -> set[str]:
    return {f["digest"] for files in session.scalars(select(BaseModel.files)) for f in files}


def _referenced(session: Session, digest: str, base_digests: set[str]) -> bool:
    in_versions = session.scalar(select(exists().where(VersionFile.digest == digest)))
    in_merged = session.scalar(select(exists().where(MergedFile.digest == digest)))
    return bool(in_versions or in_merged or digest in base_digests)


def collect(
    sessions: sessionmaker[Session], store: BlobStore, actor: Actor, *,
    grace: timedelta = timedelta(hours=24), dry_run: bool = False,
) -> GcReport:
    """Delete unreferenced blobs older than ``grace`` (see the module docstring)."""
    if grace < timedelta(0):
        raise BadRequest("the grace period cannot be negative")
    cutoff = utcnow() - grace
    report = GcReport(dry_run, grace.total_seconds())
    with transaction(sessions) as session:
        candidates = list(session.execute(select(Blob.digest, Blob.size).where(
            Blob.created_at < cutoff, Blob.last_seen_at < cutoff)))
        report.kept_recent = session.scalar(select(func.count()).select_from(Blob).where(
            (Blob.created_at >= cutoff) | (Blob.last_seen_at >= cutoff))) or 0
    for digest, size in candidates:
        if _delete_one(sessions, store, digest, cutoff, dry_run):
            report.deleted.append(digest)
            report.bytes_reclaimed += size
        else:
            report.kept_referenced += 1
    report.orphans_deleted = _orphans(sessions, store, cutoff, dry_run, report)
    if not dry_run:
        report.uploads_swept = store.sweep_uploads(cutoff)
        with transaction(sessions) as session:
            audit.record(session, actor, "gc.collected", "blobs", "*",
                         payload={"deleted": len(report.deleted),
                                  "bytes": report.bytes_reclaimed,
                                  "orphans": report.orphans_deleted})
    return report


def _delete_one(sessions: sessionmaker[Session], store: BlobStore, digest: str,
                cutoff: datetime, dry_run: bool) -> bool:
    with transaction(sessions) as session:
        row = session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if row is None or row.last_seen_at >= cutoff or row.created_at >= cutoff:
            return False
        if _referenced(session, digest, base_file_digests(session)):
            return False
        if dry_run:
            return True
        store.delete(digest)  # object first: a row never outlives its blob
        session.delete(row)
    return True


def _orphans(sessions: sessionmaker[Session], store: BlobStore, cutoff: datetime,
             dry_run: bool, report: GcReport) -> int:
    """Stored objects with no row (their upload's row never committed)."""
    count = 0
    for info in store.iter_blobs():
        if info.modified >= cutoff:
            continue
        with transaction(sessions) as session:
            if session.get(Blob, info.digest) is not None:
                continue
            if not dry_run:
                store.delete(info.digest)
        count += 1
        report.bytes_reclaimed += info.size
    return count


@dataclass
class RetentionReport:
    dry_run: bool
    yanked: list[str] = field(default_factory=list)


def apply_retention(session: Session, actor: Actor, *, dry_run: bool = True
                    ) -> RetentionReport:
    """For adapters with ``keep_last`` set, yank active versions older than the newest N
    that no channel points at. Yanked versions stay pullable by number (immutability);
    their blobs stay referenced."""
    report = RetentionReport(dry_run)
    for adapter in session.scalars(select(Adapter).where(Adapter.keep_last.is_not(None))):
        rows = list(session.scalars(select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter.id, AdapterVersion.status == VersionStatus.ACTIVE)
            .order_by(AdapterVersion.number.desc())))
        assert adapter.keep_last is not None
        old = rows[adapter.keep_last:]
        held = channels.channels_pointing_at(session, [v.id for v in old])
        for version in old:
            if version.id in held:
                continue
            report.yanked.append(f"{adapter.full_name}@{version.number}")
            if not dry_run:
                version.status, version.yank_reason = VersionStatus.YANKED, (
                    f"retention: keep the last {adapter.keep_last} versions")
                version.yanked_at = utcnow()
                audit.record(session, actor, "version.yanked", "version",
                             f"{adapter.full_name}@{version.number}",
                             namespace=adapter.namespace.name,
                             payload={"reason": version.yank_reason})
    return report
