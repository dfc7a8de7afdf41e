"""BlobStore behaviour, over the local folder store and the S3 store (moto server over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from botocore.config import Config

from registry.blobs import (
    CHUNK_SIZE,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    content_key,
    open_blob_store,
)
from registry.blobs.base import READ_CHUNK_SIZE
from registry.config import Settings
from registry.errors import BadRequest, DigestMismatch, NotFound, StorageError
from tests.fixtures.s3 import REGION, TEST_PART_SIZE, free_port, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KIB = 1024
MIB = 1024 * KIB
SMALL = 3 * KIB + 7
BIG = 12 * MIB  # above the 5 MiB test threshold: three S3 parts


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Reader:
    """Serves ``data`` through ``read(n)``; records what was asked; can end early or fail."""

    def __init__(
        self,
        data: bytes,
        *,
        end_at: int | None = None,
        fail_at: int | None = None,
        piece: int | None = None,
    ) -> None:
        self.data = memoryview(data)
        self.end = len(data) if end_at is None else end_at
        self.fail_at = fail_at
        self.piece = piece
        self.pos = 0
        self.asked: list[int] = []

    def read(self, n: int) -> bytes:
        self.asked.append(n)
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionResetError("client went away")
        n = n if self.piece is None else min(n, self.piece)
        chunk = bytes(self.data[self.pos : min(self.pos + n, self.end)])
        self.pos += len(chunk)
        return chunk


class PatternReader:
    """``total`` bytes made on demand from a repeated random block, never all in memory."""

    BLOCK = payload(64 * KIB, seed=42)

    def __init__(self, total: int) -> None:
        self.total = total
        self.pos = 0
        self.max_asked = 0

    def read(self, n: int) -> bytes:
        self.max_asked = max(self.max_asked, n)
        n = min(n, self.total - self.pos)
        offset = self.pos % len(self.BLOCK)
        reps = (offset + n) // len(self.BLOCK) + 1
        self.pos += n
        return (self.BLOCK * reps)[offset : offset + n]


def pattern_digest(total: int) -> str:
    reader, hasher = PatternReader(total), hashlib.sha256()
    while chunk := reader.read(CHUNK_SIZE):
        hasher.update(chunk)
    return hasher.hexdigest()


# --- looking behind a store's back -----------------------------------------------------------


def stored_keys(store: BlobStore) -> set[str]:
    """Every key the store holds (content and staging), relative to its root or prefix."""
    if isinstance(store, LocalBlobStore):
        if not store.root.exists():
            return set()
        return {p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()}
    assert isinstance(store, S3BlobStore)
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    keys = {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    return {key.removeprefix(f"{store.prefix}/") for key in keys}


def pending_multipart(store: BlobStore) -> list[str]:
    if not isinstance(store, S3BlobStore):
        return []
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [upload["Key"] for upload in uploads]


def assert_nothing_stored(store: BlobStore) -> None:
    assert stored_keys(store) == set()
    assert pending_multipart(store) == []


def corrupt(store: BlobStore, digest: str) -> None:
    """Flip the first stored byte, keeping the size, without the store knowing."""
    if isinstance(store, LocalBlobStore):
        path = store.path_for(digest)
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    assert isinstance(store, S3BlobStore)
    key = store.key_for(digest)
    data = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    data[0] ^= 0xFF
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))


def abandon_uploads(store: BlobStore, digest: str) -> None:
    """Leave what a crashed put leaves: a staging upload (and, on S3, an open multipart)."""
    if isinstance(store, LocalBlobStore):
        (store.root / "uploads").mkdir(parents=True, exist_ok=True)
        (store.root / "uploads" / "crashed").write_bytes(b"half an upload")
        return
    assert isinstance(store, S3BlobStore)
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/uploads/crashed", Body=b"x")
    store.client.create_multipart_upload(Bucket=store.bucket, Key=store.key_for(digest))


# --- put -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, SMALL, BIG], ids=["empty", "small", "multipart"])
def test_put_with_declared_digest_roundtrips(blob_store: BlobStore, size: int) -> None:
    data = payload(size)
    progress: list[int] = []
    info = blob_store.put(Reader(data), digest=sha256(data), size=size, progress=progress.append)
    assert (info.digest, info.size) == (sha256(data), size)
    assert info.modified.tzinfo is not None
    assert sum(progress) == size
    assert b"".join(blob_store.open(info.digest)) == data
    assert stored_keys(blob_store) == {content_key(info.digest)}


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
@pytest.mark.parametrize("declare_size", [True, False], ids=["sized", "unsized"])
def test_put_without_digest_stores_under_computed_digest(
    blob_store: BlobStore, size: int, declare_size: bool
) -> None:
    data = payload(size, seed=1)
    info = blob_store.put(Reader(data), size=size if declare_size else None)
    assert (info.digest, info.size) == (sha256(data), size)
    assert b"".join(blob_store.read_verified(info.digest)) == data
    assert stored_keys(blob_store) == {content_key(info.digest)}  # staging is gone
    assert pending_multipart(blob_store) == []


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "staged-multipart"])
def test_s3_content_objects_carry_their_sha256(
    s3_client: S3Client, s3_bucket: str, size: int
) -> None:
    store = S3BlobStore(s3_bucket, client=s3_client, multipart_threshold=TEST_PART_SIZE)
    digest = store.put(Reader(payload(size))).digest
    head = s3_client.head_object(
        Bucket=s3_bucket, Key=store.key_for(digest), ChecksumMode="ENABLED"
    )
    assert head.get("ChecksumSHA256") == base64.b64encode(bytes.fromhex(digest)).decode()


def test_put_accepts_short_reads(blob_store: BlobStore) -> None:
    data = payload(SMALL)
    info = blob_store.put(Reader(data, piece=100), digest=sha256(data), size=len(data))
    assert b"".join(blob_store.open(info.digest)) == data


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
def test_put_with_wrong_digest_stores_nothing(blob_store: BlobStore, size: int) -> None:
    data = payload(size, seed=2)
    wrong = sha256(b"something else")
    with pytest.raises(DigestMismatch) as caught:
        blob_store.put(Reader(data), digest=wrong, size=size)
    assert caught.value.extra == {"expected": wrong, "actual": sha256(data)}
    assert not blob_store.exists(wrong)
    assert not blob_store.exists(sha256(data))
    assert_nothing_stored(blob_store)  # incl. no multipart upload left open on S3


@pytest.mark.parametrize(
    ("size", "end_at"), [(SMALL, 1000), (BIG, 7 * MIB)], ids=["small", "multipart"]
)
@pytest.mark.parametrize("declare_digest", [True, False], ids=["digest", "no-digest"])
def test_truncated_stream_is_refused(
    blob_store: BlobStore, size: int, end_at: int, declare_digest: bool
) -> None:
    data = payload(size, seed=3)
    digest = sha256(data) if declare_digest else None
    with pytest.raises(BadRequest, match="truncated"):
        blob_store.put(Reader(data, end_at=end_at), digest=digest, size=size)
    assert_nothing_stored(blob_store)


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
def test_stream_longer_than_declared_size_is_refused(blob_store: BlobStore, size: int) -> None:
    data = payload(size, seed=4)
    with pytest.raises(BadRequest, match="longer than its declared size"):
        blob_store.put(Reader(data), size=size - 1)
    assert_nothing_stored(blob_store)


def test_failing_reader_leaves_nothing(blob_store: BlobStore) -> None:
    data = payload(BIG, seed=5)
    with pytest.raises(ConnectionResetError):
        blob_store.put(Reader(data, fail_at=6 * MIB), digest=sha256(data))
    assert_nothing_stored(blob_store)


def test_put_of_existing_blob_still_verifies_the_stream(blob_store: BlobStore) -> None:
    data = payload(SMALL, seed=6)
    first = blob_store.put(Reader(data))
    again = Reader(data)
    assert blob_store.put(again, digest=first.digest).digest == first.digest
    assert again.pos == len(data)  # drained
    with pytest.raises(DigestMismatch):
        blob_store.put(Reader(payload(SMALL, seed=7)), digest=first.digest)
    assert b"".join(blob_store.read_verified(first.digest)) == data


def test_put_without_digest_of_an_existing_blob(blob_store: BlobStore) -> None:
    data = payload(BIG, seed=15)
    first = blob_store.put(Reader(data))
    progress: list[int] = []
    again = blob_store.put(Reader(data), progress=progress.append)
    assert again.digest == first.digest
    assert sum(progress) == len(data)
    assert stored_keys(blob_store) == {content_key(first.digest)}
    assert pending_multipart(blob_store) == []


def test_concurrent_identical_puts(blob_store: BlobStore) -> None:
    data = payload(SMALL, seed=8)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            blob_store.put(Reader(data), digest=sha256(data))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stored_keys(blob_store) == {content_key(sha256(data))}


def test_put_reads_in_bounded_chunks_with_bounded_memory(blob_store: BlobStore) -> None:
    total = 10 * TEST_PART_SIZE + 123  # 50 MiB and a bit: eleven S3 parts
    digest = pattern_digest(total)
    reader = PatternReader(total)
    tracemalloc.start()
    try:
        info = blob_store.put(reader, digest=digest, size=total)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total
    assert reader.max_asked <= CHUNK_SIZE
    if isinstance(blob_store, S3BlobStore):  # parts in flight, the one filling, the one copied
        bound = (blob_store.upload_concurrency + 2) * TEST_PART_SIZE
    else:  # the chunk being written, the next one being read, some slack
        bound = 4 * CHUNK_SIZE
    assert peak < bound, f"peak {peak / MIB:.1f} MiB for a {total / MIB:.0f} MiB stream"


# --- writer (put driven chunk by chunk) ------------------------------------------------------


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [0, SMALL, BIG], ids=["empty", "small", "multipart"])
@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_writer_stores_what_was_pushed(blob_store: BlobStore, size: int, declare: bool) -> None:
    data = payload(size, seed=30)
    progress: list[int] = []
    writer = blob_store.writer(digest=sha256(data) if declare else None,
                               size=size if declare else None, progress=progress.append)
    for piece in pieces(data, 300 * KIB):  # not a divisor of the part size
        writer.write(piece)
    assert stored_keys(blob_store) & {content_key(sha256(data))} == set()  # not before commit
    info = writer.commit()
    writer.abort()  # harmless after a commit
    assert (info.digest, info.size, sum(progress)) == (sha256(data), size, size)
    assert b"".join(blob_store.read_verified(info.digest)) == data
    assert stored_keys(blob_store) == {content_key(info.digest)}
    assert pending_multipart(blob_store) == []


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
def test_aborted_writer_leaves_nothing(blob_store: BlobStore, size: int) -> None:
    data = payload(size, seed=31)
    writer = blob_store.writer(digest=sha256(data), size=size)
    for piece in pieces(data, MIB)[:-1]:  # a client that stops before the end
        writer.write(piece)
    writer.abort()
    writer.abort()
    assert_nothing_stored(blob_store)


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
def test_writer_refuses_a_wrong_or_short_stream_at_commit(blob_store: BlobStore, size: int
                                                          ) -> None:
    data = payload(size, seed=32)
    wrong = blob_store.writer(digest=sha256(b"other"), size=size)
    for piece in pieces(data, MIB):
        wrong.write(piece)
    with pytest.raises(DigestMismatch):
        wrong.commit()
    wrong.abort()
    short = blob_store.writer(digest=sha256(data), size=size)
    short.write(data[:-1])
    with pytest.raises(BadRequest, match="truncated"):
        short.commit()
    short.abort()
    assert_nothing_stored(blob_store)


def test_writer_refuses_bytes_past_the_declared_size_at_once(blob_store: BlobStore) -> None:
    data = payload(SMALL, seed=33)
    writer = blob_store.writer(size=SMALL - 1)
    with pytest.raises(BadRequest, match="longer than its declared size"):
        writer.write(data)
    writer.abort()
    assert_nothing_stored(blob_store)


def test_writer_for_a_stored_blob_checks_the_bytes_and_stores_nothing_new(
    blob_store: BlobStore,
) -> None:
    data = payload(SMALL, seed=34)
    first = blob_store.put(Reader(data))
    again = blob_store.writer(digest=first.digest, size=SMALL)
    again.write(data)
    assert again.commit().digest == first.digest
    liar = blob_store.writer(digest=first.digest, size=SMALL)
    liar.write(payload(SMALL, seed=35))
    with pytest.raises(DigestMismatch):
        liar.commit()
    liar.abort()
    assert stored_keys(blob_store) == {content_key(first.digest)}


# --- read ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (10, 20),
        (100, None),
        (SMALL - 1, None),
        (5, SMALL + 100),
        (SMALL, None),
        (SMALL, SMALL),
        (7, 7),
    ],
)
def test_open_returns_the_byte_range(blob_store: BlobStore, start: int, end: int | None) -> None:
    data = payload(SMALL, seed=9)
    digest = blob_store.put(Reader(data)).digest
    assert b"".join(blob_store.open(digest, start, end)) == data[start:end]


def test_open_of_large_blob_streams_in_chunks(blob_store: BlobStore) -> None:
    data = payload(BIG, seed=10)
    digest = blob_store.put(Reader(data)).digest
    chunks = list(blob_store.open(digest, MIB + 1, 11 * MIB))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= READ_CHUNK_SIZE
    assert b"".join(chunks) == data[MIB + 1 : 11 * MIB]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 5), (SMALL + 1, None)])
def test_open_refuses_bad_ranges(blob_store: BlobStore, start: int, end: int | None) -> None:
    digest = blob_store.put(Reader(payload(SMALL))).digest
    with pytest.raises(BadRequest, match="range"):
        blob_store.open(digest, start, end)


def test_exists_stat_delete(blob_store: BlobStore) -> None:
    data = payload(SMALL, seed=11)
    digest = blob_store.put(Reader(data)).digest
    assert blob_store.exists(digest)
    info = blob_store.stat(digest)
    assert (info.digest, info.size) == (digest, len(data))
    assert abs(datetime.now(UTC) - info.modified) < timedelta(minutes=5)
    blob_store.delete(digest)
    assert not blob_store.exists(digest)
    blob_store.delete(digest)  # idempotent


def test_missing_blob_is_not_found(blob_store: BlobStore, tmp_path: Path) -> None:
    missing = sha256(b"never stored")
    assert not blob_store.exists(missing)
    with pytest.raises(NotFound):
        blob_store.stat(missing)
    with pytest.raises(NotFound):
        blob_store.open(missing)
    with pytest.raises(NotFound):
        blob_store.open(missing, 3, 3)
    with pytest.raises(NotFound):
        blob_store.read_verified(missing)
    with pytest.raises(NotFound):
        blob_store.download_to(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


BAD_DIGESTS = ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_bad_digest_is_refused(blob_store: BlobStore, bad: str, tmp_path: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: blob_store.put(Reader(b"x"), digest=bad),
        lambda: blob_store.exists(bad),
        lambda: blob_store.stat(bad),
        lambda: blob_store.open(bad),
        lambda: blob_store.delete(bad),
        lambda: blob_store.download_to(bad, tmp_path / "out"),
        lambda: blob_store.presign_get(bad, 60),
    ]
    for call in calls:
        with pytest.raises(BadRequest, match="invalid sha256 digest"):
            call()
    assert_nothing_stored(blob_store)


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["small", "multipart"])
def test_download_to_writes_the_blob(blob_store: BlobStore, tmp_path: Path, size: int) -> None:
    data = payload(size, seed=12)
    digest = blob_store.put(Reader(data)).digest
    target = tmp_path / "dl" / "adapter_model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"an older version")
    progress: list[int] = []
    blob_store.download_to(digest, target, progress=progress.append)
    assert target.read_bytes() == data
    assert sum(progress) == size
    assert os.listdir(target.parent) == [target.name]


def test_download_to_detects_corruption_at_rest(blob_store: BlobStore, tmp_path: Path) -> None:
    data = payload(SMALL, seed=13)
    digest = blob_store.put(Reader(data)).digest
    corrupt(blob_store, digest)
    target = tmp_path / "dl" / "file.bin"
    target.parent.mkdir()
    with pytest.raises(DigestMismatch, match="corrupt"):
        blob_store.download_to(digest, target)
    assert os.listdir(target.parent) == []  # neither the file nor a temp file
    with pytest.raises(DigestMismatch):
        b"".join(blob_store.read_verified(digest))
    blob_store.download_to(digest, target, verify=False)  # explicitly unverified
    assert target.stat().st_size == len(data)


# --- listing, sweeping, presigning, readiness ------------------------------------------------


def test_iter_blobs_lists_content_only(blob_store: BlobStore) -> None:
    datas = [payload(SMALL + i, seed=i) for i in range(3)]
    for data in datas:
        blob_store.put(Reader(data))
    abandon_uploads(blob_store, sha256(b"pending"))
    listed = {info.digest: info.size for info in blob_store.iter_blobs()}
    assert listed == {sha256(data): len(data) for data in datas}


def test_sweep_uploads_removes_stale_uploads(blob_store: BlobStore) -> None:
    kept = blob_store.put(Reader(payload(SMALL))).digest
    abandon_uploads(blob_store, sha256(b"pending"))
    removed = blob_store.sweep_uploads(datetime.now(UTC) + timedelta(minutes=1))
    assert removed == (1 if isinstance(blob_store, LocalBlobStore) else 2)
    assert stored_keys(blob_store) == {content_key(kept)}
    assert pending_multipart(blob_store) == []


def test_sweep_uploads_keeps_fresh_uploads(blob_store: BlobStore) -> None:
    if isinstance(blob_store, LocalBlobStore):
        (blob_store.root / "uploads").mkdir(parents=True)
        (blob_store.root / "uploads" / "in-progress").write_bytes(b"x")
    else:
        assert isinstance(blob_store, S3BlobStore)
        key = f"{blob_store.prefix}/uploads/in-progress"
        blob_store.client.put_object(Bucket=blob_store.bucket, Key=key, Body=b"x")
    assert blob_store.sweep_uploads(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert stored_keys(blob_store) == {"uploads/in-progress"}
    with pytest.raises(BadRequest, match="timezone-aware"):
        blob_store.sweep_uploads(datetime.now() - timedelta(hours=1))


def test_presign_get(blob_store: BlobStore) -> None:
    data = payload(SMALL, seed=14)
    digest = blob_store.put(Reader(data)).digest
    url = blob_store.presign_get(digest, 60)
    if isinstance(blob_store, LocalBlobStore):
        assert url is None
        return
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data


def test_check_passes_on_a_working_store(blob_store: BlobStore) -> None:
    blob_store.check()


def test_check_fails_on_unwritable_local_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        LocalBlobStore(tmp_path / "file" / "blobs").check()


def test_check_fails_on_missing_bucket(s3_server: str) -> None:
    store = S3BlobStore("no-such-bucket", client=make_s3_client(s3_server))
    with pytest.raises(StorageError):
        store.check()


def test_unreachable_endpoint_is_a_storage_error() -> None:
    config = Config(connect_timeout=1, retries={"max_attempts": 1})
    client = make_s3_client(f"http://127.0.0.1:{free_port()}", config)
    store = S3BlobStore("bucket", client=client)
    with pytest.raises(StorageError):
        store.check()
    with pytest.raises(StorageError):
        store.put(Reader(b"x"))


# --- configuration ---------------------------------------------------------------------------


def test_open_blob_store_file_urls(tmp_path: Path) -> None:
    store = open_blob_store(Settings(blob_url=f"file://{tmp_path}/blobs"))
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "blobs"
    plain = open_blob_store(Settings(blob_url="relative/blobs"))
    assert isinstance(plain, LocalBlobStore)
    assert plain.root == Path("relative/blobs")
    default = open_blob_store(Settings(home=tmp_path))
    assert isinstance(default, LocalBlobStore)
    assert default.root == (tmp_path / "blobs").resolve()


def test_open_blob_store_s3_url(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The store's own client uses boto3's standard credential chain: feed it fake ones.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    settings = Settings(
        blob_url=f"s3://{s3_bucket}/some/prefix/",
        s3_endpoint_url=s3_server,
        s3_region=REGION,
        s3_multipart_threshold=8 * MIB,
        s3_part_size=6 * MIB,
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (s3_bucket, "some/prefix")
    assert (store.multipart_threshold, store.part_size) == (8 * MIB, 6 * MIB)
    digest = store.put(Reader(b"hello")).digest
    assert store.key_for(digest) == f"some/prefix/{content_key(digest)}"
    assert b"".join(store.read_verified(digest)) == b"hello"


def test_presigned_urls_name_the_public_endpoint(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The API reaches S3 at one address, clients at another: presigned URLs carry the
    clients' one, signed for it (the host is part of the signature)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    public = s3_server.replace("127.0.0.1", "localhost")  # the same moto, by another name
    assert public != s3_server
    store = open_blob_store(Settings(blob_url=f"s3://{s3_bucket}/p", s3_endpoint_url=s3_server,
                                     s3_public_endpoint_url=public, s3_region=REGION))
    assert isinstance(store, S3BlobStore)
    digest = store.put(Reader(b"public bytes")).digest
    url = store.presign_get(digest, 60)
    assert url is not None and url.startswith(f"{public}/{s3_bucket}/p/")
    assert "X-Amz-Signature=" in url
    assert httpx.get(url).content == b"public bytes"
    # without a public endpoint, URLs name the store's own endpoint
    own = open_blob_store(Settings(blob_url=f"s3://{s3_bucket}/p", s3_endpoint_url=s3_server,
                                   s3_region=REGION)).presign_get(digest, 60)
    assert own is not None and own.startswith(f"{s3_server}/{s3_bucket}/p/")


@pytest.mark.parametrize(
    "url", ["ftp://host/blobs", "s3:///prefix", "file://otherhost/blobs", "gs://bucket/x"]
)
def test_open_blob_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        open_blob_store(Settings(blob_url=url))


def test_s3_store_refuses_bad_part_sizes() -> None:
    with pytest.raises(BadRequest, match="part size"):
        S3BlobStore("bucket", client=make_s3_client("http://127.0.0.1:1"), part_size=MIB)
