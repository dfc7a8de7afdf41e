"""Blobs over HTTP: which ones the server lacks, uploads (a retry starts the file over), and
downloads into a :class:`registry.client._transfer.Sink`, resumed with ``Range`` after read
errors and checked against the size the manifest records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx

from registry import errors
from registry.client._http import Http, parse
from registry.client._transfer import (
    LocalFile,
    Progress,
    Reporter,
    Sink,
    corrupt_blob,
    file_chunks,
    range_start,
    stored_size,
)
from registry.wire import BlobOut, MissingOut


def missing_blobs(http: Http, digests: Sequence[str]) -> list[str]:
    body = {"digests": list(digests)}
    return http.post("/api/v1/blobs/missing", body, MissingOut, idempotent=True).missing


def upload_blob(http: Http, file: LocalFile, progress: Progress | None) -> BlobOut:
    report = progress if isinstance(progress, Reporter) else Reporter(progress)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        report(-sent)  # a retry starts over: take back what the failed attempt reported
        sent = 0
        for chunk in file_chunks(file):
            sent += len(chunk)
            report(len(chunk))
            yield chunk

    headers = {"Content-Length": str(file.size), "Content-Type": "application/octet-stream"}
    response = http.send("PUT", f"/api/v1/blobs/{file.digest}", body=body, headers=headers)
    return parse(BlobOut, response.json(), response)


def upload_missing(http: Http, files: Sequence[LocalFile], report: Reporter,
                   only: Sequence[str] | None = None) -> list[LocalFile]:
    """Upload the files the server lacks (or those of ``only``); the files uploaded."""
    by_digest = {f.digest: f for f in files}
    missing = list(only) if only is not None else missing_blobs(http, sorted(by_digest))
    todo = [by_digest[d] for d in missing if d in by_digest]
    report.start(sum(f.size for f in todo), "upload")
    for file in todo:
        upload_blob(http, file, report)
    return todo


def body_chunks(response: httpx.Response) -> Iterator[bytes]:
    """A download's body as received: the raw stream (no decoder or re-chunking on the way)
    unless the server encoded it (e.g. gzip) or the body was read already (a response built
    in memory), which ``iter_bytes`` handles."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and not response.is_stream_consumed:
        return response.iter_raw()
    return response.iter_bytes()


def download(http: Http, digest: str, sink: Sink, size: int) -> None:
    """Stream the blob into ``sink`` from its current size, resuming after read errors.
    A stored blob of another size than ``size`` is a DigestMismatch (see :func:`_blob`)."""
    attempt = 0
    while sink.size < size or size == 0:
        response = _blob(http, digest, sink.size, size)
        try:
            start = range_start(response.status_code, response.headers.get("content-range"))
            if sink.size and start != sink.size:
                sink.restart()  # the server (or the presigned URL) ignored our Range
            sink.write_from(body_chunks(response))
            return
        except httpx.TransportError as exc:
            if attempt >= http.retry.retries:
                raise http.network_error(exc) from exc
            http.sleep(http.retry.delay(attempt))
            attempt += 1
        finally:
            response.close()


def _blob(http: Http, digest: str, offset: int, size: int) -> httpx.Response:
    """The answer to a GET of the blob from ``offset``. If it shows that the store holds
    another size than ``size`` (the server's corrupt_blob; a presigned store's own
    Content-Length, Content-Range or 416), a DigestMismatch instead: a body cut short by
    a corrupt blob must not pass for a network failure, retried and then "cannot reach"."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = http.send("GET", f"/api/v1/blobs/{digest}", headers=headers, stream=True,
                             follow=True, accept=(416,))
    except errors.CorruptBlob as err:
        raise corrupt_blob(digest, size, err.extra.get("stored_size")) from None
    stored = stored_size(response.status_code, response.headers)
    if response.status_code == 416 or (stored is not None and stored != size):
        response.close()
        raise corrupt_blob(digest, size, stored)
    return response
