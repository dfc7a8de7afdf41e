"""Blob bookkeeping: a ``blobs`` row exists only for a blob fully stored and verified.

Content-addressed dedup across tenants is a side channel: a "you need not upload this" answer
tells the asker that somebody holds those exact bytes. So every function that answers about
existence takes a ``namespace`` view: ``None`` sees every stored blob (global dedup, or a caller
not scoped to one namespace); a namespace sees only the blobs it *holds* (``blob_holders``: it
uploaded the bytes, or one of its versions or merged artifacts refers to them). A namespace
that does not hold a blob is told it is missing and uploads it, which proves possession; only
then may it reference or read it. See ``LORAREG_BLOB_DEDUP`` and docs/security.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import String, cast, select, update
from sqlalchemy.orm import Session

from registry.blobs import BlobInfo
from registry.db import insert_ignore
from registry.errors import BadRequest, NotFound
from registry.manifest import FileEntry, check_digest
from registry.models import BaseModel, Blob, BlobHolder, Namespace, utcnow
from registry.services import adapters
from registry.services.context import SYSTEM, Actor


def _held(session: Session, digests: Sequence[str], namespace: str | None) -> set[str]:
    """Which of ``digests`` the view may use: every stored blob, or the namespace's held ones
    (reads only)."""
    have: set[str] = set()
    for i in range(0, len(digests), 500):
        chunk = digests[i : i + 500]
        if namespace is None:
            stmt = select(Blob.digest).where(Blob.digest.in_(chunk))
        else:
            stmt = (select(BlobHolder.digest)
                    .join(Namespace, Namespace.id == BlobHolder.namespace_id)
                    .where(Namespace.name == namespace, BlobHolder.digest.in_(chunk)))
        have.update(session.scalars(stmt))
    return have


def missing(session: Session, digests: Iterable[str], namespace: str | None = None
            ) -> list[str]:
    """The digests (validated, de-duplicated, in input order) the view does not hold."""
    wanted = list(dict.fromkeys(check_digest(d) for d in digests))
    have = _held(session, wanted, namespace)
    if have:
        # Told "you need not upload", a client is about to reference these: keep them
        # inside the garbage collector's grace window.
        session.execute(update(Blob).where(Blob.digest.in_(list(have)))
                        .values(last_seen_at=utcnow()))
    return [d for d in wanted if d not in have]


def record(session: Session, info: BlobInfo, namespace: str | None = None,
           actor: Actor | None = None) -> Blob:
    """Record a blob the store has just written and verified (idempotent); ``namespace``
    (created if new, by ``actor``) uploaded it, so it holds it from now on."""
    now = utcnow()
    insert_ignore(session, Blob, {"digest": info.digest, "size": info.size,
                                  "created_at": now, "last_seen_at": now})
    if namespace is not None:
        space = adapters.ensure_namespace(session, actor or SYSTEM, namespace)
        hold(session, space.id, [info.digest])
    return session.get_one(Blob, info.digest)


def hold(session: Session, namespace_id: int, digests: Iterable[str]) -> None:
    """``namespace_id`` may use these stored blobs (idempotent)."""
    now = utcnow()
    for digest in dict.fromkeys(digests):
        insert_ignore(session, BlobHolder, {"namespace_id": namespace_id, "digest": digest,
                                            "created_at": now})


def readable(session: Session, digest: str, namespace: str | None) -> Blob:
    """The blob, if the view may read it (held, or a file of a shared base); NotFound
    otherwise, exactly as for a blob that does not exist."""
    blob = get(session, digest)
    if namespace is None or _held(session, [digest], namespace):
        return blob
    base_file = select(BaseModel.id).where(cast(BaseModel.files, String).contains(digest))
    if session.scalar(base_file.limit(1)) is not None:
        return blob
    raise NotFound(f"blob {digest} not found")


def get(session: Session, digest: str) -> Blob:
    blob = session.get(Blob, check_digest(digest))
    if blob is None:
        raise NotFound(f"blob {digest} not found")
    return blob


def require_stored(session: Session, files: Sequence[FileEntry], namespace: str | None = None
                   ) -> None:
    """Every file must be a stored, verified blob of the declared size, held by ``namespace``
    when given (a blob it does not hold reads as not uploaded, as in :func:`missing`)."""
    digests = {f.digest for f in files}
    # FOR SHARE: garbage collection cannot delete these rows until this push commits.
    rows = session.execute(select(Blob.digest, Blob.size).where(Blob.digest.in_(digests))
                           .with_for_update(read=True))
    sizes: dict[str, int] = {row.digest: row.size for row in rows}
    if namespace is not None:
        held = _held(session, sorted(sizes), namespace)
        sizes = {d: n for d, n in sizes.items() if d in held}
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
