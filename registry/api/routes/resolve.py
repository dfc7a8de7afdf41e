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


class AnswerCache:
    """Encoded answers per (channel revision, target, canary, base URL): the hot path then
    builds no model and serializes nothing. Presigned URLs expire, so with presigning on the
    key also carries the half-life window the URLs were made in."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._bodies: dict[tuple[object, ...], bytes] = {}

    def body(self, ctx: Ctx, request: Request, snap: Snapshot, target: Target, canary: bool
             ) -> bytes:
        settings = ctx.state.settings
        window = (int(time.monotonic() // max(settings.presign_ttl_seconds / 2, 1))
                  if settings.presign_downloads else 0)
        key = (id(ctx.state), snap.channel_id, snap.revision, target.ref, canary,
               str(request.base_url), window)
        body = self._bodies.get(key)
        if body is None:
            body = answer(ctx, request, snap, target, canary).model_dump_json().encode()
            if len(self._bodies) >= self.limit:
                self._bodies.clear()
            self._bodies[key] = body
        return body


ANSWERS = AnswerCache()


def answer(ctx: Ctx, request: Request, snap: Snapshot, target: Target, canary: bool
           ) -> s.ResolveOut:
    files = [s.ResolvedFile(path=p, digest=d, size=n, url=URLS.url(ctx, request, d))
             for p, d, n in target.files]
    return s.ResolveOut(adapter=snap.adapter, channel=snap.channel, ref=target.ref,
                        version=target.version, canary=canary,
                        manifest_digest=target.manifest_digest, files=files)


@router.get("/{ns}/{target}", response_model=s.ResolveOut)
async def resolve(ns: str, target: str, request: Request, ctx: CtxDep,
                  key: Annotated[str, Query(max_length=1024)] = "") -> Response:
    """The version to serve for ``key`` on ``{ns}/{name}:{channel}`` (sticky per key)."""
    adapter, channel = split_target(f"{ns}/{target}")
    ctx.require("read", ns)
    snap = await snapshot(ctx, adapter, channel)
    chosen, canary = choose(snap, key)
    return Response(ANSWERS.body(ctx, request, snap, chosen, canary),
                    media_type="application/json",
                    headers={"ETag": snap.etag, "Cache-Control": "no-cache"})


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
