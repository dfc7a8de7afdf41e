"""Job handlers. Each is idempotent: running it again after a crash gives the same result."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from merge_worker.bases import BaseSpec, locate_base
from merge_worker.merge import MergeCancelled, merge_adapter
from merge_worker.worker import Handler, JobContext, JobStopped
from registry.errors import NotFound
from registry.fingerprint import fingerprint_dir
from registry.manifest import FileEntry
from registry.models import AdapterVersion
from registry.services import bases, merges
from registry.services import blobs as blob_service
from registry.services.context import Actor


def merge_handler(ctx: JobContext) -> dict[str, Any]:
    """Merge a version into its base, upload the result, record the merged artifact.

    The base fingerprint is checked before a single tensor is read for the merge; the
    artifact row is written only after every output file is stored and verified.
    """
    version_id, base_id = int(ctx.payload["version_id"]), int(ctx.payload["base_id"])
    with ctx.session() as session:
        version = session.get(AdapterVersion, version_id)
        if version is None:
            raise NotFound(f"version id {version_id} no longer exists")
        base = bases.get_base(session, base_id)
        done = merges.find_artifact(session, version, base.fingerprint)
        if done is not None:
            return {"artifact_id": done.id, "merged_fingerprint": done.merged_fingerprint,
                    "reused": True}
        spec = BaseSpec(base.hub_id, base.revision, base.fingerprint, bases.tensors_of(base),
                        [FileEntry(**f) for f in base.files])
        files = [FileEntry(f.path, f.digest, f.size) for f in version.files]
    ctx.progress(0.0, "locating base weights")
    base_dir = locate_base(ctx.settings, ctx.store, spec)
    work = ctx.settings.effective_worker_cache / "jobs" / f"{ctx.job_id}-{uuid.uuid4().hex[:8]}"
    try:
        return _merge_and_store(ctx, base_dir, files, work, version_id, base_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge_and_store(ctx: JobContext, base_dir: Path, files: list[FileEntry], work: Path,
                     version_id: int, base_id: int) -> dict[str, Any]:
    adapter_dir = work / "adapter"
    for f in files:
        target = adapter_dir / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        ctx.store.download_to(f.digest, target)
    out = work / "merged"

    def report(fraction: float, message: str) -> None:
        ctx.progress(0.05 + 0.85 * fraction, message)

    try:
        merge_adapter(base_dir, adapter_dir, out, progress=report, should_cancel=ctx.should_stop)
    except MergeCancelled as exc:
        raise JobStopped from exc
    ctx.progress(0.9, "fingerprinting and uploading the merged model")
    merged_fp = fingerprint_dir(out).digest
    stored = [_upload(ctx, out, path) for path in sorted(out.rglob("*")) if path.is_file()]
    with ctx.session() as session:
        for entry in stored:
            blob_service.record(session, ctx.store.stat(entry.digest))
        version = session.get_one(AdapterVersion, version_id)
        base = bases.get_base(session, base_id)
        artifact = merges.record_artifact(
            session, Actor(f"worker:{ctx.worker.worker_id}"), version=version, base=base,
            files=stored, merged_fingerprint=merged_fp, job_id=ctx.job_id)
        return {"artifact_id": artifact.id, "merged_fingerprint": merged_fp,
                "files": len(stored), "total_size": artifact.total_size}


def _upload(ctx: JobContext, root: Path, path: Path) -> FileEntry:
    digest = _sha256(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        ctx.store.put(fh, digest=digest, size=size)
    return FileEntry(path.relative_to(root).as_posix(), digest, size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


HANDLERS: dict[str, Handler] = {merges.MERGE: merge_handler}
