"""Resolve routes: ``(adapter, channel, request key) -> version + file URLs``, from memory.

The common ``GET`` is answered before routing by the fast path (registry/api/fast_path.py);
both build their answers with registry/api/resolve_answers.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from registry.api import schemas as s
from registry.api.resolve_answers import (
    KEY_MAX,
    answer,
    encoded,
    not_modified,
    snapshot,
    split_target,
)
from registry.refs import check_channel, check_namespace, parse_adapter_name
from registry.services import channels
from registry.services.resolve import choose
from registry.web.context import CtxDep

router = APIRouter(prefix="/api/v1/resolve", tags=["resolve"])


@router.get("/{ns}/{target}", response_model=s.ResolveOut)  # 304: registry/api/problems.py
async def resolve(ns: str, target: str, request: Request, ctx: CtxDep,
                  key: Annotated[str, Query(max_length=KEY_MAX)] = "") -> Response:
    """The version to serve for ``key`` on ``{ns}/{name}:{channel}`` (sticky per key).

    The answer carries an ``ETag`` that changes whenever the channel does: a router polling
    with ``If-None-Match`` gets ``304`` while nothing changed. Answered from memory
    (:class:`~registry.api.fast_path.ResolveFastPath` serves the common case before routing)."""
    adapter, channel = split_target(f"{ns}/{target}")
    ctx.require("read", ns)
    snap = await snapshot(ctx, adapter, channel)
    chosen, canary = choose(snap, key)
    headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
    if not_modified(ctx.state, request.headers.get("if-none-match"), snap):
        return Response(status_code=304, headers=headers)
    return Response(encoded(ctx.state, request.scope, snap, chosen, canary),
                    media_type="application/json", headers=headers)


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
        out.append(answer(ctx.state, str(request.base_url), snap, chosen, canary))
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
        return [s.channel_out(c) for c in channels.in_namespace(session, ns, channel)]
