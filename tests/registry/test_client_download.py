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

from registry import errors
from registry.client import Client, body_chunks
from registry.client import _transfer as transfer
from tests.fixtures.wire import version_doc

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
        return version_doc(files, manifest_digest="cd" * 32)


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
    assert result.downloaded_bytes == len(data)
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


def test_resume_past_the_end_of_a_shorter_stored_blob_is_corrupt(tmp_path: Path) -> None:
    """A store (here: a presigned URL's) that holds fewer bytes than the resume offset
    answers 416; that is a corrupt blob, not a bad request."""
    data = os.urandom(4 * KIB)
    server = Server(data, [])
    partial = tmp_path / f".out.partial-{'cd' * 6}"
    partial.mkdir()
    (partial / "w.bin").write_bytes(data[:3000])

    def shorter_store(request: httpx.Request) -> httpx.Response:
        if request.headers.get("range"):
            return httpx.Response(416, headers={"content-range": "bytes */2048"})
        return server(request)

    shorter = Client("http://registry.test", transport=httpx.MockTransport(shorter_store))
    with pytest.raises(errors.DigestMismatch, match=r"^w\.bin: .*corrupt.*2048 bytes") as err:
        shorter.pull("acme/bot@1", tmp_path / "out")
    assert err.value.extra["stored_size"] == 2048 and err.value.exit_code == 4
    assert not (partial / "w.bin").exists()


def test_a_declared_size_other_than_the_manifest_s_is_corrupt_before_any_byte(
    tmp_path: Path,
) -> None:
    data = os.urandom(4 * KIB)
    server = Server(data, [])
    sent: list[str | None] = []

    def longer_store(request: httpx.Request) -> httpx.Response:
        if "/blobs/" not in request.url.path:
            return server(request)
        sent.append(request.headers.get("range"))
        return httpx.Response(200, stream=Stream(data + b"x"),
                              headers={"content-length": str(len(data) + 1)})

    with pytest.raises(errors.DigestMismatch, match="holds 4097 bytes, not 4096"):
        Client("http://registry.test", transport=httpx.MockTransport(longer_store)).pull(
            "acme/bot@1", tmp_path / "out")
    assert sent == [None]  # refused on the headers, not retried


def test_corrupt_blob_answer_is_not_retried_but_other_500s_are(tmp_path: Path) -> None:
    data = os.urandom(KIB)
    server = Server(data, [])
    answers: list[int] = []

    def failing(code: str) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if "/blobs/" not in request.url.path:
                return server(request)
            answers.append(500)
            return httpx.Response(500, json={"code": code, "title": "t", "status": 500,
                                             "detail": "d", "stored_size": 10})
        return httpx.MockTransport(handler)

    c = Client("http://registry.test", transport=failing("corrupt_blob"), retries=3)
    c.sleep = lambda _seconds: None
    with pytest.raises(errors.DigestMismatch, match=r"holds 10 bytes, not 1024"):
        c.pull("acme/bot@1", tmp_path / "a")
    assert answers == [500]
    answers.clear()
    c = Client("http://registry.test", transport=failing("internal"), retries=3)
    c.sleep = lambda _seconds: None
    with pytest.raises(errors.RegistryError) as other:
        c.pull("acme/bot@1", tmp_path / "b")
    assert answers == [500] * 4 and not isinstance(other.value, errors.DigestMismatch)
