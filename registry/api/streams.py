"""Bridges between ASGI streams and the synchronous blob store, and HTTP Range parsing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio.from_thread
from starlette.exceptions import HTTPException

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class AsyncBodyReader:
    """``read(n)`` for a worker thread, pulling chunks of an ASGI request body from the loop.

    Memory stays at one received chunk plus the store's part buffer: the body is never
    spooled whole.
    """

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self._buf = bytearray()
        self._done = False
        self.received = 0

    async def _next(self) -> bytes:
        try:
            return await self._body.__anext__()
        except StopAsyncIteration:
            return b""

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            chunk = anyio.from_thread.run(self._next)
            if not chunk:
                self._done = True
                break
            self.received += len(chunk)
            self._buf += chunk
        size = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:size])
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
