"""The FastAPI application: routers, the problem+json handler, body limits, request ids."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import __version__, ui
from registry.api import docs, operation_ids, problems
from registry.api.fast_path import ResolveFastPath
from registry.api.routes import (
    adapters,
    admin,
    bases,
    blobs,
    channels,
    fleet,
    jobs,
    ops,
    pools,
    resolve,
)
from registry.blobs import BlobStore, open_blob_store
from registry.config import Settings, get_settings
from registry.db import make_engine, make_session_factory
from registry.errors import PayloadTooLarge, RegistryError
from registry.logs import configure_logging
from registry.web.context import State
from registry.web.observer import RequestObserver

log = logging.getLogger("lorareg.api")


class BodyLimit:
    """Refuse request bodies over the limit with 413, counting bytes as they arrive (a lying
    or absent Content-Length cannot get past it). Blob uploads have their own, larger limit.

    Past the limit the app's ``receive`` raises PayloadTooLarge. Whatever the app then answers
    is dropped for our 413: FastAPI turns any failure while it reads a JSON body into its own
    400, and a handler may answer with a page of its own."""

    def __init__(self, app: ASGIApp, json_limit: int, blob_limit: int) -> None:
        self.app, self.json_limit, self.blob_limit = app, json_limit, blob_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_blob = scope["path"].startswith("/api/v1/blobs/") and scope["method"] == "PUT"
        limit = self.blob_limit if is_blob else self.json_limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen, over, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to the body it could not read: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, answer)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    await problems.send(send, PayloadTooLarge(f"request body exceeds the limit of {limit} bytes"))


class UICompression:
    """gzip for the web UI (an adapter page with charts of 1,000 versions is about 0.5 MB of
    SVG, a tenth of that compressed); API responses and blob bytes pass untouched, so their
    ``Content-Length``, ``ETag`` and ``Range`` semantics stay exact."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=2048, compresslevel=5)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/ui"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load every channel for resolve at start-up (in the background: requests meanwhile read
    their channel from the database), stop the resolve poller at shutdown."""
    state: State = app.state.lorareg
    state.resolve.start()
    try:
        yield
    finally:
        state.resolve.close()


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None,
    store: BlobStore | None = None, host: str | None = None,
) -> FastAPI:
    """Build the app. ``host`` is the bind address, used to decide whether auth is needed."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.effective_database_url)
    store = store or open_blob_store(settings)
    state = State(settings=settings, sessions=make_session_factory(engine), store=store,
                  auth_required=settings.auth_required(host))
    app = FastAPI(title="lorareg", version=__version__,
                  description="Registry and lifecycle service for LoRA adapters",
                  docs_url=None, redoc_url=None,  # ours: registry/api/docs.py
                  generate_unique_id_function=operation_ids.operation_id,
                  lifespan=_lifespan)
    app.state.lorareg = state
    problems.install(app)
    # resolve first: it is the hot path, and routes are matched in order.
    for module in (resolve, admin, adapters, bases, blobs, channels, jobs, ops, pools, fleet):
        app.include_router(module.router)
    ui.install(app)  # /ui pages and /ui/static (registry/ui/__init__.py)
    docs.install(app)  # /docs, Swagger UI from the installed package, no CDN
    app.add_middleware(UICompression)
    app.add_middleware(RequestObserver, metrics=state.metrics)
    app.add_middleware(BodyLimit, json_limit=settings.max_json_body,
                       blob_limit=settings.max_blob_size)
    app.add_middleware(ResolveFastPath, state=state)  # outermost: before the rest
    return app


def factory() -> Any:
    """Entry point for ``uvicorn registry.api.app:factory --factory`` (settings from env).

    uvicorn does not tell the app its bind address, so this entry point assumes it is
    exposed and requires tokens; ``lorareg serve`` knows its address and may run without.
    """
    try:
        settings = get_settings()
        settings.check_production(EXPOSED)
    except RegistryError as err:
        # uvicorn would print a traceback of the factory; the operator needs one line.
        print(f"error: {err.detail}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    configure_logging(settings.log_format)
    return create_app(settings, host=EXPOSED)


EXPOSED = "0.0.0.0"  # noqa: S104 - a marker for "not loopback", nothing binds to it here
