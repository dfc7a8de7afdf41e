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

from pathlib import Path
from urllib.parse import unquote, urlsplit

from registry.blobs.base import (
    CHUNK_SIZE,
    CONTENT_PREFIX,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    UPLOADS_PREFIX,
    BlobInfo,
    BlobStore,
    BlobWriter,
    Progress,
    SupportsRead,
    check_digest,
    content_key,
)
from registry.blobs.local import LocalBlobStore
from registry.blobs.s3 import S3BlobStore
from registry.config import Settings
from registry.errors import BadRequest

__all__ = [
    "CHUNK_SIZE",
    "CONTENT_PREFIX",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "UPLOADS_PREFIX",
    "BlobInfo",
    "BlobStore",
    "BlobWriter",
    "LocalBlobStore",
    "Progress",
    "S3BlobStore",
    "SupportsRead",
    "check_digest",
    "content_key",
    "open_blob_store",
]


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
            public_endpoint_url=settings.s3_public_endpoint_url,
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

