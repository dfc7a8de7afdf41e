"""An httpx transport over urllib3, for blob downloads.

httpx's own transport (httpcore + h11) reads a body 64 KiB at a time and copies each read
several times on the way up; receiving 1 GiB that way costs about 1 CPU-second here, which
is as much as hashing and writing it together. urllib3 (boto3's HTTP layer, already a
dependency) reads straight from the socket's buffered reader in the size asked for; with
1 MiB reads it receives the same GiB in about 0.3 CPU-seconds. httpx documents plugging
urllib3 in as a custom transport; the client keeps everything else of httpx (redirects,
auth headers, base URL, error answers) and uses this transport only for blob bodies.

urllib3's errors are raised as the matching httpx exceptions, so callers handle one family:
:class:`httpx.ConnectError`/``ConnectTimeout`` before the request was sent,
:class:`httpx.ReadError`/``ReadTimeout``/``RemoteProtocolError`` while receiving (a body cut
short of its ``Content-Length`` included), which is what the client's resume logic catches.
Proxies are not handled here: with proxy variables set, httpx routes matching URLs through
its own proxy transports and never calls this one.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

#: Bytes asked of the socket per read (and the size of the chunks handed on).
READ_SIZE = 1024 * 1024


@contextmanager
def _as_httpx(request: httpx.Request, *, receiving: bool) -> Iterator[None]:
    """Re-raise urllib3's (and the socket's) errors as httpx's."""
    try:
        yield
    except NewConnectionError as exc:  # before ConnectTimeoutError, its base class
        raise httpx.ConnectError(str(exc), request=request) from exc
    except ConnectTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc), request=request) from exc
    except ReadTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc), request=request) from exc
    except (SSLError, ProxyError) as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except ProtocolError as exc:
        if receiving:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (HTTPError, OSError) as exc:
        kind = httpx.ReadError if receiving else httpx.ConnectError
        raise kind(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.SyncByteStream):
    """A response body as urllib3 receives it: raw (never decoded), READ_SIZE at a time."""

    def __init__(self, response: urllib3.BaseHTTPResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx(self._request, receiving=True):
            yield from self._response.stream(READ_SIZE, decode_content=False)
        self._done = True

    def close(self) -> None:
        if not self._done:
            # Unread bytes would poison a reused connection: drop it, never drain a blob.
            self._response.close()
        self._response.release_conn()


class URLLib3Transport(httpx.BaseTransport):
    """Sends httpx requests with a urllib3 pool (no redirects or retries of its own: the
    httpx client and its caller own those)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._pool: urllib3.PoolManager | None = None  # made on first use: a CLI command
        # that downloads nothing does not pay for loading the CA bundle a second time

    def _connections(self) -> urllib3.PoolManager:
        if self._pool is None:
            context = self._ssl_context or httpx.create_ssl_context()  # httpx's CA defaults
            self._pool = urllib3.PoolManager(ssl_context=context, retries=False)
        return self._pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read"))
        body = None if request.method in ("GET", "HEAD") else request.read()
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.multi_items():
            headers.add(name, value)
        with _as_httpx(request, receiving=False):
            response = self._connections().urlopen(
                request.method, str(request.url), body=body, headers=headers,
                redirect=False, retries=False, timeout=timeout,
                preload_content=False, decode_content=False,
            )
        return httpx.Response(
            response.status,
            headers=list(response.headers.items()),
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": response.reason.encode("ascii", "replace")
                        if response.reason else b""},
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
