"""Serving pools: create and change pools, bind channels, pin versions, read desired sets,
and check a version against a pool.

Binding and pinning are idempotent (``PUT``), so they are retried like reads; creating a pool,
changing it, unbinding and unpinning are not re-sent once they may have reached the server.
A refusal because a version would not serve correctly is
:class:`registry.errors.IncompatiblePool` (HTTP 422, exit 4) naming each pool and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from registry import errors
from registry.client._channels import pin_channel
from registry.client._http import Http
from registry.client._paths import POOLS, pool_path
from registry.refs import parse_pool_name, parse_ref
from registry.wire import DesiredOut, Page, PoolCheckOut, PoolDetailOut, PoolOut


@dataclass(frozen=True)
class PoolSettings:
    """A new pool's engine settings (``vllm serve`` flags; see ``Client.create_pool``)."""

    engine: str
    base: str
    model_id: str
    served_model_name: str | None
    architecture: str | None
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int | None
    dtype: str
    target_modules: list[str] | None
    max_adapter_memory: int | None
    drain_seconds: int


def pools(http: Http, namespace: str | None) -> list[PoolOut]:
    params = [("namespace", namespace)] if namespace else []
    return http.get(POOLS, Page[PoolOut], params).items


def pool(http: Http, name: str) -> PoolDetailOut:
    return http.get(pool_path(name), PoolDetailOut)


def create_pool(http: Http, name: str, settings: PoolSettings) -> PoolDetailOut:
    ns, pool_name = parse_pool_name(name)
    body = {"name": pool_name, **asdict(settings)}
    return http.post(f"{POOLS}/{ns}", body, PoolDetailOut)


def update_pool(http: Http, name: str, clear: Sequence[str], changes: dict[str, Any]
                ) -> PoolDetailOut:
    body = {k: v for k, v in changes.items() if v is not None}
    if clear:
        body["clear"] = list(clear)
    return http.call("PATCH", pool_path(name), PoolDetailOut, json=body, idempotent=False)


def bind_pool(http: Http, pool_name: str, channel: str, *, bind: bool = True) -> PoolDetailOut:
    method = "PUT" if bind else "DELETE"
    return http.call(method, _binding_path(pool_name, channel), PoolDetailOut, idempotent=bind)


def pin_pool(http: Http, pool_name: str, ref: str, *, pin: bool = True) -> PoolDetailOut:
    path = _pin_path(pool_name, pin_channel(http, ref) if pin else ref)
    return http.call("PUT" if pin else "DELETE", path, PoolDetailOut, idempotent=pin)


def desired(http: Http, pool_name: str) -> DesiredOut:
    return http.get(f"{pool_path(pool_name)}/desired", DesiredOut)


def check_pool(http: Http, ref: str, pool_name: str) -> PoolCheckOut:
    r = parse_ref(pin_channel(http, ref))
    sel = "latest" if r.version is None else str(r.version)
    return http.get(f"{pool_path(pool_name)}/check/{r.namespace}/{r.name}/{sel}", PoolCheckOut)


def _binding_path(pool_name: str, channel: str) -> str:
    r = parse_ref(channel)
    if r.channel is None:
        raise errors.BadRequest(f"{channel!r} is not a channel reference like ns/name:prod")
    return f"{pool_path(pool_name)}/channels/{r.namespace}/{r.name}/{r.channel}"


def _pin_path(pool_name: str, ref: str) -> str:
    r = parse_ref(ref)
    if r.version is None:
        raise errors.BadRequest(f"{ref!r}: name an explicit version, e.g. {r.adapter}@3")
    return f"{pool_path(pool_name)}/pins/{r.namespace}/{r.name}/{r.version}"
