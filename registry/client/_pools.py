"""Client methods for serving pools: create and change pools, bind channels, pin versions,
read desired sets, and check a version against a pool.

Binding and pinning are idempotent (``PUT``), so they are retried like reads; creating a pool,
changing it, unbinding and unpinning are not re-sent once they may have reached the server.
A refusal because a version would not serve correctly is
:class:`registry.errors.IncompatiblePool` (HTTP 422, exit 4) naming each pool and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registry import errors
from registry.client._channels import ChannelsMixin
from registry.client._core import Core
from registry.refs import parse_pool_name, parse_ref
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK

POOLS = "/api/v1/pools"


def pool_path(name: str) -> str:
    ns, pool = parse_pool_name(name)
    return f"{POOLS}/{ns}/{pool}"


class PoolsMixin:
    """Serving-pool methods of :class:`registry.client.Client`."""

    def pools(self: Core, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every pool the token may read (of ``namespace`` only, when given)."""
        params = [("namespace", namespace)] if namespace else []
        items: list[dict[str, Any]] = self._get(POOLS, params)["items"]
        return items

    def pool(self: Core, name: str) -> dict[str, Any]:
        """One pool ``ns/name``: its settings, bound ``channels`` and ``pinned`` versions."""
        result: dict[str, Any] = self._get(pool_path(name))
        return result

    def create_pool(
        self: Core, name: str, *, base: str, model_id: str, dtype: str, engine: str = "vllm",
        served_model_name: str | None = None, architecture: str | None = None,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK, max_loras: int = 1,
        max_cpu_loras: int | None = None, target_modules: Sequence[str] | None = None,
        max_adapter_memory: int | None = None, drain_seconds: int = 600,
    ) -> dict[str, Any]:
        """Create pool ``ns/name`` with its engines' settings (``vllm serve`` flags); needs
        admin in the namespace. Conflict (409) if it exists."""
        ns, pool = parse_pool_name(name)
        body = {"name": pool, "engine": engine, "base": base, "model_id": model_id,
                "served_model_name": served_model_name, "architecture": architecture,
                "max_lora_rank": max_lora_rank, "max_loras": max_loras,
                "max_cpu_loras": max_cpu_loras, "dtype": dtype,
                "target_modules": list(target_modules) if target_modules is not None else None,
                "max_adapter_memory": max_adapter_memory, "drain_seconds": drain_seconds}
        result: dict[str, Any] = self._post(f"{POOLS}/{ns}", body)
        return result

    def update_pool(self: Core, name: str, clear: Sequence[str] = (), **changes: Any
                    ) -> dict[str, Any]:
        """Change settings (e.g. ``max_lora_rank=32``); ``clear`` unsets optional ones
        (``target_modules``, ``architecture``, ``served_model_name``, ``max_adapter_memory``)."""
        body = {k: v for k, v in changes.items() if v is not None}
        if clear:
            body["clear"] = list(clear)
        result: dict[str, Any] = self._send("PATCH", pool_path(name), json=body,
                                            idempotent=False).json()
        return result

    def bind_pool(self: Core, pool: str, channel: str) -> dict[str, Any]:
        """Make ``pool`` serve channel ``ns/name:chan``; the pool afterwards."""
        result: dict[str, Any] = self._send("PUT", _binding_path(pool, channel)).json()
        return result

    def unbind_pool(self: Core, pool: str, channel: str) -> dict[str, Any]:
        result: dict[str, Any] = self._send("DELETE", _binding_path(pool, channel),
                                            idempotent=False).json()
        return result

    def pin_pool(self: Core, pool: str, ref: str) -> dict[str, Any]:
        """Keep version ``ref`` (``ns/name@N``, or a channel's stable ``ns/name:chan``) in the
        pool's desired set whatever its channels serve."""
        path = _pin_path(pool, ChannelsMixin.pin_channel(self, ref))
        result: dict[str, Any] = self._send("PUT", path).json()
        return result

    def unpin_pool(self: Core, pool: str, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self._send("DELETE", _pin_path(pool, ref),
                                            idempotent=False).json()
        return result

    def desired(self: Core, pool: str) -> dict[str, Any]:
        """The pool's desired set: ``{pool, members: [{ref, served_name, manifest_digest,
        sources, added_at, ok, problems}], set_problems, left: [... removed_at ...]}``."""
        result: dict[str, Any] = self._get(f"{pool_path(pool)}/desired")
        return result

    def check_pool(self: Core, ref: str, pool: str) -> dict[str, Any]:
        """Could ``pool`` take version ``ref`` (``ns/name@N``, ``@latest`` or a channel's
        stable ``ns/name:chan``)? ``{ref, pool, served_name, ok, problems}``; no change."""
        r = parse_ref(ChannelsMixin.pin_channel(self, ref))
        sel = "latest" if r.version is None else str(r.version)
        result: dict[str, Any] = self._get(
            f"{pool_path(pool)}/check/{r.namespace}/{r.name}/{sel}")
        return result


def _binding_path(pool: str, channel: str) -> str:
    r = parse_ref(channel)
    if r.channel is None:
        raise errors.BadRequest(f"{channel!r} is not a channel reference like ns/name:prod")
    return f"{pool_path(pool)}/channels/{r.namespace}/{r.name}/{r.channel}"


def _pin_path(pool: str, ref: str) -> str:
    r = parse_ref(ref)
    if r.version is None:
        raise errors.BadRequest(f"{ref!r}: name an explicit version, e.g. {r.adapter}@3")
    return f"{pool_path(pool)}/pins/{r.namespace}/{r.name}/{r.version}"
