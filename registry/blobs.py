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

import base64
import hashlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from registry.config import Settings
from registry.errors import BadRequest, DigestMismatch, NotFound, StorageError

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

#: Bytes asked of a reader (or a file, or an S3 response) at a time; bounds memory per stream.
CHUNK_SIZE = 1024 * 1024
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


class BlobStore(Protocol):
    """Content-addressed blob storage (see the module docstring for the guarantees).

    ``put`` streams with bounded memory and hashes while streaming. It refuses a stream whose
    sha256 differs from a declared ``digest`` (DigestMismatch) or whose length differs from a
    declared ``size`` (BadRequest: truncated or too long), storing nothing under any content key.
    If the declared digest is already stored, the stream is still drained and verified (so a
    caller never gets success for bytes it did not send) but not stored again.
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
    """One upload stream: read in bounded chunks, hashed and counted on the way, and checked
    against what the caller declared (size while streaming, digest at the end)."""

    def __init__(
        self, reader: SupportsRead, digest: str | None, size: int | None, progress: Progress | None
    ) -> None:
        if size is not None and size < 0:
            raise BadRequest(f"invalid declared size {size}")
        self.declared = None if digest is None else check_digest(digest)
        self.size = size
        self.count = 0
        self._reader = reader
        self._progress = progress
        self._hash = hashlib.sha256()

    def chunks(self) -> Iterator[bytes]:
        while True:
            want = CHUNK_SIZE if self.size is None else min(CHUNK_SIZE, self.size - self.count)
            if want == 0:
                self._expect_eof()
                return
            chunk = self._reader.read(want)
            if not chunk:
                self._expect_complete()
                return
            self._take(chunk)
            yield chunk

    def drain(self) -> str:
        for _ in self.chunks():
            pass
        return self.finish()

    def finish(self) -> str:
        """The verified digest; call once the chunks are exhausted."""
        actual = self._hash.hexdigest()
        if self.declared is not None and actual != self.declared:
            raise DigestMismatch(
                f"upload hashes to sha256:{actual}, not the declared sha256:{self.declared}",
                expected=self.declared,
                actual=actual,
            )
        return actual

    def _take(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.size is not None and self.count > self.size:
            self._too_long()
        self._hash.update(chunk)
        if self._progress is not None:
            self._progress(len(chunk))

    def _expect_eof(self) -> None:
        if self._reader.read(1):
            self._too_long()

    def _too_long(self) -> None:
        raise BadRequest(f"upload is longer than its declared size of {self.size} bytes")

    def _expect_complete(self) -> None:
        if self.size is not None and self.count != self.size:
            raise BadRequest(
                f"truncated upload: got {self.count} of {self.size} declared bytes",
                expected_size=self.size,
                received_size=self.count,
            )


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
    """Reads that check the sha256, shared by both stores; built on ``open``."""

    @abstractmethod
    def open(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

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


def _write_synced(out: BinaryIO, chunks: Iterator[bytes]) -> None:
    """Write and fsync; only our own file errors become StorageError, a failing reader's
    errors (the caller's side) propagate unchanged."""
    for chunk in chunks:
        with _local_errors():
            out.write(chunk)
    with _local_errors():
        out.flush()
        os.fsync(out.fileno())


def _file_range(f: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    with f, _local_errors():
        f.seek(start)
        remaining = stop - start
        while remaining > 0:
            chunk = f.read(min(CHUNK_SIZE, remaining))
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

    def put(
        self,
        reader: SupportsRead,
        *,
        digest: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobInfo:
        intake = _Intake(reader, digest, size, progress)
        if intake.declared is not None and self.exists(intake.declared):
            intake.drain()
            return self.stat(intake.declared)
        return self.stat(self._store(intake))

    def _store(self, intake: _Intake) -> str:
        staging = self.root / _upload_key()
        with _local_errors():
            staging.parent.mkdir(parents=True, exist_ok=True)
            out = staging.open("xb")
        try:
            with out:
                _write_synced(out, intake.chunks())
            actual = intake.finish()
            target = self.path_for(actual)
            with _local_errors():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.replace(target)
                _fsync_dir(target.parent)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        return actual

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


# --- S3 ----------------------------------------------------------------------------------------


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _s3_errors(action: str, digest: str | None = None) -> Iterator[None]:
    """The one place botocore failures become lorareg errors."""
    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        if digest is not None and code in _MISSING_CODES:
            raise NotFound(f"blob sha256:{digest} not found", digest=digest) from exc
        raise StorageError(f"S3 {action} failed: {exc}", s3_code=code) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 {action} failed: {exc}") from exc


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _b64_digest(digest: str) -> str:
    """A hex digest in the base64 form of S3's ChecksumSHA256."""
    return base64.b64encode(bytes.fromhex(digest)).decode()


def _s3_stream(body: StreamingBody) -> Iterator[bytes]:
    try:
        with _s3_errors("read"):
            yield from body.iter_chunks(CHUNK_SIZE)
    finally:
        body.close()


def _make_client(endpoint_url: str | None, region: str | None) -> S3Client:
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=32,  # several concurrent puts, each with parts in flight
        s3={
            # Custom endpoints (MinIO, Ceph, moto) rarely have wildcard DNS for bucket names.
            "addressing_style": "path" if endpoint_url else "auto",
            # Bodies carry a signed x-amz-checksum-sha256 the server checks; signing the payload
            # too (botocore does over plain http) would hash every part once more.
            "payload_signing_enabled": False,
        },
        # We hash every byte we read ourselves; botocore's validation would hash it twice.
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class _MultipartUpload:
    """One S3 multipart upload fed chunk by chunk. Up to ``concurrency`` parts are in flight
    on worker threads (each hashes its part and sends it) while the caller reads on; memory
    is bounded by about ``concurrency + 2`` parts (in flight, filling, being copied out).

    Every part carries its own ChecksumSHA256, which a real S3 verifies on receipt; the
    whole-object digest is checked by the caller before :meth:`complete`.
    """

    def __init__(self, store: S3BlobStore, key: str, part_size: int, buffer: bytearray) -> None:
        self.client, self.bucket, self.key = store.client, store.bucket, key
        self.part_size = part_size
        self._buf = buffer
        self._parts: list[CompletedPartTypeDef] = []
        self._in_flight: deque[Future[CompletedPartTypeDef]] = deque()
        self._max_in_flight = store.upload_concurrency
        created = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )
        self.upload_id = created["UploadId"]
        self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="s3-part")

    def feed(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= self.part_size:
            self._wait_for_slot()  # before copying the part out: one part less in memory
            with memoryview(self._buf) as view:  # one copy of the part, not two
                part = bytes(view[: self.part_size])
            del self._buf[: self.part_size]
            self._submit(part)

    def flush(self) -> None:
        """Send the last, short part and wait for every part to arrive."""
        if self._buf or not (self._parts or self._in_flight):
            self._submit(bytes(self._buf))
            self._buf.clear()
        while self._in_flight:
            self._parts.append(self._in_flight.popleft().result())

    def complete(self) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        """Best effort: a failed abort is left to :meth:`S3BlobStore.sweep_uploads`."""
        for future in self._in_flight:
            future.cancel()
        wait(self._in_flight)
        with suppress(ClientError, BotoCoreError):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, data: bytes) -> None:
        number = len(self._parts) + len(self._in_flight) + 1
        if number > MAX_PARTS:
            raise BadRequest(f"blob exceeds {MAX_PARTS} parts of {self.part_size} bytes")
        self._wait_for_slot()
        self._in_flight.append(self._pool.submit(self._send, number, data))

    def _wait_for_slot(self) -> None:
        while len(self._in_flight) >= self._max_in_flight:
            self._parts.append(self._in_flight.popleft().result())

    def _send(self, number: int, data: bytes) -> CompletedPartTypeDef:
        checksum = _b64_sha256(data)
        sent = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum}


def _gather(chunks: Iterator[bytes], limit: int) -> tuple[bytearray, bool]:
    """Buffer chunks until ``limit`` bytes; the flag says whether the stream ended first."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) >= limit:
            return buf, False
    return buf, True


class S3BlobStore(_VerifiedReads):
    """Blobs as objects under ``s3://bucket/prefix`` on any S3 API.

    Blobs under ``multipart_threshold`` are buffered (bounded by the threshold), hashed, then
    sent with one PutObject carrying ChecksumSHA256. Bigger ones stream as multipart uploads,
    ``upload_concurrency`` parts at a time (memory: about ``upload_concurrency + 2`` parts),
    completed only when the digest and size match, aborted otherwise. Without a declared
    digest a big upload is staged under ``uploads/`` and copied server-side to its content key.
    The server is never trusted to verify (moto, for one, ignores ChecksumSHA256).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 16 * 1024 * 1024,
        part_size: int = 16 * 1024 * 1024,
        upload_concurrency: int = 3,
        client: S3Client | None = None,
    ) -> None:
        if not bucket:
            raise BadRequest("S3 blob store needs a bucket name")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise BadRequest(f"S3 part size must be within [{MIN_PART_SIZE}, {MAX_PART_SIZE}]")
        if not 0 < multipart_threshold <= MAX_PART_SIZE:
            raise BadRequest(f"S3 multipart threshold must be within (0, {MAX_PART_SIZE}]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.upload_concurrency = max(1, upload_concurrency)
        self.client = client if client is not None else _make_client(endpoint_url, region)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def key_for(self, digest: str) -> str:
        return self._key(content_key(digest))

    def put(
        self,
        reader: SupportsRead,
        *,
        digest: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> BlobInfo:
        intake = _Intake(reader, digest, size, progress)
        if intake.declared is not None and self.exists(intake.declared):
            intake.drain()
            return self.stat(intake.declared)
        chunks = intake.chunks()
        head, ended = _gather(chunks, self.multipart_threshold)
        if ended:
            actual = self._put_small(intake, bytes(head))
        else:
            actual = self._put_multipart(intake, head, chunks)
        return self.stat(actual)

    def _put_small(self, intake: _Intake, data: bytes) -> str:
        actual = intake.finish()
        with _s3_errors("upload"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key_for(actual),
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64_digest(actual),
            )
        return actual

    def _put_multipart(self, intake: _Intake, head: bytearray, chunks: Iterator[bytes]) -> str:
        declared = intake.declared
        key = self.key_for(declared) if declared else self._key(_upload_key())
        part_size = self.part_size
        if intake.size is not None:
            part_size = max(part_size, -(-intake.size // MAX_PARTS))
        with _s3_errors("multipart upload"):
            upload = _MultipartUpload(self, key, part_size, head)
            try:
                for chunk in chunks:
                    upload.feed(chunk)
                upload.flush()
                actual = intake.finish()
                upload.complete()
            except BaseException:
                upload.abort()
                raise
            finally:
                upload.close()
        if declared is None:
            self._promote(key, actual, intake.count)
        return actual

    def _promote(self, staging_key: str, digest: str, size: int) -> None:
        """Copy a verified staging object to its content key (server-side), drop the staging."""
        try:
            if not self.exists(digest):
                self._copy(staging_key, digest, size)
        finally:
            with _s3_errors("delete staging upload"):
                self.client.delete_object(Bucket=self.bucket, Key=staging_key)

    def _copy(self, source_key: str, digest: str, size: int) -> None:
        # ChecksumAlgorithm makes the server hash the copy: the content object then carries a
        # SHA256 like a small put's, and a server that reports one lets us check it.
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": source_key}
        target = self.key_for(digest)
        with _s3_errors("copy"):
            if size > MAX_PART_SIZE:  # CopyObject stops at 5 GiB; the managed copy goes multipart
                config = TransferConfig(multipart_chunksize=self.part_size)
                extra = {"ChecksumAlgorithm": "SHA256"}
                self.client.copy(source, self.bucket, target, ExtraArgs=extra, Config=config)
                return
            copied = self.client.copy_object(
                Bucket=self.bucket, Key=target, CopySource=source, ChecksumAlgorithm="SHA256"
            )
        reported = copied["CopyObjectResult"].get("ChecksumSHA256")
        if reported is not None and reported != _b64_digest(digest):
            self.delete(digest)
            raise StorageError(f"S3 copy of sha256:{digest} hashed to {reported} server-side")

    def exists(self, digest: str) -> bool:
        try:
            self.stat(digest)
        except NotFound:
            return False
        return True

    def stat(self, digest: str) -> BlobInfo:
        key = self.key_for(digest)
        with _s3_errors("stat", digest):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        return BlobInfo(digest, head["ContentLength"], head["LastModified"])

    def open(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        key = self.key_for(digest)
        _check_range(start, end)
        if end == start:  # S3 cannot express an empty range
            _clamp_range(start, end, self.stat(digest).size)
            return iter(())
        with _s3_errors("read", digest):
            try:
                body = self._get(key, start, end)
            except ClientError as exc:
                if _error_code(exc) != "InvalidRange":
                    raise
                # Starts at or past the end: empty if exactly at the end, else BadRequest.
                _clamp_range(start, end, self.stat(digest).size)
                return iter(())
        return _s3_stream(body)

    def _get(self, key: str, start: int, end: int | None) -> StreamingBody:
        if start == 0 and end is None:  # no Range: some S3 APIs answer 416 for empty objects
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        byte_range = f"bytes={start}-{'' if end is None else end - 1}"
        return self.client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)["Body"]

    def delete(self, digest: str) -> None:
        key = self.key_for(digest)
        with _s3_errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(CONTENT_PREFIX)):
                for obj in page.get("Contents", []):
                    digest = obj["Key"].rsplit("/", 1)[-1]
                    if _DIGEST_RE.fullmatch(digest) and obj["Key"] == self.key_for(digest):
                        yield BlobInfo(digest, obj["Size"], obj["LastModified"])

    def sweep_uploads(self, older_than: datetime) -> int:
        cutoff = _aware(older_than)
        with _s3_errors("sweep uploads"):
            return self._sweep_staging(cutoff) + self._sweep_multipart(cutoff)

    def _sweep_staging(self, cutoff: datetime) -> int:
        paginator = self.client.get_paginator("list_objects_v2")
        removed = 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(UPLOADS_PREFIX)):
            for obj in page.get("Contents", []):
                if obj["LastModified"] < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
        return removed

    def _sweep_multipart(self, cutoff: datetime) -> int:
        paginator = self.client.get_paginator("list_multipart_uploads")
        removed = 0
        for prefix in (CONTENT_PREFIX, UPLOADS_PREFIX):  # only ours, if the bucket is shared
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        return removed

    def presign_get(self, digest: str, ttl_seconds: int) -> str | None:
        """A GET URL valid for ``ttl_seconds``; computed locally, existence is not checked."""
        if ttl_seconds <= 0:
            raise BadRequest(f"presign TTL must be positive, not {ttl_seconds}")
        params = {"Bucket": self.bucket, "Key": self.key_for(digest)}
        with _s3_errors("presign"):
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=ttl_seconds
            )

    def check(self) -> None:
        with _s3_errors(f"check of bucket {self.bucket!r}"):
            self.client.head_bucket(Bucket=self.bucket)


def open_blob_store(settings: Settings) -> BlobStore:
    """The store named by ``settings.effective_blob_url``.

    ``file:///abs/path`` or a plain path: :class:`LocalBlobStore`; ``s3://bucket/prefix``:
    :class:`S3BlobStore` with the endpoint, region and multipart sizes from ``settings``.
    """
    url = settings.effective_blob_url
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadRequest(f"blob URL {url!r} names no bucket: use s3://bucket/prefix")
        return S3BlobStore(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            multipart_threshold=settings.s3_multipart_threshold,
            part_size=settings.s3_part_size,
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(f"blob URL {url!r} must be file:///absolute/path")
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalBlobStore(Path(url))
    raise BadRequest(
        f"unsupported blob URL scheme {parts.scheme!r} in {url!r}: "
        "use file:///path, a plain path, or s3://bucket/prefix"
    )
