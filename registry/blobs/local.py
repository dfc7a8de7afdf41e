"""The local-folder blob store (the embedded default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from registry.blobs.base import (
    _DIGEST_RE,
    CONTENT_PREFIX,
    READ_CHUNK_SIZE,
    UPLOADS_PREFIX,
    BlobInfo,
    BlobWriter,
    _aware,
    _check_range,
    _clamp_range,
    _Intake,
    _upload_key,
    _VerifiedReads,
    check_digest,
    content_key,
)
from registry.errors import NotFound, StorageError

# --- local folder ------------------------------------------------------------------------------


@contextmanager
def _local_errors(digest: str | None = None) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        if digest is None:
            raise StorageError(f"blob storage file vanished: {exc}") from exc
        raise NotFound(f"blob sha256:{digest} not found", digest=digest) from exc
    except OSError as exc:
        raise StorageError(f"local blob storage failed: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalWriter:
    """Writes ``root/uploads/<uuid>`` while hashing; ``commit`` fsyncs, verifies, then renames
    it onto the content path. Only our own file errors become StorageError."""

    def __init__(self, store: LocalBlobStore, intake: _Intake) -> None:
        self._store, self._intake = store, intake
        self._staging = store.root / _upload_key()
        with _local_errors():
            self._staging.parent.mkdir(parents=True, exist_ok=True)
            self._out: BinaryIO = self._staging.open("xb")

    def write(self, chunk: bytes, /) -> None:
        self._intake.take(chunk)
        with _local_errors():
            self._out.write(chunk)

    def commit(self) -> BlobInfo:
        with _local_errors(), self._out:
            self._out.flush()
            os.fsync(self._out.fileno())
        actual = self._intake.finish()
        target = self._store.path_for(actual)
        with _local_errors():
            target.parent.mkdir(parents=True, exist_ok=True)
            self._staging.replace(target)
            _fsync_dir(target.parent)
        return self._store.stat(actual)

    def abort(self) -> None:
        with suppress(OSError):  # already failing: the staging file is what matters
            self._out.close()
        self._staging.unlink(missing_ok=True)


def _file_range(f: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    with f, _local_errors():
        f.seek(start)
        remaining = stop - start
        while remaining > 0:
            chunk = f.read(min(READ_CHUNK_SIZE, remaining))
            if not chunk:  # shrank behind our back; read_verified reports the corruption
                return
            remaining -= len(chunk)
            yield chunk


class LocalBlobStore(_VerifiedReads):
    """Blobs as files under ``root`` (the embedded default).

    ``put`` writes ``root/uploads/<uuid>`` while hashing, fsyncs, verifies, then renames onto
    the content path with ``os.replace`` (atomic; concurrent identical puts are harmless).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        return self.root / content_key(digest)

    def _writer(self, intake: _Intake) -> BlobWriter:
        return _LocalWriter(self, intake)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def stat(self, digest: str) -> BlobInfo:
        path = self.path_for(digest)
        with _local_errors(digest):
            st = path.stat()
        return BlobInfo(digest, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def open(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self.path_for(digest)
        _check_range(start, end)
        with _local_errors(digest):
            f = path.open("rb")
        try:
            begin, stop = _clamp_range(start, end, os.fstat(f.fileno()).st_size)
        except BaseException:
            f.close()
            raise
        return _file_range(f, begin, stop)

    def delete(self, digest: str) -> None:
        path = self.path_for(digest)
        with _local_errors():
            path.unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        for path in (self.root / CONTENT_PREFIX).glob("??/??/*"):
            if _DIGEST_RE.fullmatch(path.name) and path == self.path_for(path.name):
                try:
                    yield self.stat(path.name)
                except NotFound:  # deleted while we listed
                    continue

    def sweep_uploads(self, older_than: datetime) -> int:
        cutoff = _aware(older_than).timestamp()
        staging = self.root / UPLOADS_PREFIX
        removed = 0
        with _local_errors():
            for path in staging.iterdir() if staging.is_dir() else ():
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # finished or swept concurrently
                    continue
        return removed

    def presign_get(self, digest: str, ttl_seconds: int) -> str | None:
        check_digest(digest)
        return None

    def check(self) -> None:
        probe = self.root / _upload_key()
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"blob folder {self.root} is not writable: {exc}") from exc


