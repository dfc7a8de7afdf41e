"""Base models: registration by fingerprint, and the compatibility checks at push.

A base is registered with its tensor manifest (name, dtype, shape, sha256 per tensor) and the
fingerprint over it. The server recomputes the fingerprint from the manifest, so a record can
never carry a digest that does not describe its own manifest. A registered base is immutable:
registering the same weights for the same hub id and revision again returns the existing base,
other weights under the same ``hub_id@revision`` are a conflict naming both fingerprints (never
an overwrite, so no registration can change what another namespace's versions were checked
against). When a base is registered, versions pushed earlier against its ``hub_id@revision``
(``unverified``) are checked at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.compat import check_against_base, ensure_compatible_shapes
from registry.errors import BadRequest, Conflict, InvalidAdapter, NotFound
from registry.fingerprint import TensorEntry, fingerprint_digest, pack_manifest, unpack_manifest
from registry.lora_layout import AdapterLayout
from registry.manifest import FileEntry, normalize_files
from registry.models import AdapterVersion, BaseModel
from registry.refs import check_base
from registry.safetensors_io import FORMAT_LIMITS
from registry.services import audit
from registry.services import blobs as blob_service
from registry.services.context import Actor
from registry.services.inspect import inspect_adapter
from registry.services.pagination import Page, paginate_by_id
from registry.statuses import CompatStatus

MAX_TENSORS = 200_000


@dataclass
class BaseRegistration:
    hub_id: str
    revision: str
    fingerprint: str
    tensors: list[TensorEntry]
    files: list[FileEntry] = field(default_factory=list)


def find_base(session: Session, hub_id: str, revision: str) -> BaseModel | None:
    """The registered base for ``hub_id@revision`` (unique), or None."""
    return session.scalar(select(BaseModel).where(BaseModel.hub_id == hub_id,
                                                  BaseModel.revision == revision))


def get_base(session: Session, base_id: int) -> BaseModel:
    base = session.get(BaseModel, base_id)
    if base is None:
        raise NotFound(f"base {base_id} not found")
    return base


def list_bases(session: Session, *, hub_id: str | None = None, revision: str | None = None,
               cursor: str | None = None, limit: int = 50) -> Page[BaseModel]:
    """Registered bases, newest first; ``hub_id`` and ``revision`` match exactly."""
    stmt = select(BaseModel)
    if hub_id:
        stmt = stmt.where(BaseModel.hub_id == hub_id)
    if revision:
        stmt = stmt.where(BaseModel.revision == revision)
    return paginate_by_id(session, stmt, BaseModel.id, cursor=cursor, limit=limit)


def manifest_shapes(base: BaseModel) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.dtype, tuple(t.shape)) for t in unpack_manifest(base.manifest)}


def register_base(
    session: Session, actor: Actor, reg: BaseRegistration, store: BlobStore | None = None
) -> tuple[BaseModel, bool]:
    """Record a base (or return the identical existing one); returns ``(base, created)``."""
    check_base(reg.hub_id, reg.revision)
    if not reg.tensors or len(reg.tensors) > MAX_TENSORS:
        raise BadRequest(f"a base needs 1..{MAX_TENSORS} tensors in its manifest")
    computed = fingerprint_digest(reg.tensors)
    if computed != reg.fingerprint:
        raise BadRequest(
            f"fingerprint {reg.fingerprint} does not match its manifest (computed {computed})",
            computed_fingerprint=computed,
        )
    files = normalize_files(reg.files) if reg.files else []
    blob_service.require_stored(session, files)
    existing = find_base(session, reg.hub_id, reg.revision)
    if existing is not None:
        return _reregistered(session, actor, existing, reg, files), False
    base = BaseModel(
        hub_id=reg.hub_id, revision=reg.revision, fingerprint=reg.fingerprint,
        manifest=pack_manifest(reg.tensors), tensor_count=len(reg.tensors),
        total_bytes=sum(t.nbytes for t in reg.tensors),
        files=_file_rows(files),
        created_by=actor.name,
    )
    try:
        with session.begin_nested():  # a concurrent registration of the same hub_id@revision
            session.add(base)
    except IntegrityError:
        raced = find_base(session, reg.hub_id, reg.revision)
        if raced is None:
            raise
        return _reregistered(session, actor, raced, reg, files), False
    audit.record(session, actor, "base.registered", "base", f"{reg.hub_id}@{reg.revision}",
                 payload={"fingerprint": reg.fingerprint, "tensors": len(reg.tensors),
                          "uploaded": bool(files)})
    if store is not None:
        verify_pending(session, actor, base, store)
    return base, True


def _reregistered(session: Session, actor: Actor, existing: BaseModel, reg: BaseRegistration,
                  files: Sequence[FileEntry]) -> BaseModel:
    """The same ``hub_id@revision`` again: the same weights (adding their files if none were
    uploaded yet), or a conflict."""
    if existing.fingerprint != reg.fingerprint:
        raise Conflict(
            f"base {reg.hub_id}@{reg.revision} is registered with fingerprint "
            f"{existing.fingerprint}; registered bases are immutable, so other weights "
            f"({reg.fingerprint}) need another revision",
            registered_fingerprint=existing.fingerprint, offered_fingerprint=reg.fingerprint)
    if files and not existing.files:
        existing.files = _file_rows(files)
        audit.record(session, actor, "base.uploaded", "base",
                     f"{reg.hub_id}@{reg.revision}", payload={"files": len(files)})
    return existing


def _file_rows(files: Sequence[FileEntry]) -> list[dict[str, object]]:
    return [{"path": f.path, "digest": f.digest, "size": f.size} for f in files]


def verify_pending(
    session: Session, actor: Actor, base: BaseModel, store: BlobStore
) -> list[AdapterVersion]:
    """Check the ``unverified`` versions pushed against this base's hub id and revision:
    each becomes ``verified`` (linked to the base) or ``incompatible``."""
    stmt = select(AdapterVersion).where(
        AdapterVersion.base_hub_id == base.hub_id,
        AdapterVersion.base_revision == base.revision,
        AdapterVersion.compat_status == CompatStatus.UNVERIFIED,
    )
    shapes = manifest_shapes(base)
    checked = list(session.scalars(stmt))
    for version in checked:
        _verify_one(session, actor, version, base, shapes, store)
    session.flush()
    return checked


def _verify_one(
    session: Session, actor: Actor, version: AdapterVersion, base: BaseModel,
    shapes: dict[str, tuple[str, tuple[int, ...]]], store: BlobStore,
) -> None:
    files = [FileEntry(f.path, f.digest, f.size) for f in version.files]
    try:
        # Accepted at push under the caps of that day: a cap lowered since must not turn
        # a header-size refusal into an 'incompatible' verdict.
        layout = inspect_adapter(store, files, FORMAT_LIMITS).layout
        mismatches = check_against_base(layout, shapes)
    except InvalidAdapter as exc:
        mismatches = [exc.detail]
    version.compat_status = CompatStatus.INCOMPATIBLE if mismatches else CompatStatus.VERIFIED
    if not mismatches:
        version.base_model = base
    name = f"{version.adapter.full_name}@{version.number}"
    audit.record(session, actor, f"version.{version.compat_status}", "version", name,
                 namespace=version.adapter.namespace.name,
                 payload={"base_id": base.id, "mismatches": mismatches[:10]})


def check_adapter_fits(
    session: Session, hub_id: str, revision: str, layout: AdapterLayout
) -> tuple[BaseModel | None, CompatStatus]:
    """Check an adapter against a registered base's tensor manifest.

    Returns ``(base, "verified")`` when it fits, ``(None, "unverified")`` when no base is
    registered for ``hub_id@revision``; raises IncompatibleBase listing the mismatches.
    """
    base = find_base(session, hub_id, revision)
    if base is None:
        return None, CompatStatus.UNVERIFIED
    ensure_compatible_shapes(layout, manifest_shapes(base))
    return base, CompatStatus.VERIFIED


def tensors_of(base: BaseModel) -> Sequence[TensorEntry]:
    return unpack_manifest(base.manifest)
