"""Authenticated API tokens, kept in memory for a few seconds per process."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from registry.errors import Unauthenticated
from registry.models import utcnow
from registry.services.tokens import Principal

log = logging.getLogger("lorareg.api")


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
