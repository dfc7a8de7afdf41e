"""registry.client pulls over an in-memory transport: streamed bodies dropped mid-way (across
several writer batches) resume at exactly the bytes on disk; encoded bodies are decoded."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import errors, transfer
from registry.client import Client, body_chunks

KIB = 1024
MIB = 1024 * KIB


class Stream(httpx.SyncByteStream):
    """A streamed body in ``chunk``-byte pieces that breaks off after ``cut`` bytes."""

    def __init__(self, data: bytes, chunk: int = 64 * KIB, cut: int | None = None) -> None:
        self.data, self.chunk, self.cut = data, chunk, cut

    def __iter__(self) -> Iterator[bytes]:
        end = len(self.data) if self.cut is None else self.cut
        for start in range(0, end, self.chunk):
            yield self.data[start:min(start + self.chunk, end)]
        if self.cut is not None:
            raise httpx.ReadError("connection reset by peer")


class Server:
    """Version and blob GETs; blob answers are streamed, the first ``len(cuts)`` cut short."""

    def __init__(self, data: bytes, cuts: list[int], corrupt: bool = False) -> None:
        self.data, self.cuts, self.corrupt = data, list(cuts), corrupt
        self.digest = hashlib.sha256(data).hexdigest()
        self.ranges: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/versions/" in request.url.path:
            return httpx.Response(200, json=self.version())
        rng = request.headers.get("range")
        self.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        body = self.data[start:]
        if self.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])
        cut = self.cuts.pop(0) - start if self.cuts else None
        headers = {"content-length": str(len(body))}
        if rng:
            headers["content-range"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        return httpx.Response(206 if rng else 200, headers=headers, stream=Stream(body, cut=cut))

    def version(self) -> dict[str, Any]:
        files = [{"path": "w.bin", "digest": self.digest, "size": len(self.data)}]
        return {"ref": "acme/bot@1", "version": 1, "manifest_digest": "cd" * 32,
                "files": files, "status": "active", "total_size": len(self.data)}


def client(server: Server) -> Client:
    c = Client("http://registry.test", "lrg_x_y", transport=httpx.MockTransport(server))
    c.sleep = lambda _seconds: None
    return c


def test_pull_resumes_twice_at_exactly_the_bytes_written(tmp_path: Path) -> None:
    data = os.urandom(6 * MIB + 5)
    cuts = [transfer.BATCH_BYTES + 3 * 64 * KIB, 4 * MIB + 1]  # mid-batch, mid-chunk
    server = Server(data, cuts)
    heard: list[int] = []
    result = client(server).pull("acme/bot@1", tmp_path / "out", progress=heard.append)
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
    assert server.ranges == [None, f"bytes={cuts[0]}-", f"bytes={cuts[1]}-"]
    assert result["downloaded_bytes"] == len(data)
    assert sum(heard) == len(data)


def test_corrupt_stream_is_removed_after_the_writer_finished(tmp_path: Path) -> None:
    server = Server(os.urandom(3 * MIB), [], corrupt=True)
    with pytest.raises(errors.DigestMismatch):
        client(server).pull("acme/bot@1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*/w.bin"))


def test_body_chunks_decodes_an_encoded_body_and_passes_a_raw_one_through() -> None:
    data = b"lora " * 1000
    encoded = httpx.Response(200, headers={"content-encoding": "gzip"},
                             stream=Stream(gzip.compress(data), chunk=100))
    assert b"".join(body_chunks(encoded)) == data
    plain = httpx.Response(200, stream=Stream(data, chunk=100))
    chunks = list(body_chunks(plain))
    assert b"".join(chunks) == data and len(chunks) == 50  # as received, not re-chunked
    in_memory = httpx.Response(200, content=data)  # already read: iter_raw would refuse
    assert b"".join(body_chunks(in_memory)) == data
