"""registry.api.streams.AsyncBodyReader: a worker thread reading an ASGI body from the loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from registry.api import streams
from registry.api.streams import AsyncBodyReader

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
