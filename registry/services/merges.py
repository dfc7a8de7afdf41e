"""Merged artifacts: requesting a merge (idempotent by content) and recording its result.

A merge of version V onto base B is identified by ``(V, fingerprint(B))``: asking again returns
the existing artifact, or the job already queued or running for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import Conflict, IncompatibleBase, NotFound
from registry.manifest import FileEntry, normalize_files
from registry.models import AdapterVersion, BaseModel, Job, MergedArtifact, MergedFile
from registry.services import audit, bases, jobs
from registry.services import blobs as blob_service
from registry.services.context import Actor
from registry.statuses import CompatStatus, VersionStatus

MERGE = "merge"


@dataclass
class MergeRequest:
    artifact: MergedArtifact | None
    job: Job | None
    created: bool


def merge_base(session: Session, version: AdapterVersion, base_id: int | None) -> BaseModel:
    """The base to merge onto: the version's verified base, or a registered base with the
    same fingerprint. Refuses unregistered, unverified and different-weights bases."""
    if version.compat_status == CompatStatus.INCOMPATIBLE:
        raise IncompatibleBase(f"{_name(version)} does not fit its registered base")
    base = version.base_model
    if base is None:
        raise IncompatibleBase(
            f"{_name(version)} was pushed against {version.base_hub_id}@{version.base_revision}, "
            "which is not registered: register the base (lorareg base register) first"
        )
    if base_id is None or base_id == base.id:
        return base
    other = bases.get_base(session, base_id)
    if other.fingerprint != base.fingerprint:
        raise IncompatibleBase(
            f"base {base_id} has fingerprint {other.fingerprint}, but {_name(version)} was "
            f"verified against {base.fingerprint}",
            expected_fingerprint=base.fingerprint, actual_fingerprint=other.fingerprint,
        )
    return other


def find_artifact(session: Session, version: AdapterVersion, fingerprint: str
                  ) -> MergedArtifact | None:
    return session.scalar(select(MergedArtifact).where(
        MergedArtifact.version_id == version.id, MergedArtifact.base_fingerprint == fingerprint))


def latest_artifact(session: Session, version: AdapterVersion) -> MergedArtifact:
    artifact = session.scalar(
        select(MergedArtifact).where(MergedArtifact.version_id == version.id)
        .order_by(MergedArtifact.id.desc()).limit(1))
    if artifact is None:
        raise NotFound(f"{_name(version)} has no merged artifact; run `lorareg merge` first")
    return artifact


def artifacts(session: Session, version_id: int) -> list[MergedArtifact]:
    """Every merged artifact of a version, newest first."""
    return list(session.scalars(select(MergedArtifact).where(
        MergedArtifact.version_id == version_id).order_by(MergedArtifact.id.desc())))


def request_merge(
    session: Session, actor: Actor, version: AdapterVersion, base_id: int | None = None
) -> MergeRequest:
    """Return the existing artifact, the active job, or a newly queued merge job."""
    if version.status == VersionStatus.YANKED:
        raise Conflict(f"{_name(version)} is yanked ({version.yank_reason})")
    base = merge_base(session, version, base_id)
    artifact = find_artifact(session, version, base.fingerprint)
    if artifact is not None:
        return MergeRequest(artifact, None, False)
    job, created = jobs.enqueue(
        session, actor, MERGE, {"version_id": version.id, "base_id": base.id},
        target=_name(version), namespace=version.adapter.namespace.name,
        dedupe_key=f"merge:{version.id}:{base.fingerprint}",
    )
    return MergeRequest(None, job, created)


def record_artifact(
    session: Session, actor: Actor, *, version: AdapterVersion, base: BaseModel,
    files: Sequence[FileEntry], merged_fingerprint: str, job_id: int | None,
) -> MergedArtifact:
    """Record a finished merge; its files must already be stored and verified blobs."""
    entries = normalize_files(files)
    blob_service.require_stored(session, entries)
    existing = find_artifact(session, version, base.fingerprint)
    if existing is not None:
        return existing  # a retried job that finished twice: the first record stands
    artifact = MergedArtifact(
        version_id=version.id, base_model_id=base.id, base_fingerprint=base.fingerprint,
        merged_fingerprint=merged_fingerprint, total_size=sum(f.size for f in entries),
        job_id=job_id, files=[MergedFile(path=f.path, digest=f.digest, size=f.size)
                              for f in entries],
    )
    session.add(artifact)
    session.flush()
    blob_service.hold(session, version.adapter.namespace_id, [f.digest for f in entries])
    audit.record(session, actor, "merge.succeeded", "version", _name(version),
                 namespace=version.adapter.namespace.name,
                 payload={"artifact_id": artifact.id, "base_fingerprint": base.fingerprint,
                          "merged_fingerprint": merged_fingerprint, "job_id": job_id})
    return artifact


def _name(version: AdapterVersion) -> str:
    return f"{version.adapter.full_name}@{version.number}"
