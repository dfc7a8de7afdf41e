"""The :class:`Client` class (see :mod:`registry.client` for its contract).

Errors: every non-2xx answer is raised as the matching :mod:`registry.errors` class, rebuilt
from the problem document (so ``err.exit_code`` is the CLI exit code and ``err.extra`` holds
the helpful fields). A server that cannot be reached raises :class:`RegistryError` itself
(exit code 6) with a ``cannot reach <url>: ...`` detail.

Retries (exponential backoff with jitter, ``Retry-After`` honoured): connection failures are
retried for every call, since the request never reached the server; 429 answers too; read
failures and 5xx answers only for idempotent calls: reads, blob uploads, ``blobs/missing`` and
version creation (identical content returns the existing version). A ``corrupt_blob`` 500 (a
stored blob shorter than recorded) is not retried: no retry can help.

Progress: ``push`` and ``pull`` accept either a callable receiving byte increments (negative
when a retried upload starts over) or a tqdm-like object; the latter first gets
``reset(total=<bytes to transfer>)``, so one bar covers the whole transfer.

The class is assembled from parts: local files, hashing and the resumable verified download
are in :mod:`registry.client._transfer`; base models in :mod:`registry.client._bases`;
merges and jobs in :mod:`registry.client._jobs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from registry import __version__, errors
from registry.client._bases import BasesMixin
from registry.client._channels import ChannelsMixin
from registry.client._core import Params, adapter_path, label_params, query, version_path
from registry.client._jobs import JobsMixin
from registry.client._ops import OpsMixin
from registry.client._pools import PoolsMixin
from registry.client._retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from registry.client._transfer import (
    LocalFile,
    Progress,
    Reporter,
    Sink,
    check_dest,
    corrupt_blob,
    download_folder,
    file_chunks,
    range_start,
    scan_folder,
    stored_size,
)
from registry.client._transport import URLLib3Transport
from registry.manifest import FileEntry, manifest_digest
from registry.refs import parse_adapter_name, parse_base_ref
from registry.safetensors_io import ADAPTER_LIMITS, HeaderLimits, read_header

PAGE_SIZE = 100


def metric_rows(metrics: Mapping[str, float] | Sequence[Mapping[str, Any]] | None) -> list[Any]:
    """``{"accuracy": 0.9}`` or ``[{"key":..., "value":..., "dataset":...}]`` -> API rows."""
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        return [{"key": k, "value": float(v)} for k, v in metrics.items()]
    return [dict(m) for m in metrics]


def _hopeless(response: httpx.Response) -> bool:
    """A 500 whose problem says that no retry can help (a corrupt stored blob)."""
    if response.status_code != errors.CorruptBlob.status_code:
        return False
    if "json" not in response.headers.get("content-type", ""):
        return False
    response.read()  # a problem document: small
    try:
        problem = response.json()
    except ValueError:
        return False
    return isinstance(problem, dict) and problem.get("code") == errors.CorruptBlob.code


def body_chunks(response: httpx.Response) -> Iterator[bytes]:
    """A download's body as received: the raw stream (no decoder or re-chunking on the way)
    unless the server encoded it (e.g. gzip) or the body was read already (a response built
    in memory), which ``iter_bytes`` handles."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and not response.is_stream_consumed:
        return response.iter_raw()
    return response.iter_bytes()


#: The weights file the server parses at push (registry.services.inspect.WEIGHTS_FILE).
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_weights_header(folder: Path, limits: HeaderLimits) -> None:
    """Refuse, before hashing or uploading anything, a weights header the server would refuse
    (InvalidSafetensors, from the same parser and caps)."""
    weights = folder / ADAPTER_WEIGHTS
    if weights.is_file():  # a folder without it is refused by the server, with its message
        read_header(weights, limits)


# ------------------------------------------------------------------------------- client


class Client(BasesMixin, JobsMixin, ChannelsMixin, OpsMixin, PoolsMixin):
    """A lorareg server, reached over HTTP. Safe to reuse; not safe to share across threads."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        fingerprint_cache_path: Path | None = None,
        safetensors_limits: HeaderLimits = ADAPTER_LIMITS,
    ) -> None:
        self.url = url.rstrip("/")
        self.fingerprint_cache_path = fingerprint_cache_path
        # Set it to the server's LORAREG_MAX_SAFETENSORS_* if they differ from the defaults.
        self.safetensors_limits = safetensors_limits
        headers = {"User-Agent": f"lorareg-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        # Blob bodies go through urllib3 (see registry.client._transport, and _send's
        # ``stream``), unless the caller chose the transport.
        self._blob_http = self._http if transport is not None else httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=URLLib3Transport()
        )
        self._timeout = timeout
        self.retry = RetryPolicy(retries=retries)
        self.sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        self._http.close()
        self._blob_http.close()

    # -- transport -----------------------------------------------------------------------

    def _send(
        self, method: str, path: str, *, params: Params | None = None, json: Any = None,
        body: Callable[[], Iterable[bytes]] | None = None, headers: Mapping[str, str] | None = None,
        idempotent: bool = True, stream: bool = False, follow: bool = False,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx response (or one of the ``accept`` statuses) or
        raise the matching RegistryError. A ``stream`` answer (a blob body) comes through the
        urllib3 transport."""
        http = self._blob_http if stream else self._http
        attempt = 0
        while True:
            request = http.build_request(
                method, path, params=tuple(params or ()), json=json, headers=headers,
                content=body() if body else None,
            )
            try:
                response = http.send(request, stream=stream, follow_redirects=follow)
            except httpx.TransportError as exc:
                retryable = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not retryable or attempt >= self.retry.retries:
                    raise self._network_error(exc) from exc
                self.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if self._should_retry(response, attempt, idempotent):
                response.close()
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                self.sleep(self.retry.delay(attempt, retry_after))
                attempt += 1
                continue
            if not response.is_success and response.status_code not in accept:
                raise self._error_from(response)
            return response

    def _should_retry(self, response: httpx.Response, attempt: int, idempotent: bool) -> bool:
        if response.status_code not in RETRY_STATUSES or attempt >= self.retry.retries:
            return False
        return (idempotent or response.status_code == 429) and not _hopeless(response)

    def _network_error(self, exc: httpx.TransportError) -> errors.RegistryError:
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out after {self._timeout:g}s ({type(exc).__name__})"
        else:
            reason = str(exc) or type(exc).__name__
        return errors.RegistryError(f"cannot reach {self._origin(exc)}: {reason}")

    def _origin(self, exc: httpx.TransportError) -> str:
        """Our server's URL, or the origin of a redirect target (e.g. presigned S3)."""
        try:
            url = exc.request.url
        except RuntimeError:  # the exception carries no request
            return self.url
        if str(url).startswith(self.url):
            return self.url
        return f"{url.scheme}://{url.netloc.decode()}"

    @staticmethod
    def _error_from(response: httpx.Response) -> errors.RegistryError:
        response.read()
        response.close()
        problem: dict[str, Any] | None = None
        if "json" in response.headers.get("content-type", ""):
            try:
                data = response.json()
            except ValueError:
                data = None
            problem = data if isinstance(data, dict) else None
        if problem is None or not ({"detail", "title", "code"} & problem.keys()):
            snippet = " ".join(response.text.split())[:200]
            problem = {"detail": f"{response.request.method} {response.request.url.path} "
                                 f"answered HTTP {response.status_code}: {snippet}".rstrip(": ")}
        return errors.from_problem(problem, response.status_code)

    def _get(self, path: str, params: Params | None = None) -> Any:
        return self._send("GET", path, params=params).json()

    def _post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return self._send("POST", path, json=body, idempotent=idempotent).json()

    def _paginate(self, path: str, params: Params, limit: int | None) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, up to ``limit`` items."""
        remaining, cursor = limit, None
        while remaining is None or remaining > 0:
            size = PAGE_SIZE if remaining is None else min(remaining, PAGE_SIZE)
            query = [*params, ("limit", str(size))] + ([("cursor", cursor)] if cursor else [])
            page = self._get(path, query)
            items: list[dict[str, Any]] = page["items"][:remaining]
            yield from items
            if remaining is not None:
                remaining -= len(items)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # -- service -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Liveness of the server (``GET /healthz``)."""
        result: dict[str, Any] = self._get("/healthz")
        return result

    def server_version(self) -> dict[str, Any]:
        """``{"version": ...}`` of the server."""
        result: dict[str, Any] = self._get("/api/v1/version")
        return result

    def whoami(self) -> dict[str, Any]:
        """Who the token acts as: ``{actor, role, namespace, auth}``."""
        result: dict[str, Any] = self._get("/api/v1/whoami")
        return result

    # -- namespaces and adapters ---------------------------------------------------------

    def namespaces(self) -> list[dict[str, Any]]:
        """All namespaces visible to the token."""
        return list(self._paginate("/api/v1/namespaces", [], None))

    def create_namespace(self, name: str, description: str = "") -> dict[str, Any]:
        """Create a namespace (admin)."""
        result: dict[str, Any] = self._post(
            "/api/v1/namespaces", {"name": name, "description": description}
        )
        return result

    def adapters(
        self, namespace: str | None = None, label: Mapping[str, str] | Sequence[str] | None = None,
        q: str | None = None, sort: str | None = None, limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Adapters, following cursors; ``label`` is ``{"k": "v"}`` or ``["k=v"]``."""
        params = query(namespace=namespace, label=label_params(label), q=q, sort=sort)
        return self._paginate("/api/v1/adapters", params, limit)

    def adapter(self, name: str) -> dict[str, Any]:
        """One adapter, ``ns/name``."""
        result: dict[str, Any] = self._get(adapter_path(name))
        return result

    def update_adapter(
        self, name: str, description: str | None = None, labels: Mapping[str, str] | None = None,
        remove_labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Change an adapter's description and labels (set ``labels``, drop ``remove_labels``)."""
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if labels is not None:
            body["labels"] = dict(labels)
        if remove_labels is not None:
            body["remove_labels"] = list(remove_labels)
        result: dict[str, Any] = self._send(
            "PATCH", adapter_path(name), json=body, idempotent=False
        ).json()
        return result

    # -- versions ------------------------------------------------------------------------

    def versions(
        self, adapter: str | None = None, *, namespace: str | None = None,
        status: str | None = None, labels: Mapping[str, str] | Sequence[str] | None = None,
        base: str | None = None, metric_filters: Sequence[str] = (), sort: str | None = None,
        order: str | None = None, limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Versions of one adapter, or across adapters (optionally of one namespace).

        ``metric_filters`` look like ``"accuracy>=0.9"``; ``sort`` is ``version``,
        ``created_at`` or ``metric.KEY``; ``order`` is ``asc`` or ``desc``.
        """
        path = f"{adapter_path(adapter)}/versions" if adapter else "/api/v1/versions"
        params = query(
            namespace=namespace, status=status, label=label_params(labels), base=base,
            metric=list(metric_filters), sort=sort, order=order,
        )
        return self._paginate(path, params, limit)

    def version(self, ref: str) -> dict[str, Any]:
        """One version: ``ns/name@3``, ``ns/name@latest``, ``ns/name`` (= latest) or
        ``ns/name:prod`` (the channel's stable version)."""
        result: dict[str, Any] = self._get(version_path(self.pin_channel(ref)))
        return result

    def yank(self, ref: str, reason: str) -> dict[str, Any]:
        """Mark an explicit version (``ns/name@3``) as yanked; it stays pullable by number."""
        result: dict[str, Any] = self._post(
            f"{version_path(ref, explicit=True)}/yank", {"reason": reason}
        )
        return result

    def unyank(self, ref: str, reason: str = "") -> dict[str, Any]:
        """Undo a yank of an explicit version."""
        result: dict[str, Any] = self._post(
            f"{version_path(ref, explicit=True)}/unyank", {"reason": reason}
        )
        return result

    # -- metrics -------------------------------------------------------------------------

    def log_metrics(
        self, ref: str, metrics: Mapping[str, float] | Sequence[Mapping[str, Any]],
        dataset: str | None = None, split: str | None = None,
    ) -> dict[str, Any]:
        """Record metric values on a version; ``dataset``/``split`` fill rows that lack them."""
        rows = metric_rows(metrics)
        for row in rows:
            if dataset is not None:
                row.setdefault("dataset", dataset)
            if split is not None:
                row.setdefault("split", split)
        result: dict[str, Any] = self._post(f"{version_path(ref)}/metrics", {"metrics": rows})
        return result

    def metric_history(self, ref: str) -> list[dict[str, Any]]:
        """Every recorded metric value of a version, oldest first."""
        items: list[dict[str, Any]] = self._get(f"{version_path(ref)}/metrics")["items"]
        return items

    # -- push ----------------------------------------------------------------------------

    def push(
        self, path: str | Path, adapter: str, base: str,
        metrics: Mapping[str, float] | Sequence[Mapping[str, Any]] | None = None,
        labels: Mapping[str, str] | None = None, provenance: Mapping[str, str] | None = None,
        description: str | None = None, progress: Progress | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Push an adapter folder as a new version of ``adapter`` trained on ``base``.

        Only blobs the server lacks are uploaded. Pushing identical content again uploads
        nothing and returns the existing version; ``idempotency_key`` names one pipeline step
        (its retries return the version it created; reused with other content: Conflict).
        The result is the version plus ``created``, ``uploaded_bytes`` and
        ``uploaded_digests``.
        """
        hub_id, revision = parse_base_ref(base)
        parse_adapter_name(adapter)
        check_weights_header(Path(path), self.safetensors_limits)
        files = scan_folder(Path(path))
        report = Reporter(progress)
        uploaded = self._upload_missing(files, report)
        body = {
            "files": [f.entry() for f in files],
            "base": {"hub_id": hub_id, "revision": revision},
            "metrics": metric_rows(metrics),
            "labels": dict(labels or {}),
            "provenance": dict(provenance or {}),
            "description": description,
        }
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        version = self._create_version(adapter, body, files, report, uploaded)
        return {
            **version,
            "uploaded_bytes": sum(f.size for f in uploaded),
            "uploaded_digests": [f.digest for f in uploaded],
        }

    def missing_blobs(self, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` the server does not hold."""
        missing: list[str] = self._post(
            "/api/v1/blobs/missing", {"digests": list(digests)}, idempotent=True
        )["missing"]
        return missing

    def upload_blob(self, file: LocalFile, progress: Progress | None = None) -> dict[str, Any]:
        """Stream one file to ``PUT /blobs/<digest>``; the server verifies the hash."""
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
        result: dict[str, Any] = self._send(
            "PUT", f"/api/v1/blobs/{file.digest}", body=body, headers=headers
        ).json()
        return result

    def _upload_missing(self, files: Sequence[LocalFile], report: Reporter,
                        only: Sequence[str] | None = None) -> list[LocalFile]:
        by_digest = {f.digest: f for f in files}
        missing = list(only) if only is not None else self.missing_blobs(sorted(by_digest))
        todo = [by_digest[d] for d in missing if d in by_digest]
        report.start(sum(f.size for f in todo), "upload")
        for file in todo:
            self.upload_blob(file, report)
        return todo

    def _create_version(
        self, adapter: str, body: dict[str, Any], files: Sequence[LocalFile],
        report: Reporter, uploaded: list[LocalFile],
    ) -> dict[str, Any]:
        path = f"{adapter_path(adapter)}/versions"
        try:
            response = self._send("POST", path, json=body, idempotent=True)
        except errors.BadRequest as err:
            # A blob vanished between "missing" and now (e.g. garbage collection): upload
            # what the server names, once, and try again.
            missing = err.extra.get("missing")
            if not missing or not isinstance(missing, list):
                raise
            uploaded.extend(self._upload_missing(files, report, only=missing))
            response = self._send("POST", path, json=body, idempotent=True)
        version: dict[str, Any] = response.json()
        version.setdefault("created", response.status_code == 201)
        return version

    # -- pull ----------------------------------------------------------------------------

    def pull(
        self, ref: str, dest: str | Path, *, progress: Progress | None = None,
        overwrite: bool = False, merged: bool = False,
    ) -> dict[str, Any]:
        """Download a version (or, with ``merged``, its merged model) into the folder ``dest``,
        atomically and verified.

        Files land in ``.<dest>.partial-<manifest digest[:12]>`` next to ``dest`` (``merged-``
        before the digest for a merged model); an interrupted pull resumes there (whole
        verified files are kept, a partial file continues with a Range request). Every file's
        sha256 is checked; a mismatch deletes the file and raises DigestMismatch. The folder is
        renamed to ``dest`` at the end; an existing ``dest`` is replaced only with
        ``overwrite``. The result is the version (or the merged artifact, see :meth:`merged`)
        plus ``path`` and ``downloaded_bytes``.
        """
        dest = Path(dest).resolve()
        ref = self.pin_channel(ref)  # ns/name:prod -> ns/name@<stable>
        if merged:
            source = self.merged(ref)
            entries = [FileEntry(f["path"], f["digest"], int(f["size"])) for f in source["files"]]
            key = f"merged-{manifest_digest(entries)[:12]}"
        else:
            source = self.version(ref)
            key = source["manifest_digest"][:12]
        check_dest(dest, overwrite)
        downloaded = download_folder(source["files"], dest, key, self._download,
                                     Reporter(progress), overwrite=overwrite)
        return {**source, "path": str(dest), "downloaded_bytes": downloaded}

    def _download(self, digest: str, sink: Sink, size: int) -> None:
        """Stream the blob into ``sink`` from its current size, resuming after read errors.
        A stored blob of another size than ``size`` is a DigestMismatch (see _blob)."""
        attempt = 0
        while sink.size < size or size == 0:
            response = self._blob(digest, sink.size, size)
            try:
                start = range_start(response.status_code, response.headers.get("content-range"))
                if sink.size and start != sink.size:
                    sink.restart()  # the server (or the presigned URL) ignored our Range
                sink.write_from(body_chunks(response))
                return
            except httpx.TransportError as exc:
                if attempt >= self.retry.retries:
                    raise self._network_error(exc) from exc
                self.sleep(self.retry.delay(attempt))
                attempt += 1
            finally:
                response.close()

    def _blob(self, digest: str, offset: int, size: int) -> httpx.Response:
        """The answer to a GET of the blob from ``offset``. If it shows that the store holds
        another size than ``size`` (the server's corrupt_blob; a presigned store's own
        Content-Length, Content-Range or 416), a DigestMismatch instead: a body cut short by
        a corrupt blob must not pass for a network failure, retried and then "cannot reach"."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self._send("GET", f"/api/v1/blobs/{digest}", headers=headers,
                                  stream=True, follow=True, accept=(416,))
        except errors.CorruptBlob as err:
            raise corrupt_blob(digest, size, err.extra.get("stored_size")) from None
        stored = stored_size(response.status_code, response.headers)
        if response.status_code == 416 or (stored is not None and stored != size):
            response.close()
            raise corrupt_blob(digest, size, stored)
        return response

    # -- audit, tokens ------------------------------------------------------------------

    def audit(
        self, namespace: str | None = None, target: str | None = None,
        action: str | None = None, limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Audit events, newest first, following cursors."""
        params = query(namespace=namespace, target=target, action=action)
        return self._paginate("/api/v1/audit", params, limit)

    def create_token(
        self, name: str, role: str, namespace: str | None = None,
        expires_in_days: int | None = None,
    ) -> dict[str, Any]:
        """Create an API token; the result holds the plaintext ``token``, shown only once."""
        body: dict[str, Any] = {"name": name, "role": role, "namespace": namespace}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        result: dict[str, Any] = self._post("/api/v1/tokens", body)
        return result

    def tokens(self) -> list[dict[str, Any]]:
        """Tokens (without secrets)."""
        items: list[dict[str, Any]] = self._get("/api/v1/tokens")["items"]
        return items

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token by id; revoking twice is harmless."""
        self._send("DELETE", f"/api/v1/tokens/{quote(token_id, safe='')}")
