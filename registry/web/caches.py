"""What one API process remembers to answer resolve from memory: encoded answers and
presigned download URLs. :class:`~registry.web.context.State` owns one of each; how answers
and URLs are made is ``registry.api.resolve_answers``'s business, not theirs.

Both are bounded the simple way: past ``limit`` entries they start again empty."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class AnswerCache:
    """Encoded resolve answers by key (channel revision, target, canary, origin, ...): the hot
    path then builds no model and serializes nothing."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._bodies: dict[Hashable, bytes] = {}

    def get(self, key: Hashable) -> bytes | None:
        return self._bodies.get(key)

    def put(self, key: Hashable, body: bytes) -> bytes:
        if len(self._bodies) >= self.limit:
            self._bodies.clear()
        self._bodies[key] = body
        return body


class PresignCache:
    """Presigned download URLs by blob digest, reused for the first half of their life (a
    client given one still has at least half its ``ttl`` to use it)."""

    def __init__(self, limit: int = 10_000, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.limit, self._clock = limit, clock
        self._urls: dict[str, tuple[str, float]] = {}

    def get(self, digest: str) -> str | None:
        hit = self._urls.get(digest)
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def put(self, digest: str, url: str, ttl_seconds: float) -> None:
        if len(self._urls) >= self.limit:
            self._urls.clear()
        self._urls[digest] = (url, self._clock() + ttl_seconds / 2)
