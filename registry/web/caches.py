"""What one API process remembers to answer resolve from memory: encoded answers and
presigned download URLs. :class:`~registry.web.context.State` owns one of each; how answers
and URLs are made is ``registry.api.resolve_answers``'s business, not theirs.

Both are bounded: encoded answers least recently used first (a router spreads its requests
over thousands of channels, a hot set that must survive the cold ones), presigned URLs the
simple way (past ``limit`` entries they start again empty)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class AnswerCache:
    """Encoded resolve answers by key (channel revision, name, canary, origin, ...): the hot
    path then builds no model and serializes nothing. At most ``limit`` answers (about 0.7 KB
    each with two files: 14 MB at the default), the least recently used dropped first; a
    dropped answer is encoded again from the resolve state, without the database."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> bytes:
        self._bodies[key] = body
        self._bodies.move_to_end(key)
        if len(self._bodies) > self.limit:
            self._bodies.popitem(last=False)
        return body

    def __len__(self) -> int:
        return len(self._bodies)


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
