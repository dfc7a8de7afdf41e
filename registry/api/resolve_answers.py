"""The answer to ``GET /api/v1/resolve/{ns}/{name}:{channel}``, one source for the route
(registry/api/routes/resolve.py) and the fast path in front of the app
(registry/api/fast_path.py): the same snapshot, the same encoded body, the same ETag rule.
The caches they fill are the app's (``State.answers``, ``State.presigned``)."""

from __future__ import annotations

import time

import anyio.to_thread
from fastapi import Request
from starlette.types import Scope

from registry.api import schemas as s
from registry.api.etags import etag_matches
from registry.errors import BadRequest
from registry.refs import check_channel, parse_adapter_name
from registry.services.resolve import Snapshot, Target
from registry.web.context import Ctx, State

PREFIX = "/api/v1/resolve/"
ROUTE = PREFIX + "{ns}/{target}"  # the route's name in metrics
KEY_MAX = 1024


def split_target(target: str) -> tuple[str, str]:
    """``ns/name:channel`` -> ``(ns/name, channel)``, both checked."""
    adapter, sep, channel = target.rpartition(":")
    if not sep:
        raise BadRequest("resolve needs ns/name:channel")
    parse_adapter_name(adapter)
    return adapter, check_channel(channel)


async def snapshot(ctx: Ctx, adapter: str, channel: str) -> Snapshot:
    """The channel's snapshot from memory, else read in a thread; NotFound from memory when
    the resolve state is fresh and holds no such channel (registry.services.resolve_state)."""
    cache = ctx.state.resolve
    snap = cache.serve(adapter, channel)
    if snap is None:
        snap = await anyio.to_thread.run_sync(cache.get, adapter, channel)
    return snap


def file_url(state: State, base_url: str, digest: str) -> str:
    """The API's own blob URL, or a presigned store URL (reused for half its life)."""
    settings, own = state.settings, f"{base_url}api/v1/blobs/{digest}"
    if not settings.presign_downloads:
        return own
    url = state.presigned.get(digest)
    if url is None:
        url = state.store.presign_get(digest, settings.presign_ttl_seconds)
        if url is None:
            return own
        state.presigned.put(digest, url, settings.presign_ttl_seconds)
    return url


def answer(state: State, base_url: str, snap: Snapshot, target: Target, canary: bool
           ) -> s.ResolveOut:
    files = [s.ResolvedFile(path=p, digest=d, size=n, url=file_url(state, base_url, d))
             for p, d, n in target.files]
    return s.ResolveOut(adapter=snap.adapter, channel=snap.channel, ref=target.ref,
                        version=target.version, canary=canary,
                        manifest_digest=target.manifest_digest, served_name=target.served_name,
                        files=files)


def origin(scope: Scope) -> tuple[object, ...]:
    """What a request's base URL is made of (scheme, Host, server, root path), as a cache key."""
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    server = scope.get("server")
    return (scope.get("scheme"), host, tuple(server) if server else None,
            scope.get("root_path", ""))


def encoded(state: State, scope: Scope, snap: Snapshot, target: Target, canary: bool
            ) -> bytes:
    """The answer's JSON body, cached per (channel revision, name, canary, origin): the hot
    path then builds no model and serializes nothing. A channel's revision fixes both of its
    targets, and its name is in the key because a rename keeps the revision. Presigned URLs
    expire, so with presigning on the key also carries the half-life window they were made in."""
    settings = state.settings
    window = (int(time.monotonic() // max(settings.presign_ttl_seconds / 2, 1))
              if settings.presign_downloads else 0)
    key = (snap.channel_id, snap.revision, snap.adapter, canary, origin(scope), window)
    body = state.answers.get(key)
    if body is None:
        base_url = str(Request(scope).base_url)
        body = state.answers.put(
            key, answer(state, base_url, snap, target, canary).model_dump_json().encode())
    return body


def not_modified(state: State, if_none_match: str | None, snap: Snapshot) -> bool:
    """A poll whose ETag still holds. For one URL (one key) the answer depends only on the
    channel's revision, except that presigned URLs age: with presigning on, always answer."""
    return etag_matches(if_none_match, snap.etag) and not state.settings.presign_downloads
