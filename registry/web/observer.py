"""ASGI middleware around the whole app (API and UI): the request id in and out, and the
request metrics by route. What the id is for: ``registry.logs``; the collectors:
``registry.prometheus``."""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.logs import request_id_var
from registry.prometheus import Metrics
from registry.web.context import RawHeaders, first_headers


class RequestObserver:
    """ASGI middleware: request id in, request id out, and request metrics by route."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(first_headers(scope))
        token = request_id_var.set(rid.decode("latin-1"))
        started, status = time.perf_counter(), [500]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            request_id_var.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(
                time.perf_counter() - started)


def request_id(headers: RawHeaders) -> bytes:
    """The request's id: its ``X-Request-ID`` (the first one, at most 64 bytes, echoed byte
    for byte), else a new one. The resolve fast path answers with the same."""
    return headers.get(b"x-request-id", b"")[:64] or uuid.uuid4().hex.encode()
