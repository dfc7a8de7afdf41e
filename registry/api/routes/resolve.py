"""Resolve: ``(adapter, channel, request key) -> version + file URLs``, from memory."""

from __future__ import annotations

import time
import uuid
from typing import Annotated
from urllib.parse import parse_qsl

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.api import schemas as s
from registry.api.deps import LOCAL_PRINCIPAL, Ctx, CtxDep, State, etag_matches
from registry.errors import BadRequest, NotFound
from registry.models import Adapter, Channel, Namespace
from registry.refs import check_channel, check_namespace, parse_adapter_name
from registry.services.resolve import Snapshot, Target, choose
from registry.services.tokens import Principal

router = APIRouter(prefix="/api/v1/resolve", tags=["resolve"])
PREFIX = "/api/v1/resolve/"
ROUTE = PREFIX + "{ns}/{target}"  # the route's name in metrics
KEY_MAX = 1024


class UrlCache:
    """File URLs: the API's own blob URL, or a presigned S3 URL reused for half its life."""

    def __init__(self) -> None:
        self._urls: dict[str, tuple[str, float]] = {}

    def url(self, state: State, base_url: str, digest: str) -> str:
        settings = state.settings
        if not settings.presign_downloads:
            return f"{base_url}api/v1/blobs/{digest}"
        hit = self._urls.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        url = state.store.presign_get(digest, settings.presign_ttl_seconds)
        if url is None:
            return f"{base_url}api/v1/blobs/{digest}"
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
    snap = cache.serve(adapter, channel)
    if snap is None:
        snap = await anyio.to_thread.run_sync(cache.get, adapter, channel)
    return snap


def origin(scope: Scope) -> tuple[object, ...]:
    """What a request's base URL is made of (scheme, Host, server, root path), as a cache key."""
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    server = scope.get("server")
    return (scope.get("scheme"), host, tuple(server) if server else None,
            scope.get("root_path", ""))


class AnswerCache:
    """Encoded answers per (channel revision, target, canary, origin): the hot path then
    builds no model and serializes nothing. Presigned URLs expire, so with presigning on the
    key also carries the half-life window the URLs were made in."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._bodies: dict[tuple[object, ...], bytes] = {}

    def body(self, state: State, scope: Scope, snap: Snapshot, target: Target, canary: bool
             ) -> bytes:
        settings = state.settings
        window = (int(time.monotonic() // max(settings.presign_ttl_seconds / 2, 1))
                  if settings.presign_downloads else 0)
        key = (id(state), snap.channel_id, snap.revision, target.ref, canary, origin(scope),
               window)
        body = self._bodies.get(key)
        if body is None:
            base_url = str(Request(scope).base_url)
            body = answer(state, base_url, snap, target, canary).model_dump_json().encode()
            if len(self._bodies) >= self.limit:
                self._bodies.clear()
            self._bodies[key] = body
        return body


ANSWERS = AnswerCache()


def answer(state: State, base_url: str, snap: Snapshot, target: Target, canary: bool
           ) -> s.ResolveOut:
    files = [s.ResolvedFile(path=p, digest=d, size=n, url=URLS.url(state, base_url, d))
             for p, d, n in target.files]
    return s.ResolveOut(adapter=snap.adapter, channel=snap.channel, ref=target.ref,
                        version=target.version, canary=canary,
                        manifest_digest=target.manifest_digest, served_name=target.served_name,
                        files=files)


def not_modified(state: State, if_none_match: str | None, snap: Snapshot) -> bool:
    """A poll whose ETag still holds. For one URL (one key) the answer depends only on the
    channel's revision, except that presigned URLs age: with presigning on, always answer."""
    return etag_matches(if_none_match, snap.etag) and not state.settings.presign_downloads


@router.get("/{ns}/{target}", response_model=s.ResolveOut)  # 304: registry/api/problems.py
async def resolve(ns: str, target: str, request: Request, ctx: CtxDep,
                  key: Annotated[str, Query(max_length=KEY_MAX)] = "") -> Response:
    """The version to serve for ``key`` on ``{ns}/{name}:{channel}`` (sticky per key).

    The answer carries an ``ETag`` that changes whenever the channel does: a router polling
    with ``If-None-Match`` gets ``304`` while nothing changed. Answered from memory
    (:class:`ResolveFastPath` serves the common case before routing)."""
    adapter, channel = split_target(f"{ns}/{target}")
    ctx.require("read", ns)
    snap = await snapshot(ctx, adapter, channel)
    chosen, canary = choose(snap, key)
    headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
    if not_modified(ctx.state, request.headers.get("if-none-match"), snap):
        return Response(status_code=304, headers=headers)
    return Response(ANSWERS.body(ctx.state, request.scope, snap, chosen, canary),
                    media_type="application/json", headers=headers)


class ResolveFastPath:
    """ASGI middleware in front of the whole app for ``GET /api/v1/resolve/{ns}/{name}:{ch}``.

    It answers the common request itself: a cached token (or no auth needed) that may read the
    namespace, a cached channel snapshot and a cached encoded answer. That skips routing,
    dependency injection and the other middleware, whose cost dominated resolve. Everything
    else (a miss, a stale snapshot, a bad name, a missing or unknown token, a cookie, a long
    key) goes on to the app, which answers the same request the ordinary way and fills the
    caches. It keeps what the other middleware do for a request: the ``X-Request-ID`` header
    and the request metrics.
    """

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state
        self._count = state.metrics.requests.labels("GET", ROUTE, "200")
        self._not_modified = state.metrics.requests.labels("GET", ROUTE, "304")
        self._latency = state.metrics.latency.labels("GET", ROUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "GET"
                or not scope["path"].startswith(PREFIX)):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:  # the first of repeated headers, as Starlette
            headers.setdefault(name, value)
        found = self._answer(scope, headers)
        if found is None:
            await self.app(scope, receive, send)
            return
        snap, body = found
        rid = headers.get(b"x-request-id", b"")[:64] or uuid.uuid4().hex.encode()
        out = [(b"etag", snap.etag.encode()), (b"cache-control", b"no-cache"),
               (b"x-request-id", rid)]
        if not_modified(self.state, _latin1(headers.get(b"if-none-match")), snap):
            await send({"type": "http.response.start", "status": 304, "headers": out})
            await send({"type": "http.response.body", "body": b""})
            self._not_modified.inc()
        else:
            out += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": body})
            self._count.inc()
        self._latency.observe(time.perf_counter() - started)

    def _answer(self, scope: Scope, headers: dict[bytes, bytes]
                ) -> tuple[Snapshot, bytes] | None:
        ns, sep, target = scope["path"][len(PREFIX):].partition("/")
        adapter, colon, channel = f"{ns}/{target}".rpartition(":")
        if not (sep and ns and colon) or "/" in target:
            return None
        principal = self._principal(headers)
        if principal is None or not principal.can("read", ns):
            return None
        key = dict(parse_qsl(scope["query_string"].decode("latin-1"),
                             keep_blank_values=True)).get("key", "")
        if len(key) > KEY_MAX:
            return None
        snap = self.state.resolve.serve(adapter, channel)
        if snap is None:
            return None
        try:
            chosen, canary = choose(snap, key)
        except NotFound:
            return None
        return snap, ANSWERS.body(self.state, scope, snap, chosen, canary)

    def _principal(self, headers: dict[bytes, bytes]) -> Principal | None:
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = value.strip()
        if scheme.lower() == "bearer" and token:
            return self.state.tokens.get(token, self.state.authenticate)
        if b"authorization" in headers or b"cookie" in headers or self.state.auth_required:
            return None
        return LOCAL_PRINCIPAL


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


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
        rows = session.scalars(
            select(Channel).join(Adapter, Channel.adapter_id == Adapter.id)
            .join(Namespace, Adapter.namespace_id == Namespace.id)
            .where(Namespace.name == ns, Channel.name == channel).order_by(Adapter.name))
        return [s.ChannelOut.of(c) for c in rows]
