"""The resolve fast path: ASGI middleware in front of the whole app that answers the common
``GET /api/v1/resolve/{ns}/{name}:{channel}`` from memory, byte for byte what the route
(registry/api/routes/resolve.py) would answer, and hands every other request to the app."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from registry.api.resolve_answers import KEY_MAX, PREFIX, ROUTE, encoded, not_modified
from registry.errors import NotFound, Unauthenticated
from registry.services.resolve import Snapshot, choose
from registry.web.context import RawHeaders, State, authorize, first_headers
from registry.web.observer import request_id


class ResolveFastPath:
    """ASGI middleware for ``GET /api/v1/resolve/{ns}/{name}:{ch}``.

    It answers the common request itself: a caller :func:`~registry.web.context.authorize`
    knows without the database (a cached token, or none needed) that may read the namespace,
    a fresh channel snapshot (every channel is held: registry.services.resolve_state) and a
    cached encoded answer. That skips routing, dependency injection and the other middleware,
    whose cost dominated resolve. Everything else (an unknown channel, a stale state, a bad
    name, a missing, unknown or refused token, a long key) goes on to
    the app, which answers the same request the ordinary way and fills the caches: refusals
    and errors are only ever written by the app. It keeps what the other middleware do for a
    request: the ``X-Request-ID`` header and the request metrics.
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
        headers = first_headers(scope)
        found = self._answer(scope, headers)
        if found is None:
            await self.app(scope, receive, send)
            return
        snap, body = found
        # The headers in the order the route's Response and the observer write them.
        out = [(b"etag", snap.etag.encode()), (b"cache-control", b"no-cache")]
        rid = (b"x-request-id", request_id(headers))
        if not_modified(self.state, _latin1(headers.get(b"if-none-match")), snap):
            await send({"type": "http.response.start", "status": 304, "headers": [*out, rid]})
            await send({"type": "http.response.body", "body": b""})
            self._not_modified.inc()
        else:
            out += [(b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"), rid]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": body})
            self._count.inc()
        self._latency.observe(time.perf_counter() - started)

    def _answer(self, scope: Scope, headers: RawHeaders) -> tuple[Snapshot, bytes] | None:
        ns, sep, target = scope["path"][len(PREFIX):].partition("/")
        adapter, colon, channel = f"{ns}/{target}".rpartition(":")
        if not (sep and ns and colon) or "/" in target:
            return None
        try:
            principal = authorize(self.state, headers)
        except Unauthenticated:
            return None  # the app writes the refusal
        if principal is None or not principal.can("read", ns):
            return None
        key = dict(parse_qsl(scope["query_string"].decode("latin-1"),
                             keep_blank_values=True)).get("key", "")
        if len(key) > KEY_MAX:
            return None
        try:
            snap = self.state.resolve.serve(adapter, channel)
            if snap is None:
                return None
            chosen, canary = choose(snap, key)
        except NotFound:
            return None  # the app writes the 404 (from memory too: no database)
        return snap, encoded(self.state, scope, snap, chosen, canary)


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
