"""Content-addressed blob storage: the :class:`BlobStore` protocol and its two implementations.

A blob is named by the sha256 of its bytes (64 lowercase hex digits). Blobs are written first
and verified while they stream; database rows that point at them are committed second. So a
blob visible under its content key is always complete and hashes to its name, and a crash
leaves at most an unreferenced blob (garbage collection may delete it) or an abandoned upload
(:meth:`BlobStore.sweep_uploads` removes it).

``LocalBlobStore`` keeps files under a folder (the embedded default); ``S3BlobStore`` talks to
any S3 API (AWS S3, MinIO, R2, Ceph RGW, moto) through boto3 and its standard credential chain.
:func:`open_blob_store` picks one from ``Settings.effective_blob_url``.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from registry.errors import BadRequest, DigestMismatch

#: Bytes asked of a reader (or a file, or an S3 response) at a time; bounds memory per stream.
CHUNK_SIZE = 1024 * 1024
#: Bytes per chunk that ``open`` yields. Larger than CHUNK_SIZE because the API server proxies
#: downloads chunk by chunk, and every chunk costs it a hop from the event loop to a worker
#: thread and a send: with 4 MiB a 1 GiB pull costs the server about 0.5 CPU s against 0.65
#: with 1 MiB and 1.0 with 256 KiB (see benchmarks/README.md). Memory: one chunk per stream
#: being read, about one more being sent.
READ_CHUNK_SIZE = 4 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024**3  # also S3's largest single PutObject / CopyObject
MAX_PARTS = 10_000

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

#: Progress callbacks receive the number of bytes just processed: an increment (like
#: ``tqdm.update``), never a running total.
Progress = Callable[[int], None]


class SupportsRead(Protocol):
    """Anything with ``read(n) -> bytes``; ``b""`` means end of stream, shorter reads are fine."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class BlobInfo:
    """What a store knows about one stored blob."""

    digest: str
    size: int
    modified: datetime


# Key layout: the one place keys are built. Identical under the local root and the S3 prefix.
#
#   blobs/sha256/<ab>/<cd>/<hex>   verified content; <ab>, <cd> are the first four hex digits
#                                  (fan-out keeps folders and listings small)
#   uploads/<uuid>                 staging: local writes in progress, and S3 uploads whose digest
#                                  is unknown until the last byte. Nothing references them, so
#                                  anything older than a cutoff is abandoned and may be swept.
#
# S3 multipart uploads with a declared digest target the content key itself: S3 shows nothing
# under a key until CompleteMultipartUpload, which is sent only after the hash matched.
CONTENT_PREFIX = "blobs/sha256/"
UPLOADS_PREFIX = "uploads/"


def content_key(digest: str) -> str:
    """Relative key of a blob's content (see the key layout above)."""
    d = check_digest(digest)
    return f"{CONTENT_PREFIX}{d[:2]}/{d[2:4]}/{d}"


def _upload_key() -> str:
    return f"{UPLOADS_PREFIX}{uuid.uuid4().hex}"


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits, else raise BadRequest."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise BadRequest(f"invalid sha256 digest {digest!r}: expected 64 lowercase hex digits")
    return digest


class BlobWriter(Protocol):
    """One upload pushed chunk by chunk: ``put`` turned inside out, for a caller that receives
    the bytes itself (the API server on its event loop) and must not hold a thread while it
    waits for the next ones.

    ``write`` hashes, counts and stages a chunk; it raises BadRequest as soon as the stream is
    longer than a declared size. ``commit`` checks the size and the digest and only then makes
    the blob visible. ``abort`` discards whatever was staged; it is harmless after a ``commit``
    (failed or not) and after another ``abort``. A writer is used by one thread at a time.
    """

    def write(self, chunk: bytes, /) -> None: ...

    def commit(self) -> BlobInfo: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """Content-addressed blob storage (see the module docstring for the guarantees).

    ``put`` streams with bounded memory and hashes while streaming. It refuses a stream whose
    sha256 differs from a declared ``digest`` (DigestMismatch) or whose length differs from a
    declared ``size`` (BadRequest: truncated or too long), storing nothing under any content key.
    If the declared digest is already stored, the stream is still drained and verified (so a
    caller never gets success for bytes it did not send) but not stored again.
    ``writer`` is the same with the caller pushing chunks (see :class:`BlobWriter`).
    Progress callbacks receive byte increments. ``delete`` is idempotent.
    """

    def put(
        self,
        reader: SupportsRead,
        *,
        digest: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobInfo: ...

    def writer(
        self, *, digest: str | None = None, size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobWriter: ...

    def exists(self, digest: str) -> bool: ...

    def stat(self, digest: str) -> BlobInfo: ...

    def open(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Chunks of bytes [start, min(end, size)); NotFound is raised by the call itself."""
        ...

    def read_verified(self, digest: str) -> Iterator[bytes]:
        """All chunks; raises DigestMismatch after the last one if they do not hash to digest."""
        ...

    def download_to(
        self, digest: str, path: Path, *, verify: bool = True, progress: Progress | None = None
    ) -> None:
        """Write the blob to ``path`` atomically (temp file + rename); nothing on failure."""
        ...

    def delete(self, digest: str) -> None: ...

    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    def sweep_uploads(self, older_than: datetime) -> int:
        """Remove staging uploads (and S3 multipart uploads) begun before ``older_than``."""
        ...

    def presign_get(self, digest: str, ttl_seconds: int) -> str | None:
        """A time-limited GET URL, or None when the store cannot hand one out (local)."""
        ...

    def check(self) -> None:
        """Readiness: raise StorageError if the store is unreachable or not writable."""
        ...


class _Intake:
    """One upload stream, chunk by chunk: hashed and counted on the way, and checked against
    what the caller declared (size while streaming, digest at the end)."""

    def __init__(self, digest: str | None, size: int | None, progress: Progress | None) -> None:
        if size is not None and size < 0:
            raise BadRequest(f"invalid declared size {size}")
        self.declared = None if digest is None else check_digest(digest)
        self.size = size
        self.count = 0
        self._progress = progress
        self._hash = hashlib.sha256()

    def take(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.size is not None and self.count > self.size:
            raise BadRequest(f"upload is longer than its declared size of {self.size} bytes")
        self._hash.update(chunk)
        if self._progress is not None:
            self._progress(len(chunk))

    def finish(self) -> str:
        """The verified digest; call once the stream has ended."""
        self._expect_complete()
        actual = self._hash.hexdigest()
        if self.declared is not None and actual != self.declared:
            raise DigestMismatch(
                f"upload hashes to sha256:{actual}, not the declared sha256:{self.declared}",
                expected=self.declared,
                actual=actual,
            )
        return actual

    def _expect_complete(self) -> None:
        if self.size is not None and self.count != self.size:
            raise BadRequest(
                f"truncated upload: got {self.count} of {self.size} declared bytes",
                expected_size=self.size,
                received_size=self.count,
            )


def _pull(reader: SupportsRead, size: int | None) -> Iterator[bytes]:
    """``reader``'s bytes in reads of at most CHUNK_SIZE, to its end; once a declared ``size``
    is reached, one read of 1 byte (enough to tell a stream that is too long)."""
    count = 0
    while True:
        want = CHUNK_SIZE if size is None else max(min(CHUNK_SIZE, size - count), 1)
        chunk = reader.read(want)
        if not chunk:
            return
        count += len(chunk)
        yield chunk


class _Verifier:
    """The writer for a blob that is already stored: it checks what the caller sends (so a
    caller never gets success for bytes it did not send) and stores nothing."""

    def __init__(self, store: _VerifiedReads, intake: _Intake) -> None:
        self._store, self._intake = store, intake

    def write(self, chunk: bytes, /) -> None:
        self._intake.take(chunk)

    def commit(self) -> BlobInfo:
        return self._store.stat(self._intake.finish())

    def abort(self) -> None:
        pass


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise BadRequest(f"invalid byte range [{start}, {end})")


def _clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """[start, stop) within a blob of ``size`` bytes; ``end`` past the size is clamped."""
    _check_range(start, end)
    if start > size:
        raise BadRequest(f"byte range starts at {start}, beyond the blob's {size} bytes")
    return start, size if end is None else min(end, size)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise BadRequest("cutoff must be a timezone-aware datetime")
    return moment


def _verify_stream(digest: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk
    actual = hasher.hexdigest()
    if actual != digest:
        raise DigestMismatch(
            f"stored blob sha256:{digest} is corrupt: its bytes hash to sha256:{actual}",
            expected=digest,
            actual=actual,
        )


def _write_atomically(path: Path, chunks: Iterator[bytes], progress: Progress | None) -> None:
    """Write ``chunks`` to a temp file next to ``path``, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with tmp.open("xb") as out:
            for chunk in chunks:
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _VerifiedReads(ABC):
    """What both stores share: ``put`` and ``writer`` (verify, skip what is stored) and reads
    that check the sha256; built on ``exists``, ``stat``, ``open`` and each store's
    ``_writer``."""

    @abstractmethod
    def open(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def stat(self, digest: str) -> BlobInfo: ...

    @abstractmethod
    def _writer(self, intake: _Intake) -> BlobWriter:
        """A writer staging a new blob from ``intake``, visible only once verified."""

    def writer(
        self, *, digest: str | None = None, size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobWriter:
        intake = _Intake(digest, size, progress)
        if intake.declared is not None and self.exists(intake.declared):
            return _Verifier(self, intake)
        return self._writer(intake)

    def put(
        self,
        reader: SupportsRead,
        *,
        digest: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobInfo:
        writer = self.writer(digest=digest, size=size, progress=progress)
        try:
            for chunk in _pull(reader, size):
                writer.write(chunk)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def read_verified(self, digest: str) -> Iterator[bytes]:
        """All chunks; raises DigestMismatch after the last one if they do not hash to digest."""
        return _verify_stream(digest, self.open(digest))

    def download_to(
        self, digest: str, path: Path, *, verify: bool = True, progress: Progress | None = None
    ) -> None:
        """Write the blob to ``path`` atomically; on any failure ``path`` is left untouched.

        Errors writing ``path`` itself (the caller's disk) propagate as OSError.
        """
        chunks = self.read_verified(digest) if verify else self.open(digest)
        _write_atomically(Path(path), chunks, progress)


