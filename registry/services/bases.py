"""Base models: registration by fingerprint, and the compatibility check used at push."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.compat import ensure_compatible_shapes
from registry.fingerprint import unpack_manifest
from registry.lora_layout import AdapterLayout
from registry.models import BaseModel


def find_base(session: Session, hub_id: str, revision: str) -> BaseModel | None:
    """The registered base for ``hub_id@revision`` (the newest registration if several)."""
    stmt = (
        select(BaseModel)
        .where(BaseModel.hub_id == hub_id, BaseModel.revision == revision)
        .order_by(BaseModel.id.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def manifest_shapes(base: BaseModel) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.dtype, tuple(t.shape)) for t in unpack_manifest(base.manifest)}


def check_adapter_fits(
    session: Session, hub_id: str, revision: str, layout: AdapterLayout
) -> tuple[BaseModel | None, str]:
    """Check an adapter against a registered base's tensor manifest.

    Returns ``(base, "verified")`` when it fits, ``(None, "unverified")`` when no base is
    registered for ``hub_id@revision``; raises IncompatibleBase listing the mismatches.
    """
    base = find_base(session, hub_id, revision)
    if base is None:
        return None, "unverified"
    ensure_compatible_shapes(layout, manifest_shapes(base))
    return base, "verified"
