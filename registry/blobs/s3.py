"""The S3 blob store: any S3 API (AWS S3, MinIO, R2, Ceph RGW, moto) through boto3."""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from registry.errors import BadRequest, NotFound, StorageError

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

from registry.blobs.base import (
    _DIGEST_RE,
    _MISSING_CODES,
    CONTENT_PREFIX,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
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
    content_key,
)

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
            yield from body.iter_chunks(READ_CHUNK_SIZE)
    finally:
        body.close()


def _make_client(endpoint_url: str | None, region: str | None) -> S3Client:
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        # SigV4 for presigned URLs too (botocore may presign with SigV2, which newer AWS
        # regions refuse); it also signs the host, so a URL works only where it was meant for.
        signature_version="s3v4",
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


class _S3Writer:
    """Buffers the first ``multipart_threshold`` bytes: a blob that ends before them goes as
    one PutObject; past them, a multipart upload takes over (see :class:`S3BlobStore`)."""

    def __init__(self, store: S3BlobStore, intake: _Intake) -> None:
        self._store, self._intake = store, intake
        self._head = bytearray()
        self._upload: _MultipartUpload | None = None
        self._key = ""
        self._completed = False

    def write(self, chunk: bytes, /) -> None:
        self._intake.take(chunk)
        if self._upload is not None:
            with _s3_errors("multipart upload"):
                self._upload.feed(chunk)
            return
        self._head += chunk
        if len(self._head) >= self._store.multipart_threshold:
            self._start_multipart()

    def _start_multipart(self) -> None:
        store, declared, size = self._store, self._intake.declared, self._intake.size
        self._key = store.key_for(declared) if declared else store._key(_upload_key())
        part_size = store.part_size
        if size is not None:
            part_size = max(part_size, -(-size // MAX_PARTS))
        with _s3_errors("multipart upload"):
            self._upload = _MultipartUpload(store, self._key, part_size, self._head)

    def commit(self) -> BlobInfo:
        if self._upload is None:
            return self._store.stat(self._store._put_small(self._intake, bytes(self._head)))
        with _s3_errors("multipart upload"):
            self._upload.flush()
            actual = self._intake.finish()
            self._upload.complete()
        self._completed = True
        self._upload.close()
        if self._intake.declared is None:
            self._store._promote(self._key, actual, self._intake.count)
        return self._store.stat(actual)

    def abort(self) -> None:
        if self._upload is None:
            return
        if not self._completed:
            self._upload.abort()
        self._upload.close()


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
        public_endpoint_url: str | None = None,
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
        # Presigned URLs name the endpoint the clients reach, which may differ from ours (a
        # MinIO that the API reaches as http://minio:9000 and users as https://s3.example.com).
        # The host is part of the signature, so they are signed by a client for that endpoint
        # (signing is local: it never connects).
        self._presigner = (_make_client(public_endpoint_url, region) if public_endpoint_url
                           else self.client)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def key_for(self, digest: str) -> str:
        return self._key(content_key(digest))

    def _writer(self, intake: _Intake) -> BlobWriter:
        return _S3Writer(self, intake)

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
            return self._presigner.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=ttl_seconds
            )

    def check(self) -> None:
        with _s3_errors(f"check of bucket {self.bucket!r}"):
            self.client.head_bucket(Bucket=self.bucket)


