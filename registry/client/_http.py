"""The one HTTP core every resource module of the client sends through: retries, error
answers turned into :mod:`registry.errors` classes, and answers parsed into the wire models.

Retries (exponential backoff with jitter, ``Retry-After`` honoured): connection failures are
retried for every call, since the request never reached the server; 429 answers too; read
failures and 5xx answers only for idempotent calls. A ``corrupt_blob`` 500 (a stored blob
shorter than recorded) is not retried: no retry can help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from registry import __version__, errors
from registry.client._retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from registry.client._transport import URLLib3Transport

Params = Sequence[tuple[str, str]]
M = TypeVar("M", bound=BaseModel)

PAGE_SIZE = 100
POLL_MIN, POLL_MAX, POLL_GROWTH = 0.2, 2.0, 1.5


def query(**values: Any) -> list[tuple[str, str]]:
    """Query parameters without Nones; lists become repeated parameters."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        out.extend((key, str(v)) for v in items)
    return out


def label_params(labels: Mapping[str, str] | Sequence[str] | None) -> list[str] | None:
    """``{"k": "v"}``, ``["k=v"]`` or ``"k=v"`` -> repeated ``label`` values."""
    if labels is None:
        return None
    if isinstance(labels, str):
        return [labels]
    if isinstance(labels, Mapping):
        return [f"{k}={v}" for k, v in labels.items()]
    return list(labels)


class Http:
    """Two httpx clients to one server (JSON calls, and blob bodies through urllib3 unless the
    caller chose the transport), the retry policy and the clock it sleeps on."""

    def __init__(self, url: str, token: str | None, *, timeout: float, retries: int,
                 transport: httpx.BaseTransport | None) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"lorareg-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.api = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                transport=transport)
        # Blob bodies go through urllib3 (see registry.client._transport, and send's
        # ``stream``), unless the caller chose the transport.
        self.blobs = self.api if transport is not None else httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=URLLib3Transport())
        self.timeout = timeout
        self.retry = RetryPolicy(retries=retries)
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self.api.close()
        self.blobs.close()

    # -- sending -------------------------------------------------------------------------

    def send(
        self, method: str, path: str, *, params: Params | None = None, json: Any = None,
        body: Callable[[], Iterable[bytes]] | None = None, headers: Mapping[str, str] | None = None,
        idempotent: bool = True, stream: bool = False, follow: bool = False,
        accept: Collection[int] = (), read_timeout: float | None = None,
    ) -> httpx.Response:
        """Send with retries; return a 2xx response (or one of the ``accept`` statuses) or
        raise the matching RegistryError. A ``stream`` answer (a blob body) comes through the
        urllib3 transport. ``read_timeout`` overrides the client's for an answer the server
        holds on purpose (a long poll)."""
        http = self.blobs if stream else self.api
        timeout = httpx.Timeout(self.timeout, read=read_timeout) if read_timeout else None
        attempt = 0
        while True:
            request = http.build_request(
                method, path, params=tuple(params or ()), json=json, headers=headers,
                content=body() if body else None,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = http.send(request, stream=stream, follow_redirects=follow)
            except httpx.TransportError as exc:
                retryable = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not retryable or attempt >= self.retry.retries:
                    raise self.network_error(exc) from exc
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
                raise error_from(response)
            return response

    def _should_retry(self, response: httpx.Response, attempt: int, idempotent: bool) -> bool:
        if response.status_code not in RETRY_STATUSES or attempt >= self.retry.retries:
            return False
        return (idempotent or response.status_code == 429) and not _hopeless(response)

    def network_error(self, exc: httpx.TransportError) -> errors.RegistryError:
        """``cannot reach <origin>: <reason>`` (exit 6)."""
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out after {self.timeout:g}s ({type(exc).__name__})"
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

    # -- typed answers -------------------------------------------------------------------

    def call(self, method: str, path: str, model: type[M], *, params: Params | None = None,
             json: Any = None, idempotent: bool = True) -> M:
        """One request whose answer is ``model``."""
        response = self.send(method, path, params=params, json=json, idempotent=idempotent)
        return parse(model, response.json(), response)

    def get(self, path: str, model: type[M], params: Params | None = None) -> M:
        return self.call("GET", path, model, params=params)

    def post(self, path: str, body: Any, model: type[M], *, idempotent: bool = False) -> M:
        return self.call("POST", path, model, json=body, idempotent=idempotent)

    def get_list(self, path: str, item: type[M], params: Params | None = None) -> list[M]:
        """A GET answered with a bare JSON array of ``item``."""
        response = self.send("GET", path, params=params)
        return [parse(item, row, response) for row in response.json()]

    def paginate(self, path: str, item: type[M], params: Params, limit: int | None
                 ) -> Iterator[M]:
        """Every item of a cursor-paginated list (a :class:`registry.wire.Page`), up to
        ``limit`` items."""
        remaining, cursor = limit, None
        while remaining is None or remaining > 0:
            size = PAGE_SIZE if remaining is None else min(remaining, PAGE_SIZE)
            page_query = [*params, ("limit", str(size))] + ([("cursor", cursor)] if cursor else [])
            response = self.send("GET", path, params=page_query)
            page = response.json()
            items = [parse(item, row, response) for row in page["items"][:remaining]]
            yield from items
            if remaining is not None:
                remaining -= len(items)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def poll(self, path: str, model: type[M], done: Callable[[M], bool], timeout: float | None,
             progress: Callable[[M], object] | None) -> M:
        """GET ``path`` (every 0.2 s, backing off to 2 s) until ``done`` or ``timeout``
        seconds have passed; the last answer seen. ``progress`` hears every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_MIN
        while True:
            answer = self.get(path, model)
            if progress is not None:
                progress(answer)
            if done(answer):
                return answer
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return answer
                delay = min(delay, left)
            self.sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX)


def parse(model: type[M], data: Any, response: httpx.Response) -> M:
    """``data`` (from ``response``) as ``model``; an answer that is not one (a server of
    another version, a proxy's page) is a RegistryError naming what did not fit, not a
    traceback."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        raise errors.RegistryError(
            f"{response.request.method} {response.request.url.path} answered HTTP "
            f"{response.status_code} with no {model.__name__}: {where}: {first['msg']}",
            status=response.status_code) from None


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


def error_from(response: httpx.Response) -> errors.RegistryError:
    """The :mod:`registry.errors` class a non-2xx answer stands for, rebuilt from its problem
    document (or from its status and a snippet of its body, when it is not one)."""
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
