"""Base models: register (fingerprint + tensor manifest), list, get, manifest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field

from registry.api import problems
from registry.api import schemas as s
from registry.errors import BadRequest
from registry.fingerprint import TensorEntry
from registry.manifest import FileEntry
from registry.services import bases
from registry.services.bases import BaseRegistration
from registry.web.context import CtxDep

router = APIRouter(prefix="/api/v1/bases", tags=["bases"])
Limit = Annotated[int, Query(ge=1, le=500)]
TensorRow = s.TensorRow


class BaseIn(s.In):
    hub_id: str = Field(max_length=256)
    revision: str = Field(max_length=128)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensors: list[TensorRow] = Field(min_length=1, max_length=bases.MAX_TENSORS,
                                     description="[name, dtype, shape, sha256] per tensor")
    files: list[s.FileIn] = Field(default_factory=list, max_length=10000)


@router.post("", response_model=s.BaseOut, status_code=201,
             responses={200: {"model": s.BaseOut}, **problems.responses(503)})
def register(body: BaseIn, ctx: CtxDep, response: Response) -> s.BaseOut:
    """Register base weights by fingerprint; the same weights again return the same base,
    other weights under a registered ``hub_id@revision`` are a 409. Bases are shared by every
    namespace: registering one needs ``register_base`` (curator or admin) on a token not
    scoped to one namespace."""
    ctx.require_global("register_base")
    reg = BaseRegistration(
        hub_id=body.hub_id, revision=body.revision, fingerprint=body.fingerprint,
        tensors=[_entry(row) for row in body.tensors],
        files=[FileEntry(f.path, f.digest, f.size) for f in body.files],
    )
    with ctx.tx() as session:
        base, created = bases.register_base(session, ctx.actor, reg, ctx.store)
        out = s.base_out(base)
    if not created:
        response.status_code = 200
    return out


def _entry(row: TensorRow) -> TensorEntry:
    name, dtype, shape, sha = row
    try:
        return TensorEntry(name, dtype, tuple(shape), sha)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"malformed tensor entry for {name!r}: {exc}") from exc


@router.get("", response_model=s.Page[s.BaseOut])
def list_bases(ctx: CtxDep, hub_id: str | None = None, revision: str | None = None,
               cursor: str | None = None, limit: Limit = 50) -> s.Page[s.BaseOut]:
    ctx.require("read", ctx.principal.namespace)
    with ctx.tx() as session:
        page = bases.list_bases(session, hub_id=hub_id, revision=revision, cursor=cursor,
                                limit=limit)
        return s.Page[s.BaseOut](items=[s.base_out(b) for b in page.items],
                                next_cursor=page.next_cursor)


@router.get("/{base_id}", response_model=s.BaseOut)
def get_base(base_id: int, ctx: CtxDep) -> s.BaseOut:
    ctx.require("read", ctx.principal.namespace)
    with ctx.tx() as session:
        return s.base_out(bases.get_base(session, base_id))


@router.get("/{base_id}/manifest", response_model=s.ManifestOut)
def manifest(base_id: int, ctx: CtxDep) -> s.ManifestOut:
    """The per-tensor manifest, to name the first differing tensor on a mismatch."""
    ctx.require("read", ctx.principal.namespace)
    with ctx.tx() as session:
        base = bases.get_base(session, base_id)
        rows = [(t.name, t.dtype, list(t.shape), t.sha256) for t in bases.tensors_of(base)]
        return s.ManifestOut(fingerprint=base.fingerprint, tensors=rows)
