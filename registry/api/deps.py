"""Per-request context: settings, one unit of work, the blob store and the caller."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from registry.api.uploads import UploadGate
from registry.blobs import BlobStore
from registry.config import Settings
from registry.db import transaction
from registry.errors import PermissionDenied, Unauthenticated
from registry.models import utcnow
from registry.observability import Metrics, request_id_var
from registry.services import tokens
from registry.services.context import Actor
from registry.services.resolve import ResolveCache
from registry.services.tokens import Principal

log = logging.getLogger("lorareg.api")
LOCAL_PRINCIPAL = Principal(name="local", role="admin", namespace=None)


class TokenCache:
    """Authenticated tokens for a few seconds, so the hot path (resolve) does no database
    work per request. A revoked token is refused within ``ttl`` on every replica.

    Busy callers never wait for the database once a token is known: :meth:`get` serves an
    entry past half its ``ttl`` while one background thread checks the token again (and drops
    it if it is no longer valid), instead of letting every concurrent request re-check it at
    the moment it expires."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = utcnow) -> None:
        self.ttl, self._clock, self._wall = ttl, clock, wall
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._checking: set[str] = set()
        self._guard = threading.Lock()
        self._generation = 0

    def get(self, token: str, recheck: Callable[[str], Principal] | None = None
            ) -> Principal | None:
        """The cached principal while younger than ``ttl`` and not expired; past ``ttl / 2``
        also start a background ``recheck(token)`` (one per token at a time).

        Expiry is checked against the wall clock on every use: an expired token is dropped
        (None: the caller checks it against the database, which refuses it) the moment it
        expires, not when its cache entry does."""
        key = _token_key(token)
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0].expired(self._wall()):
            self._entries.pop(key, None)
            return None
        age = self._clock() - hit[1]
        if age >= self.ttl:
            return None
        if recheck is not None and age >= self.ttl / 2:
            with self._guard:
                start = key not in self._checking
                self._checking.add(key)
            if start:
                threading.Thread(target=self._recheck, args=(key, token, recheck),
                                 name="token-recheck", daemon=True).start()
        return hit[0]

    def _recheck(self, key: str, token: str, recheck: Callable[[str], Principal]) -> None:
        generation, started = self._generation, self._clock()
        try:
            principal = recheck(token)
        except Unauthenticated:
            self._entries.pop(key, None)
        except Exception:
            # e.g. the database is down: the entry expires and the next request checks it.
            log.warning("background token check failed", exc_info=True)
        else:
            with self._guard:  # not if clear() came meanwhile (a revocation, say)
                if generation == self._generation:
                    self._store(key, principal, started)
        finally:
            with self._guard:
                self._checking.discard(key)

    def put(self, token: str, principal: Principal, checked_at: float | None = None) -> None:
        """Cache ``principal``, checked against the database at ``checked_at`` (now)."""
        self._store(_token_key(token), principal,
                    self._clock() if checked_at is None else checked_at)

    def now(self) -> float:
        return self._clock()

    def _store(self, key: str, principal: Principal, checked_at: float) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (principal, checked_at)

    def clear(self) -> None:
        """Forget every token (e.g. one was revoked); checks running now are not kept."""
        with self._guard:
            self._generation += 1
            self._entries.clear()


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class State:
    """What the app holds for its lifetime (built by create_app)."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: BlobStore
    auth_required: bool
    resolve: ResolveCache = field(init=False)
    metrics: Metrics = field(init=False)
    tokens: TokenCache = field(default_factory=TokenCache)
    uploads: UploadGate = field(init=False)

    def __post_init__(self) -> None:
        self.resolve = ResolveCache(self.sessions)
        self.metrics = Metrics(self.sessions)
        self.uploads = UploadGate(self.settings.max_concurrent_uploads_per_token)

    def authenticate(self, token: str) -> Principal:
        """The token's principal, from the database (blocking: call it in a thread)."""
        with transaction(self.sessions) as session:
            return tokens.authenticate(session, token)


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
        """This transaction changes ``adapter:channel``: resolve drops its snapshot once the
        change is committed. (Dropped before, a load in between would read and keep the old
        state; a load still running at the commit is discarded by the cache's generations.)"""
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
    """The caller: from the token cache on the event loop, else the database in a thread."""
    request_id = request_id_var.get() or uuid.uuid4().hex
    request.state.request_id = request_id
    readonly = request.method in ("GET", "HEAD")
    token = bearer.credentials if bearer else request.cookies.get("lorareg_token")
    if token is None:
        if state.auth_required:
            raise Unauthenticated("this registry requires an API token (Authorization: Bearer)")
        return Ctx(state, LOCAL_PRINCIPAL, request_id, readonly)
    principal = state.tokens.get(token, state.authenticate)
    if principal is None:
        checked_at = state.tokens.now()
        principal = await anyio.to_thread.run_sync(state.authenticate, token)
        state.tokens.put(token, principal, checked_at)
    return Ctx(state, principal, request_id, readonly)


CtxDep = Annotated[Ctx, Depends(get_ctx)]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """An ``If-None-Match`` header names ``etag``: weak comparison (RFC 9110 8.8.3.2), lists
    and ``*`` included."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags
