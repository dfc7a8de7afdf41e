"""Blob bookkeeping: a ``blobs`` row exists only for a blob fully stored and verified."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry.blobs import BlobInfo
from registry.db import insert_ignore
from registry.errors import BadRequest, NotFound
from registry.manifest import FileEntry, check_digest
from registry.models import Blob, utcnow


def missing(session: Session, digests: Iterable[str]) -> list[str]:
    """The digests (validated, de-duplicated, in input order) the registry does not hold."""
    wanted = list(dict.fromkeys(check_digest(d) for d in digests))
    have: set[str] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        have.update(session.scalars(select(Blob.digest).where(Blob.digest.in_(chunk))))
    if have:
        # Told "you need not upload", a client is about to reference these: keep them
        # inside the garbage collector's grace window.
        session.execute(update(Blob).where(Blob.digest.in_(list(have)))
                        .values(last_seen_at=utcnow()))
    return [d for d in wanted if d not in have]


def record(session: Session, info: BlobInfo) -> Blob:
    """Record a blob the store has just written and verified (idempotent)."""
    now = utcnow()
    insert_ignore(session, Blob, {"digest": info.digest, "size": info.size,
                                  "created_at": now, "last_seen_at": now})
    return session.get_one(Blob, info.digest)


def get(session: Session, digest: str) -> Blob:
    blob = session.get(Blob, check_digest(digest))
    if blob is None:
        raise NotFound(f"blob {digest} not found")
    return blob


def require_stored(session: Session, files: Sequence[FileEntry]) -> None:
    """Every file must be a stored, verified blob of the declared size."""
    digests = {f.digest for f in files}
    # FOR SHARE: garbage collection cannot delete these rows until this push commits.
    rows = session.execute(select(Blob.digest, Blob.size).where(Blob.digest.in_(digests))
                           .with_for_update(read=True))
    sizes: dict[str, int] = {row.digest: row.size for row in rows}
    absent = sorted(d for d in digests if d not in sizes)
    if absent:
        raise BadRequest(
            f"{len(absent)} file blob(s) are not uploaded yet: {', '.join(absent[:5])}",
            missing=absent,
        )
    for f in files:
        if sizes[f.digest] != f.size:
            raise BadRequest(
                f"file {f.path!r} declares size {f.size} but blob {f.digest} has {sizes[f.digest]}"
            )
