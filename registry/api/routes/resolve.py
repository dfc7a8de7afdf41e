"""Resolve: ``(adapter, channel, request key) -> version + file URLs``, from memory."""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from registry.api import schemas as s
from registry.api.deps import Ctx, CtxDep
from registry.errors import BadRequest
from registry.models import Adapter, Channel, Namespace
from registry.refs import check_channel, check_namespace, parse_adapter_name
from registry.services.resolve import Snapshot, Target, choose

router = APIRouter(prefix="/api/v1/resolve", tags=["resolve"])


class UrlCache:
    """File URLs: the API's own blob URL, or a presigned S3 URL reused for half its life."""

    def __init__(self) -> None:
        self._urls: dict[str, tuple[str, float]] = {}

    def url(self, ctx: Ctx, request: Request, digest: str) -> str:
        settings = ctx.state.settings
        if not settings.presign_downloads:
            return f"{request.base_url}api/v1/blobs/{digest}"
        hit = self._urls.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        url = ctx.store.presign_get(digest, settings.presign_ttl_seconds)
        if url is None:
            return f"{request.base_url}api/v1/blobs/{digest}"
        self._urls[digest] = (url, now + settings.presign_ttl_seconds / 2)
        return url


URLS = UrlCache()


def split_target(target: str) -> tuple[str, str]:
    adapter, sep, channel = target.rpartition(":")
    if not sep:
        raise BadRequest("resolve needs ns/name:channel")
    parse_adapter_name(adapter)
    return adapter, check_channel(channel)


async def snapshot(ctx: Ctx, adapter: str, channel: str) -> Snapshot:
    cache = ctx.state.resolve
    snap = cache.fresh(adapter, channel)
    if snap is None:
        snap = await anyio.to_thread.run_sync(cache.get, adapter, channel)
    return snap


def answer(ctx: Ctx, request: Request, snap: Snapshot, target: Target, canary: bool
           ) -> s.ResolveOut:
    files = [s.ResolvedFile(path=p, digest=d, size=n, url=URLS.url(ctx, request, d))
             for p, d, n in target.files]
    return s.ResolveOut(adapter=snap.adapter, channel=snap.channel, ref=target.ref,
                        version=target.version, canary=canary,
                        manifest_digest=target.manifest_digest, files=files)


@router.get("/{ns}/{target}", response_model=s.ResolveOut)
async def resolve(ns: str, target: str, request: Request, response: Response, ctx: CtxDep,
                  key: Annotated[str, Query(max_length=1024)] = "") -> s.ResolveOut:
    """The version to serve for ``key`` on ``{ns}/{name}:{channel}`` (sticky per key)."""
    adapter, channel = split_target(f"{ns}/{target}")
    ctx.require("read", ns)
    snap = await snapshot(ctx, adapter, channel)
    chosen, canary = choose(snap, key)
    response.headers["ETag"] = snap.etag
    response.headers["Cache-Control"] = "no-cache"
    return answer(ctx, request, snap, chosen, canary)


@router.post("", response_model=list[s.ResolveOut])
async def resolve_batch(body: s.ResolveBatchIn, request: Request, ctx: CtxDep
                        ) -> list[s.ResolveOut]:
    """Resolve many adapters or keys on one channel in one call."""
    check_channel(body.channel)
    out = []
    for item in body.items:
        ns, _ = parse_adapter_name(item.adapter)
        ctx.require("read", ns)
        snap = await snapshot(ctx, item.adapter, body.channel)
        chosen, canary = choose(snap, item.key)
        out.append(answer(ctx, request, snap, chosen, canary))
    return out


@router.get("/{ns}", response_model=list[s.ChannelOut])
def resolve_namespace(ns: str, ctx: CtxDep,
                      channel: Annotated[str, Query(max_length=32)] = "prod"
                      ) -> list[s.ChannelOut]:
    """Every adapter's current versions on one channel, so a serving host can preload."""
    check_namespace(ns)
    check_channel(channel)
    ctx.require("read", ns)
    with ctx.tx() as session:
        rows = session.scalars(
            select(Channel).join(Adapter, Channel.adapter_id == Adapter.id)
            .join(Namespace, Adapter.namespace_id == Namespace.id)
            .where(Namespace.name == ns, Channel.name == channel).order_by(Adapter.name))
        return [s.ChannelOut.of(c) for c in rows]
