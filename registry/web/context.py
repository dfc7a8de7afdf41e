"""The app's state and the request's context, shared by API routes and UI pages: settings,
one unit of work, the blob store, the caller, and the process's caches.

Who a request is, is decided once, by :func:`authorize`: ``get_ctx`` (every API route and
UI page) and the resolve fast path (``registry.api.fast_path``) both call it, so they cannot
disagree about bearer tokens, the UI's cookie or whether a token is needed at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import cookie_parser
from starlette.types import Scope

from registry.blobs import BlobStore
from registry.config import Settings
from registry.db import transaction
from registry.errors import PermissionDenied, Unauthenticated
from registry.logs import request_id_var
from registry.prometheus import Metrics, ResolveCollector
from registry.services import tokens
from registry.services.context import Actor
from registry.services.resolve_state import ResolveState, feed_sessions
from registry.services.tokens import Principal
from registry.web.caches import AnswerCache, PresignCache
from registry.web.token_cache import TokenCache
from registry.web.uploads import UploadGate

LOCAL_PRINCIPAL = Principal(name="local", role="admin", namespace=None)
#: The UI's sign-in cookie (registry.ui.session sets it); a request may present its token so.
TOKEN_COOKIE = "lorareg_token"  # noqa: S105 - a cookie name, not a secret
#: A request's headers: lower-case names, the first value of a repeated header (as
#: Starlette's ``request.headers.get``: a gateway appending its own token lends the caller
#: nothing).
RawHeaders = Mapping[bytes, bytes]


@dataclass
class State:
    """What the app holds for its lifetime (built by create_app), caches included."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: BlobStore
    auth_required: bool
    resolve: ResolveState = field(init=False)  # every channel, fresh by the change feed
    metrics: Metrics = field(init=False)
    tokens: TokenCache = field(default_factory=TokenCache)
    uploads: UploadGate = field(init=False)
    answers: AnswerCache = field(default_factory=AnswerCache)  # encoded resolve answers
    presigned: PresignCache = field(default_factory=PresignCache)  # presigned blob URLs

    def __post_init__(self) -> None:
        self.resolve = ResolveState(self.sessions, feed=feed_sessions(self.sessions),
                                    staleness=self.settings.resolve_staleness_seconds)
        self.metrics = Metrics(self.sessions)
        self.metrics.registry.register(ResolveCollector(self.resolve))
        self.uploads = UploadGate(self.settings.max_concurrent_uploads_per_token)

    def authenticate(self, token: str) -> Principal:
        """The token's principal, from the database (blocking: call it in a thread)."""
        with transaction(self.sessions) as session:
            return tokens.authenticate(session, token)


def first_headers(scope: Scope) -> dict[bytes, bytes]:
    """An ASGI request's headers as :data:`RawHeaders`."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    return headers


def presented_token(headers: RawHeaders) -> str | None:
    """The API token a request presents: ``Authorization: Bearer <token>``, else the UI's
    sign-in cookie; None if neither (another scheme counts as none)."""
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    token = value.strip()
    if token and scheme.lower() == "bearer":
        return token
    cookie = headers.get(b"cookie")
    if cookie is None:
        return None
    return cookie_parser(cookie.decode("latin-1")).get(TOKEN_COOKIE) or None


def authorize(state: State, headers: RawHeaders) -> Principal | None:
    """Who the request is, as far as this process knows without the database: the local
    admin when it presents no token and none is required, else its token's cached principal.
    None: the token is not cached (or expired) and only :func:`authenticate` can tell.
    Raises Unauthenticated when no token is presented and one is required."""
    token = presented_token(headers)
    if token is None:
        if state.auth_required:
            raise Unauthenticated("this registry requires an API token (Authorization: Bearer)")
        return LOCAL_PRINCIPAL
    return state.tokens.get(token, state.authenticate)


async def authenticate(state: State, headers: RawHeaders) -> Principal:
    """:func:`authorize`, asking the database (in a thread) when memory cannot tell."""
    principal = authorize(state, headers)
    if principal is None:
        token = presented_token(headers)
        assert token is not None  # authorize answers None only for a presented token
        checked_at = state.tokens.now()
        principal = await anyio.to_thread.run_sync(state.authenticate, token)
        state.tokens.put(token, principal, checked_at)
    return principal


@dataclass
class Ctx:
    state: State
    principal: Principal
    request_id: str
    readonly: bool = False  # a GET or HEAD: its transactions only read
    _after_commit: list[Callable[[], object]] = field(default_factory=list, repr=False)

    @property
    def store(self) -> BlobStore:
        return self.state.store

    @property
    def blob_view(self) -> str | None:
        """Whose blobs this caller sees and may reuse (registry.services.blobs): all (None),
        or only its namespace's when dedup is per namespace and the token is scoped."""
        if self.state.settings.effective_blob_dedup == "global":
            return None
        return self.principal.namespace

    @property
    def actor(self) -> Actor:
        return Actor(self.principal.name, self.request_id)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """The request's one transaction: committed before the response is built."""
        try:
            with transaction(self.state.sessions, readonly=self.readonly) as session:
                yield session
            for callback in self._after_commit:
                callback()
        finally:
            self._after_commit.clear()

    def changed_channel(self, adapter: str, channel: str) -> None:
        """This transaction changes ``adapter:channel``: once it is committed, resolve reads
        the channel again before answering from memory. (Marked before, a read in between
        would see and keep the old state: see ``ResolveState.invalidate``.)"""
        self._after_commit.append(lambda: self.state.resolve.invalidate(adapter, channel))

    def require(self, permission: str, namespace: str | None = None) -> None:
        """Refuse unless the caller holds ``permission`` in ``namespace``."""
        if self.principal.can(permission, namespace):
            return
        where = f" in namespace {namespace!r}" if namespace else ""
        raise PermissionDenied(
            f"{self.principal.name} (role {self.principal.role}) may not {permission}{where}"
        )

    def require_upload(self) -> None:
        """Refuse unless the caller may upload blobs: it may push somewhere (``write``) or
        register bases (their weights are blobs too)."""
        if not self.principal.can("register_base"):
            self.require("write", self.principal.namespace)

    def require_global(self, permission: str) -> None:
        """Refuse unless the caller holds ``permission`` for every namespace."""
        if self.principal.namespace is not None:
            raise PermissionDenied(f"{permission} needs a token not scoped to one namespace")
        self.require(permission)


async def get_state(request: Request) -> State:
    # async: FastAPI would run a plain def in the thread pool, a round trip per request.
    state: State = request.app.state.lorareg
    return state


# The API token as ``Authorization: Bearer lrg_...``; declared so that /openapi.json names the
# scheme on every operation that identifies its caller. auto_error=False: a missing header is
# ours to answer (problem+json 401, or the web UI's cookie, or no auth in embedded mode).
BEARER = HTTPBearer(auto_error=False, scheme_name="ApiToken",
                    description="An API token `lrg_<id>_<secret>` (lorareg token create)")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


async def get_ctx(request: Request, state: Annotated[State, Depends(get_state)],
                  bearer: Bearer) -> Ctx:
    """The caller: from the token cache on the event loop, else the database in a thread.

    ``bearer`` is there for /openapi.json only: the token is read by :func:`authorize`, the
    reader the resolve fast path uses too."""
    request_id = request_id_var.get() or uuid.uuid4().hex
    request.state.request_id = request_id
    principal = await authenticate(state, first_headers(request.scope))
    return Ctx(state, principal, request_id, readonly=request.method in ("GET", "HEAD"))


CtxDep = Annotated[Ctx, Depends(get_ctx)]
