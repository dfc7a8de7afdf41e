"""registry.api.streams: AsyncBodyReader (a worker thread reading an ASGI body from the loop)
and receive_blob (the loop receiving an upload, threads only storing what arrived)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from starlette.requests import ClientDisconnect

from registry.api import streams
from registry.api.streams import AsyncBodyReader, receive_blob
from registry.blobs import CHUNK_SIZE, BlobInfo, LocalBlobStore
from registry.errors import BadRequest, RequestTimeout

KIB = 1024


def test_read_gathers_many_messages_per_crossing_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(100 * 10 * KIB + 7)
    crossings = 0
    real_run = anyio.from_thread.run

    def counting_run(func: Any, *args: Any) -> Any:
        nonlocal crossings
        crossings += 1
        return real_run(func, *args)

    monkeypatch.setattr(streams.anyio.from_thread, "run", counting_run)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 10 * KIB):
            yield data[start:start + 10 * KIB]
        yield b""  # Starlette ends a request stream with an empty chunk

    def read_all(reader: AsyncBodyReader) -> list[bytes]:
        parts = []
        while part := reader.read(256 * KIB):
            parts.append(part)
        return parts

    async def main() -> list[bytes]:
        reader = AsyncBodyReader(body())
        parts = await anyio.to_thread.run_sync(read_all, reader)
        assert reader.received == len(data)
        return parts

    parts = anyio.run(main)
    assert b"".join(parts) == data
    assert [len(p) for p in parts[:-1]] == [256 * KIB] * (len(parts) - 1)
    assert crossings == len(parts)  # one per read (the last found the end); none after it


def test_read_without_a_size_returns_everything() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async def main() -> tuple[bytes, bytes]:
        reader = AsyncBodyReader(body())
        first = await anyio.to_thread.run_sync(reader.read)
        return first, await anyio.to_thread.run_sync(reader.read, 10)

    assert anyio.run(main) == (b"abcdef", b"")


# --- receive_blob: the upload route's loop -----------------------------------------------------


class RecordingWriter:
    """A BlobWriter that keeps what it was given (the store's own behaviour is tested in
    test_blobs.py; here only what the loop hands over, and when)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.committed = self.aborted = False

    def write(self, chunk: bytes, /) -> None:
        self.chunks.append(chunk)

    def commit(self) -> BlobInfo:
        self.committed = True
        data = b"".join(self.chunks)
        return BlobInfo(hashlib.sha256(data).hexdigest(), len(data), datetime.now(UTC))

    def abort(self) -> None:
        self.aborted = True


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
    yield b""


def test_receive_blob_hands_over_about_a_chunk_per_thread_crossing() -> None:
    data = os.urandom(3 * CHUNK_SIZE + 7)
    writer = RecordingWriter()

    async def main() -> BlobInfo:
        return await receive_blob(lambda: writer, pieces(data, 64 * KIB), read_timeout=30,
                                  limiter=anyio.CapacityLimiter(1))

    info = anyio.run(main)
    assert (info.size, writer.committed, writer.aborted) == (len(data), True, False)
    assert [len(c) for c in writer.chunks] == [CHUNK_SIZE] * 3 + [7]  # 16 messages each
    assert b"".join(writer.chunks) == data


def test_receive_blob_holds_no_thread_while_the_client_is_silent(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    limiter = anyio.CapacityLimiter(1)  # one thread for both uploads
    resume = anyio.Event()
    slow_data, quick_data = os.urandom(100 * KIB), os.urandom(3 * CHUNK_SIZE)

    async def slow_body() -> AsyncIterator[bytes]:
        yield slow_data[:50 * KIB]
        await resume.wait()  # the client goes quiet
        yield slow_data[50 * KIB:]

    async def upload(data: bytes, body: AsyncIterator[bytes]) -> BlobInfo:
        digest = hashlib.sha256(data).hexdigest()
        return await receive_blob(lambda: store.writer(digest=digest, size=len(data)), body,
                                  read_timeout=30, limiter=limiter)

    async def main() -> tuple[int, BlobInfo]:
        with anyio.fail_after(30):  # a hang guard only
            async with anyio.create_task_group() as tg:
                tg.start_soon(upload, slow_data, slow_body())
                await anyio.wait_all_tasks_blocked()
                borrowed = limiter.borrowed_tokens  # the slow one waits on the loop
                quick = await upload(quick_data, pieces(quick_data, 64 * KIB))
                resume.set()
        return int(borrowed), quick

    borrowed, quick = anyio.run(main)
    assert borrowed == 0
    assert quick.size == len(quick_data)
    assert store.exists(hashlib.sha256(slow_data).hexdigest())


def test_a_silent_client_times_out_and_its_upload_is_discarded(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = os.urandom(2 * CHUNK_SIZE)

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:CHUNK_SIZE + 1]  # one chunk reaches the store first
        await anyio.sleep_forever()
        yield b""

    async def main() -> None:
        await receive_blob(
            lambda: store.writer(digest=hashlib.sha256(data).hexdigest(), size=len(data)),
            stalls(), read_timeout=0.05, limiter=anyio.CapacityLimiter(1))

    with pytest.raises(RequestTimeout, match=r"sent nothing for 0\.05 seconds"):
        anyio.run(main)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # the staged chunk is gone


@pytest.mark.parametrize("ending", ["disconnect", "cancelled"])
def test_a_client_that_goes_away_leaves_nothing(ending: str) -> None:
    writer = RecordingWriter()

    async def goes_away() -> AsyncIterator[bytes]:
        yield b"half"
        if ending == "disconnect":
            raise ClientDisconnect
        await anyio.sleep_forever()
        yield b""

    raised: list[BaseException] = []
    cancelled: list[type[BaseException]] = []

    async def upload() -> None:
        cancelled.append(anyio.get_cancelled_exc_class())
        try:
            await receive_blob(lambda: writer, goes_away(), read_timeout=30,
                               limiter=anyio.CapacityLimiter(1))
        except BaseException as exc:  # kept for the assertions below
            raised.append(exc)
            raise

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()  # the server shutting down, say

    if ending == "disconnect":
        with pytest.raises(BaseExceptionGroup):
            anyio.run(main)
        assert isinstance(raised[0], BadRequest)
        assert "the client disconnected" in str(raised[0])
    else:
        anyio.run(main)
        assert isinstance(raised[0], cancelled[0])
    assert writer.aborted and not writer.committed
