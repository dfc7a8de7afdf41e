"""What the client's parts share: API paths, query building, and the :class:`Core` protocol.

:class:`registry.client.Client` is assembled from mixins (:mod:`registry.client_bases`,
:mod:`registry.client_jobs`); their methods are typed against :class:`Core`, the transport
and version methods that ``Client`` itself defines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from registry import errors
from registry.client._transfer import LocalFile, Reporter
from registry.refs import parse_adapter_name, parse_ref

Params = Sequence[tuple[str, str]]


class Core(Protocol):
    """The part of :class:`registry.client.Client` its mixins build on."""

    fingerprint_cache_path: Path | None
    sleep: Callable[[float], None]

    def _send(
        self, method: str, path: str, *, params: Params | None = None, json: Any = None,
        body: Callable[[], Iterable[bytes]] | None = None,
        headers: Mapping[str, str] | None = None, idempotent: bool = True,
        stream: bool = False, follow: bool = False, accept: Collection[int] = (),
    ) -> httpx.Response: ...

    def _get(self, path: str, params: Params | None = None) -> Any: ...

    def _post(self, path: str, body: Any, *, idempotent: bool = False) -> Any: ...

    def _paginate(
        self, path: str, params: Params, limit: int | None
    ) -> Iterator[dict[str, Any]]: ...

    def _upload_missing(
        self, files: Sequence[LocalFile], report: Reporter, only: Sequence[str] | None = None
    ) -> list[LocalFile]: ...

    def version(self, ref: str) -> dict[str, Any]: ...


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


def adapter_path(name: str) -> str:
    ns, adapter = parse_adapter_name(name)
    return f"/api/v1/adapters/{ns}/{adapter}"


def version_path(ref: str, *, explicit: bool = False) -> str:
    """``/api/v1/adapters/<ns>/<name>/versions/<N|latest>`` of a reference."""
    r = parse_ref(ref)
    if r.channel:
        raise errors.BadRequest(f"{ref}: channel references are not supported here yet")
    if explicit and r.version is None:
        raise errors.BadRequest(f"{ref}: name an explicit version, e.g. {r.adapter}@3")
    sel = "latest" if r.version is None else str(r.version)
    return f"{adapter_path(r.adapter)}/versions/{sel}"


POLL_MIN, POLL_MAX, POLL_GROWTH = 0.2, 2.0, 1.5


def poll_until(
    client: Core, path: str, final: frozenset[str], timeout: float | None,
    progress: Callable[[dict[str, Any]], object] | None,
) -> dict[str, Any]:
    """GET ``path`` (every 0.2 s, backing off to 2 s) until its ``status`` is in ``final`` or
    ``timeout`` seconds have passed; the last document seen. ``progress`` hears every poll."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = POLL_MIN
    while True:
        doc: dict[str, Any] = client._get(path)
        if progress is not None:
            progress(doc)
        if doc["status"] in final:
            return doc
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return doc
            delay = min(delay, left)
        client.sleep(delay)
        delay = min(delay * POLL_GROWTH, POLL_MAX)
