"""Bridges between ASGI streams and the synchronous blob store, and HTTP Range parsing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import ClientDisconnect

from registry.blobs import CHUNK_SIZE, BlobInfo, BlobWriter
from registry.errors import BadRequest, RangeNotSatisfiable, RequestTimeout

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


class AsyncBodyReader:
    """``read(n)`` for a worker thread, pulling chunks of an ASGI request body from the loop.

    One ``read`` crosses to the event loop once and gathers there as many ASGI messages as it
    takes to have ``n`` bytes (a message is often 64 KiB or less; a crossing costs about as
    much as handling one). Memory stays at ``n`` bytes plus one received chunk: the body is
    never spooled whole.

    Its thread stays blocked while the loop waits for the client, so blob uploads no longer
    use it (see :func:`receive_blob`).
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


async def receive_blob(
    open_writer: Callable[[], BlobWriter], body: AsyncIterator[bytes], *,
    read_timeout: float, limiter: anyio.CapacityLimiter,
) -> BlobInfo:
    """Store an ASGI request body through a :class:`BlobWriter` without holding a thread while
    the client is slow: the loop receives about CHUNK_SIZE bytes (many messages), then one
    thread of ``limiter`` writes and hashes them. A client that sends nothing for
    ``read_timeout`` seconds gets RequestTimeout; on any failure, or the client going away,
    whatever was staged is discarded.

    One thread crossing per CHUNK_SIZE, as with :class:`AsyncBodyReader`; memory is one
    gathered chunk (plus one message) per upload.
    """
    writer = await anyio.to_thread.run_sync(open_writer, limiter=limiter)
    try:
        while chunk := await _gather(body, read_timeout):
            await anyio.to_thread.run_sync(writer.write, chunk, limiter=limiter)
        return await anyio.to_thread.run_sync(writer.commit, limiter=limiter)
    except BaseException:
        with anyio.CancelScope(shield=True):  # even when cancelled (a shutdown, say)
            await anyio.to_thread.run_sync(writer.abort, limiter=limiter)
        raise


async def _gather(body: AsyncIterator[bytes], read_timeout: float) -> bytes:
    """At least CHUNK_SIZE bytes of ``body`` (fewer at its end, b"" past it)."""
    parts: list[bytes] = []
    held = 0
    while held < CHUNK_SIZE:
        try:
            # A cancel scope per message costs about 8 us; uvicorn hands over ~250 KiB a
            # message, so under 0.05 CPU s per GiB (a moved deadline saved too little).
            with anyio.fail_after(read_timeout):
                part = await anext(body, b"")
        except TimeoutError:
            raise RequestTimeout(f"the upload sent nothing for {read_timeout:g} seconds") from None
        except ClientDisconnect:
            # Nobody is left to answer; an expected failure, not a 500 with a traceback.
            raise BadRequest("truncated upload: the client disconnected") from None
        if not part:
            break
        parts.append(part)
        held += len(part)
    return b"".join(parts)


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
        raise RangeNotSatisfiable(f"range {header.strip()!r} is not satisfiable: the blob has "
                                  f"{size} bytes", size=size)  # Content-Range: bytes */size
    return start, end
