"""Blob upload (streamed, verified while streaming) and download (Range, ETag, presign)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from registry.api import schemas as s
from registry.api.etags import etag_matches
from registry.api.streams import parse_range, receive_blob
from registry.blobs import BlobInfo
from registry.errors import BadRequest, CorruptBlob, PayloadTooLarge
from registry.manifest import check_digest
from registry.services import blobs
from registry.web.context import CtxDep

log = logging.getLogger("lorareg.api")
router = APIRouter(prefix="/api/v1/blobs", tags=["blobs"])
# Content-addressed: a digest names the same bytes forever.
IMMUTABLE = "public, max-age=31536000, immutable"


def _counted(ctx: CtxDep, chunks: Iterator[bytes], digest: str, start: int, end: int,
             ) -> Iterator[bytes]:
    counter = ctx.state.metrics.bytes.labels("out")
    at = start
    for chunk in chunks:
        counter.inc(len(chunk))
        at += len(chunk)
        yield chunk
    if at < end:  # too late for an error answer: the connection is cut short (see _stream)
        raise _corrupt(f"blob sha256:{digest} is corrupt in the blob store: it ended at byte "
                       f"{at} of {end}; the answer was cut short", digest=digest)


def _stream(ctx: CtxDep, digest: str, start: int, end: int, size: int) -> Iterator[bytes]:
    """The stored bytes [start, end), checked for a first chunk before the answer starts.

    A blob shorter in the store than recorded (truncated or replaced behind our back) is
    found here, while an error can still be answered, when the range starts past its end.
    Cut short after the answer started, the body ends early and the connection is closed;
    the client resumes with ``Range`` from the bytes it has, and that request finds it here.
    """
    try:
        chunks = ctx.store.open(digest, start, end)
    except BadRequest:  # the range starts past the stored end (parse_range checked it on size)
        chunks = iter(())
    first = next(chunks, b"") if end > start else b""
    if end > start and not first:
        stored = ctx.store.stat(digest).size
        raise _corrupt(
            f"blob sha256:{digest} is corrupt in the blob store: it holds {stored} bytes, "
            f"the registry recorded {size}", digest=digest, expected_size=size,
            stored_size=stored)
    return _counted(ctx, itertools.chain([first], chunks), digest, start, end)


def _corrupt(detail: str, **extra: Any) -> CorruptBlob:
    log.error(detail)  # an operator must restore the blob: every pull of it fails until then
    return CorruptBlob(detail, **extra)


@router.post("/missing", response_model=s.MissingOut)
def missing(body: s.DigestsIn, ctx: CtxDep) -> s.MissingOut:
    """Which of these digests the caller must upload: any token that may push somewhere (or
    register bases) may ask; a namespace-scoped one learns only about its namespace's blobs
    when dedup is per namespace (``LORAREG_BLOB_DEDUP``)."""
    ctx.require_upload()
    with ctx.tx() as session:
        return s.MissingOut(missing=blobs.missing(session, body.digests, ctx.blob_view))


def _declared_length(request: Request, limit: int) -> int:
    raw = request.headers.get("content-length")
    if raw is None or not raw.isdigit():
        raise BadRequest("blob uploads need a Content-Length header")
    size = int(raw)
    if size > limit:
        raise PayloadTooLarge(f"blob of {size} bytes exceeds the limit of {limit} bytes")
    return size


async def _receive(ctx: CtxDep, request: Request, digest: str, size: int) -> BlobInfo:
    """The body into the store, in one of the caller's upload slots (429 when none is free,
    before any byte is read); no thread waits on the client (registry/api/streams.py)."""
    uploads, settings = ctx.state.uploads, ctx.state.settings
    with uploads.slot(_uploader(ctx, request)):
        return await receive_blob(
            lambda: ctx.store.writer(digest=digest, size=size), request.stream(),
            read_timeout=settings.upload_read_timeout_seconds, limiter=uploads.threads)


def _uploader(ctx: CtxDep, request: Request) -> str:
    """Whose upload slots: the token's, or the client address's when auth is off."""
    if ctx.principal.token_id is not None:
        return f"token:{ctx.principal.token_id}"
    return f"address:{request.client.host if request.client else 'unknown'}"


@router.put("/{digest}", status_code=201, response_model=s.BlobOut,
            responses={200: {"model": s.BlobOut}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload(digest: str, request: Request, ctx: CtxDep, response: Response) -> s.BlobOut:
    """Stream the body into the store; it becomes visible only if it hashes to ``digest``."""
    ctx.require_upload()
    check_digest(digest)
    size = _declared_length(request, ctx.state.settings.max_blob_size)
    with ctx.tx() as session:
        if not blobs.missing(session, [digest], ctx.blob_view):
            response.status_code = 200
            return s.BlobOut(digest=digest, size=blobs.get(session, digest).size)
    info = await _receive(ctx, request, digest, size)
    with ctx.tx() as session:
        blobs.record(session, info, ctx.blob_view, ctx.actor)
    ctx.state.metrics.bytes.labels("in").inc(info.size)
    return s.BlobOut(digest=info.digest, size=info.size)


@router.get("/{digest}", response_model=None)
@router.head("/{digest}", response_model=None)
def download(digest: str, request: Request, ctx: CtxDep) -> Response:
    """Stream a blob; ``Range`` gives 206; presigned redirect when the store supports it."""
    ctx.require("read", ctx.principal.namespace)
    with ctx.tx() as session:
        size = blobs.readable(session, check_digest(digest), ctx.blob_view).size
    settings = ctx.state.settings
    if settings.presign_downloads:
        url = ctx.store.presign_get(digest, settings.presign_ttl_seconds)
        if url:
            return RedirectResponse(url, status_code=307)
    etag = f'"{digest}"'
    if etag_matches(request.headers.get("if-none-match"), etag):  # before Range (RFC 9110)
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
    span = parse_range(request.headers.get("range"), size)
    start, end = span or (0, size)
    headers = {"ETag": etag, "Accept-Ranges": "bytes",
               "Content-Length": str(end - start), "Cache-Control": IMMUTABLE}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    code = 206 if span else 200
    if request.method == "HEAD":
        return Response(status_code=code, headers=headers)
    return StreamingResponse(_stream(ctx, digest, start, end, size), status_code=code,
                             headers=headers, media_type="application/octet-stream")
