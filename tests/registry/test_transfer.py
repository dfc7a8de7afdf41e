"""registry.client._transfer: the download sink (hash, write and fsync overlapped with receiving) in
isolation: what an interrupted stream or a failing disk leaves behind, and progress."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client import _transfer as transfer
from registry.client._transfer import Reporter, Sink

KIB = 1024
MIB = 1024 * KIB


class Interrupted(Exception):
    """Stands in for a dropped connection (httpx.ReadError in the client)."""


def chunked(data: bytes, size: int, fail_after: int | None = None) -> Iterator[bytes]:
    """``data`` in ``size``-byte chunks; raises Interrupted after ``fail_after`` bytes."""
    for start in range(0, len(data), size):
        if fail_after is not None and start >= fail_after:
            raise Interrupted
        yield data[start:start + size]
    if fail_after is not None:
        raise Interrupted


@pytest.mark.parametrize("chunk", [1, 7 * KIB, 64 * KIB, 3 * MIB])
def test_write_from_appends_hashes_and_reports_every_byte(tmp_path: Path, chunk: int) -> None:
    data = os.urandom(2 * MIB + 333) if chunk > 1 else os.urandom(5 * KIB)
    target = tmp_path / "f"
    target.write_bytes(b"head")
    heard: list[int] = []
    sink = Sink(target, Reporter(heard.append))
    sink.write_from(chunked(data, chunk))
    assert target.read_bytes() == b"head" + data
    assert sink.size == len(data) + 4 and sink.fetched == len(data)
    assert sink.hasher.hexdigest() == hashlib.sha256(b"head" + data).hexdigest()
    assert sum(heard) == len(data) + 4
    if chunk == 64 * KIB:  # reported per batch, not per chunk
        assert len(heard) <= 1 + len(data) // transfer.BATCH_BYTES + 1


@pytest.mark.parametrize("cut", [0, 100 * KIB, transfer.BATCH_BYTES, 3 * MIB + 17 * KIB])
def test_interrupted_stream_keeps_exactly_the_received_bytes_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    data = os.urandom(5 * MIB)
    target = tmp_path / "f"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(transfer.os, "fsync", fsync)
    sink = Sink(target, Reporter(None))
    with pytest.raises(Interrupted):
        sink.write_from(chunked(data, 17 * KIB, fail_after=cut))
    received = -(-cut // (17 * KIB)) * 17 * KIB  # whole chunks yielded before the failure
    assert sink.size == target.stat().st_size == received
    assert synced == [received]  # durable before a retry asks for Range: bytes=<size>-
    assert sink.hasher.hexdigest() == hashlib.sha256(data[:received]).hexdigest()
    sink.write_from(chunked(data[received:], 64 * KIB))  # the retry resumes at sink.size
    assert target.read_bytes() == data
    assert sink.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_write_error_in_the_writer_thread_is_raised_and_stops_receiving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_all = transfer._write_all
    batches = 0

    def failing_write_all(fd: int, chunks: list[bytes]) -> int:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_all(fd, chunks)

    monkeypatch.setattr(transfer, "_write_all", failing_write_all)
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * (64 * KIB)

    sink = Sink(tmp_path / "f", Reporter(None))
    with pytest.raises(OSError, match="No space left"):
        sink.write_from(endless())
    assert sink.size == transfer.BATCH_BYTES  # only the first batch made it to disk
    on_disk = (tmp_path / "f").read_bytes()
    assert len(on_disk) == transfer.BATCH_BYTES
    assert sink.hasher.hexdigest() == hashlib.sha256(on_disk).hexdigest()
    # The receiver stops soon after: within the queued batches, not at the end of the stream.
    assert pulled * 64 * KIB <= (transfer.BATCH_DEPTH + 4) * transfer.BATCH_BYTES
    assert not [t for t in threading.enumerate() if t.name == "lorareg-sink"]


def test_an_error_in_the_receiving_thread_still_joins_the_writer(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"a" * MIB
        raise KeyboardInterrupt

    sink = Sink(tmp_path / "f", Reporter(None))
    with pytest.raises(KeyboardInterrupt):
        sink.write_from(broken())
    assert sink.size == MIB
    assert not [t for t in threading.enumerate() if t.name == "lorareg-sink"]


def test_writeback_is_started_every_writeback_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def hint(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((os.fstat(fd).st_size, flags))
        return 0

    monkeypatch.setattr(transfer, "WRITEBACK", 2 * MIB)
    monkeypatch.setattr(transfer, "_sync_file_range", hint)
    data = os.urandom(7 * MIB)
    Sink(tmp_path / "f", Reporter(None)).write_from(chunked(data, 64 * KIB))
    assert [size for size, _ in calls] == [2 * MIB, 4 * MIB, 6 * MIB]
    assert {flags for _, flags in calls} == {transfer._SYNC_FILE_RANGE_WRITE}
    assert (tmp_path / "f").read_bytes() == data


def test_a_short_writev_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    monkeypatch.setattr(transfer.os, "writev", lambda fd, bufs: real_writev(fd, [bufs[0][:3]]))
    target = tmp_path / "f"
    with target.open("ab", buffering=0) as fh:
        assert transfer._write_all(fh.fileno(), [b"hello", b" ", b"world"]) == 11
    assert target.read_bytes() == b"hello world"
