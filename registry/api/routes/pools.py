"""Serving pools: create, change, bind channels, pin versions, desired sets, checks.

Permissions: reading a pool needs ``read`` in its namespace; creating or changing it needs
``admin`` there; binding a channel or pinning a version needs ``promote`` in the pool's
namespace and in the channel's or version's (a pool serves only its own namespace, which the
service enforces).
"""

from __future__ import annotations

from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.orm import Session

from registry.api import pool_schemas as ps
from registry.api import problems
from registry.api import schemas as s
from registry.api.etags import etag_matches
from registry.api.routes.adapters import ref_of
from registry.models import ServingPool, utcnow
from registry.refs import check_namespace
from registry.services import desired_sets, pools, versions
from registry.web.context import Ctx, CtxDep

router = APIRouter(prefix="/api/v1/pools", tags=["pools"])
POOL = "/{ns}/{pool}"
Number = Annotated[int, Path(ge=1, le=2**31 - 1)]
WAIT_MAX = 60  # seconds a long poll of the desired set may be held
POLL_SECONDS = 0.5  # how often a held poll looks at the set's revision


def _detail(session: Session, pool: ServingPool) -> ps.PoolDetailOut:
    return ps.pool_detail_out(pool, desired_sets.bound_channels(session, pool),
                                   desired_sets.pinned(session, pool))


def _pool(session: Session, ctx: Ctx, ns: str, pool: str, permission: str) -> ServingPool:
    check_namespace(ns)
    ctx.require(permission, ns)
    return pools.get_pool(session, f"{ns}/{pool}")


@router.get("", response_model=s.Page[ps.PoolOut])
def list_pools(ctx: CtxDep, namespace: Annotated[str | None, Query(max_length=64)] = None
               ) -> s.Page[ps.PoolOut]:
    """The pools of every namespace the caller may read."""
    if namespace is not None:
        check_namespace(namespace)
    with ctx.tx() as session:
        rows = pools.list_pools(session, ctx.principal.scope, namespace)
        return s.Page[ps.PoolOut](items=[ps.pool_out(p) for p in rows], next_cursor=None)


@router.post("/{ns}", response_model=ps.PoolDetailOut, status_code=201,
             responses=problems.responses(409))
def create_pool(ns: str, body: ps.PoolIn, ctx: CtxDep) -> ps.PoolDetailOut:
    """Create a pool (admins of the namespace): its engines' base and settings."""
    check_namespace(ns)
    ctx.require("admin", ns)
    settings = pools.PoolSettings(**body.model_dump(exclude={"name"}))
    with ctx.tx() as session:
        pool = pools.create_pool(session, ctx.actor, f"{ns}/{body.name}", settings)
        return _detail(session, pool)


@router.get(POOL, response_model=ps.PoolDetailOut)
def get_pool(ns: str, pool: str, ctx: CtxDep) -> ps.PoolDetailOut:
    with ctx.tx() as session:
        return _detail(session, _pool(session, ctx, ns, pool, "read"))


@router.patch(POOL, response_model=ps.PoolDetailOut)
def update_pool(ns: str, pool: str, body: ps.PoolPatch, ctx: CtxDep) -> ps.PoolDetailOut:
    """Change settings (admins); refused if the desired set would no longer pass."""
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "admin")
        return _detail(session, pools.update_pool(session, ctx.actor, row, body.changes()))


@router.put(POOL + "/channels/{adapter_ns}/{name}/{channel}", response_model=ps.PoolDetailOut)
def bind(ns: str, pool: str, adapter_ns: str, name: str, channel: str, ctx: CtxDep
         ) -> ps.PoolDetailOut:
    """Serve a channel: every version it serves joins the desired set (checked first)."""
    ctx.require("promote", adapter_ns)
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "promote")
        pools.bind(session, ctx.actor, ctx.store, row, f"{adapter_ns}/{name}:{channel}")
        return _detail(session, row)


@router.delete(POOL + "/channels/{adapter_ns}/{name}/{channel}",
               response_model=ps.PoolDetailOut)
def unbind(ns: str, pool: str, adapter_ns: str, name: str, channel: str, ctx: CtxDep
           ) -> ps.PoolDetailOut:
    ctx.require("promote", adapter_ns)
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "promote")
        pools.unbind(session, ctx.actor, row, f"{adapter_ns}/{name}:{channel}")
        return _detail(session, row)


@router.put(POOL + "/pins/{adapter_ns}/{name}/{number}", response_model=ps.PoolDetailOut)
def pin(ns: str, pool: str, adapter_ns: str, name: str, number: Number, ctx: CtxDep
        ) -> ps.PoolDetailOut:
    """Keep a version in the desired set whatever the channels serve (checked first)."""
    ctx.require("promote", adapter_ns)
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "promote")
        pools.pin(session, ctx.actor, ctx.store, row, f"{adapter_ns}/{name}@{number}")
        return _detail(session, row)


@router.delete(POOL + "/pins/{adapter_ns}/{name}/{number}", response_model=ps.PoolDetailOut)
def unpin(ns: str, pool: str, adapter_ns: str, name: str, number: Number, ctx: CtxDep
          ) -> ps.PoolDetailOut:
    ctx.require("promote", adapter_ns)
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "promote")
        pools.unpin(session, ctx.actor, row, f"{adapter_ns}/{name}@{number}")
        return _detail(session, row)


@router.get(POOL + "/desired", response_model=ps.DesiredOut)  # 304: registry/api/problems.py
async def desired(ns: str, pool: str, ctx: CtxDep, request: Request,
                  wait: Annotated[float, Query(ge=0, le=WAIT_MAX)] = 0) -> Response:
    """The desired set: each version with its files, served name, why it is there, since when
    and its verdict; the versions still draining and when their drain ends; the set's own
    problems; and the versions that left it, with when.

    The ``ETag`` is the set's ``revision``: with ``If-None-Match`` the answer is ``304`` while
    nothing changed, and ``wait=N`` (seconds, at most 60) holds that ``304`` back until the set
    changes or N seconds pass (a long poll: checked every half second on the event loop, with
    no thread or database connection held in between)."""
    held = request.headers.get("if-none-match")
    deadline = anyio.current_time() + wait
    while held is not None:
        revision = await anyio.to_thread.run_sync(_revision, ctx, ns, pool)
        if not etag_matches(held, _etag(revision)):
            break
        left = deadline - anyio.current_time()
        if left <= 0 or await request.is_disconnected():
            return Response(status_code=304, headers={"ETag": _etag(revision)})
        await anyio.sleep(min(POLL_SECONDS, left))
    answer = await anyio.to_thread.run_sync(_desired, ctx, ns, pool)
    return Response(answer.model_dump_json(), media_type="application/json",
                    headers={"ETag": _etag(answer.revision)})


def _etag(revision: str) -> str:
    return f'W/"{revision}"'


def _revision(ctx: Ctx, ns: str, pool: str) -> str:
    with ctx.tx() as session:
        return desired_sets.revision(session, _pool(session, ctx, ns, pool, "read"), utcnow())


def _desired(ctx: Ctx, ns: str, pool: str) -> ps.DesiredOut:
    with ctx.tx() as session:
        row, now = _pool(session, ctx, ns, pool, "read"), utcnow()
        return ps.DesiredOut(
            pool=row.full_name, revision=desired_sets.revision(session, row, now),
            base_fingerprint=row.base.fingerprint, model_id=row.model_id,
            served_model_name=row.served_model_name, drain_seconds=row.drain_seconds,
            members=[ps.member_out(e, files=True)
                     for e in desired_sets.desired(session, ctx.store, row)],
            draining=[ps.member_out(e, files=True, drain=row.drain_seconds)
                      for e in desired_sets.draining(session, row, now)],
            set_problems=desired_sets.set_problems(session, row),
            left=[ps.member_out(e) for e in desired_sets.left(session, row)])


@router.get(POOL + "/check/{adapter_ns}/{name}/{sel}", response_model=ps.PoolCheckOut)
def check(ns: str, pool: str, adapter_ns: str, name: str, sel: str, ctx: CtxDep
          ) -> ps.PoolCheckOut:
    """Could the pool take this version (``sel``: a number or ``latest``)? The checks of a
    promotion or a pin, as if it were pinned; nothing changes."""
    ctx.require("read", adapter_ns)
    with ctx.tx() as session:
        row = _pool(session, ctx, ns, pool, "read")
        version = versions.get_version(session, ref_of(adapter_ns, name, sel))
        found = desired_sets.check_version(session, ctx.store, row, version)
        return ps.PoolCheckOut(ref=desired_sets.ref(version), pool=row.full_name,
                               served_name=desired_sets.served(version), ok=not found,
                               problems=found)
