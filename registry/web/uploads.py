"""Blob uploads in flight in this API process: the per-caller cap and their own threads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from registry.errors import TooManyRequests

#: Threads that write and hash received upload chunks. Uploads wait for the network on the
#: event loop and take one of these only to store a chunk that has arrived, so a few suffice;
#: they are not the default pool's, which every ``def`` route (``/healthz`` included) runs on,
#: so a slow blob store (an S3 write waits for its parts) cannot starve those routes.
UPLOAD_THREADS = 16
#: Seconds a refused upload is told to wait: about what a small file's upload takes.
RETRY_AFTER_SECONDS = 5


class UploadGate:
    """At most ``per_caller`` uploads in flight per caller (an API token, or a client address
    when auth is off), counted in this process only: with several API replicas a token may
    have ``per_caller`` on each. Used on the event loop only, so the counts need no lock."""

    def __init__(self, per_caller: int, threads: int = UPLOAD_THREADS) -> None:
        self.per_caller = per_caller
        self.threads = anyio.CapacityLimiter(threads)
        self._in_flight: Counter[str] = Counter()

    def in_flight(self, caller: str) -> int:
        return self._in_flight[caller]

    @contextmanager
    def slot(self, caller: str) -> Iterator[None]:
        """Hold one of ``caller``'s upload slots; TooManyRequests if none is free."""
        if self._in_flight[caller] >= self.per_caller:
            raise TooManyRequests(
                f"{self.per_caller} blob uploads of this caller are already in flight; "
                f"retry in {RETRY_AFTER_SECONDS} s",
                retry_after=RETRY_AFTER_SECONDS, limit=self.per_caller,
            )
        self._in_flight[caller] += 1
        try:
            yield
        finally:
            self._in_flight[caller] -= 1
            if not self._in_flight[caller]:
                del self._in_flight[caller]
