"""Bridges between ASGI streams and the synchronous blob store, and HTTP Range parsing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio.from_thread
from starlette.exceptions import HTTPException

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


class AsyncBodyReader:
    """``read(n)`` for a worker thread, pulling chunks of an ASGI request body from the loop.

    One ``read`` crosses to the event loop once and gathers there as many ASGI messages as it
    takes to have ``n`` bytes (a message is often 64 KiB or less; a crossing costs about as
    much as handling one). Memory stays at ``n`` bytes plus one received chunk: the body is
    never spooled whole.
    """

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self._buf = bytearray()
        self._done = False
        self.received = 0

    async def _fill(self, n: int) -> None:
        """On the loop: receive until ``n`` bytes are buffered (all of it if ``n < 0``)."""
        while not self._done and (n < 0 or len(self._buf) < n):
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                chunk = b""
            if not chunk:
                self._done = True
                break
            self.received += len(chunk)
            self._buf += chunk

    def read(self, n: int = -1) -> bytes:
        if not self._done and (n < 0 or len(self._buf) < n):
            anyio.from_thread.run(self._fill, n)
        size = len(self._buf) if n < 0 else min(n, len(self._buf))
        with memoryview(self._buf) as view:
            out = bytes(view[:size])  # one copy (a bytearray slice would make two)
        del self._buf[:size]
        return out


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> half-open ``(start, end)``; None for no/ignored range.

    Only single ranges are served; an unsatisfiable one is a 416.
    """
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # RFC 9110: an unparseable Range is ignored, the whole body is served
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    else:
        start, end = max(size - int(last), 0), size
    if start >= size or start >= end:
        raise HTTPException(
            416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end
