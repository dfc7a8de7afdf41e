"""Serving pools: create and change pools, bind channels, pin versions, read desired sets,
and check a version against a pool.

Binding and pinning are idempotent (``PUT``), so they are retried like reads; creating a pool,
changing it, unbinding and unpinning are not re-sent once they may have reached the server.
A refusal because a version would not serve correctly is
:class:`registry.errors.IncompatiblePool` (HTTP 422, exit 4) naming each pool and reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from registry import errors
from registry.client._channels import pin_channel
from registry.client._http import POLL_GROWTH, Http
from registry.client._paths import POOLS, pool_path, version_path
from registry.refs import parse_pool_name, parse_ref
from registry.served_names import served_name
from registry.statuses import AdapterState, BaseVerdict
from registry.wire import (
    MAX_REPORTED_ERROR,
    DesiredOut,
    HeartbeatOut,
    Page,
    PoolCheckOut,
    PoolDetailOut,
    PoolOut,
    PoolStatusOut,
    ReplicaOut,
    VersionOut,
    WhereOut,
)


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


def poll_desired(http: Http, pool_name: str, revision: str | None, wait: float
                 ) -> DesiredOut | None:
    """The desired set, or None while it is still at ``revision`` (the server held the
    answer up to ``wait`` seconds, at most 60, for a change)."""
    headers = {} if revision is None else {"If-None-Match": f'W/"{revision}"'}
    params = [("wait", f"{wait:g}")] if revision is not None and wait > 0 else []
    response = http.send("GET", f"{pool_path(pool_name)}/desired", params=params,
                         headers=headers, accept=(304,), read_timeout=wait + http.timeout)
    if response.status_code == 304:
        return None
    return DesiredOut.model_validate(response.json())


# --- residency ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportedAdapter:
    """A served name a replica holds: ``digest`` is the manifest digest the agent verified
    (required when loaded); ``error`` the engine's own text of a failed load."""

    served_name: str
    state: AdapterState
    digest: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Residency:
    """A replica's whole residency, sent at each heartbeat (see ``Client.report_residency``)."""

    engine: str
    agent_version: str
    base_fingerprint: str | None
    adapters: Sequence[ReportedAdapter] = field(default_factory=tuple)
    engine_url: str | None = None
    interval_seconds: int = 10
    cache_bytes: int = 0
    error: str | None = None


def report_residency(http: Http, pool_name: str, replica_id: str, residency: Residency
                     ) -> HeartbeatOut:
    body = {**asdict(residency), "error": _cut(residency.error),
            "adapters": [{**asdict(a), "error": _cut(a.error)} for a in residency.adapters]}
    return http.call("PUT", _replica_path(pool_name, replica_id), HeartbeatOut, json=body)


def _cut(text: str | None) -> str | None:
    """An error text within the server's limit: its start, which names the error, and its
    end, which often names the cause."""
    if text is None or len(text) <= MAX_REPORTED_ERROR:
        return text
    half = (MAX_REPORTED_ERROR - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def forget_replica(http: Http, pool_name: str, replica_id: str) -> None:
    http.send("DELETE", _replica_path(pool_name, replica_id))


def _replica_path(pool_name: str, replica_id: str) -> str:
    if not replica_id or "/" in replica_id:
        raise errors.BadRequest(f"{replica_id!r} is not a replica id")
    return f"{pool_path(pool_name)}/replicas/{replica_id}"


def pool_status(http: Http, pool_name: str) -> PoolStatusOut:
    return http.get(f"{pool_path(pool_name)}/status", PoolStatusOut)


def where(http: Http, ref: str) -> WhereOut:
    r = parse_ref(pin_channel(http, ref))
    sel = "latest" if r.version is None else str(r.version)
    return http.get(f"/api/v1/where/{r.namespace}/{r.name}/{sel}", WhereOut)


def version_served_name(http: Http, ref: str) -> str:
    """The served name of version ``ref`` (``ns/name@N``, ``@latest`` or a channel's stable)."""
    r = parse_ref(pin_channel(http, ref))
    version = http.get(version_path(f"{r.adapter}@{r.version}" if r.version else r.adapter),
                       VersionOut)
    return served_name(r.namespace, r.name, version.version, version.manifest_digest)


# --- waiting for the fleet ------------------------------------------------------------------

# A status read is a few small queries; polling it at most every half second keeps the time
# from "loaded everywhere" to the promoter knowing it under that (jobs back off to 2 s).
WAIT_POLL_MIN, WAIT_POLL_MAX = 0.1, 0.5


def wait_loaded(http: Http, target: str, name: str, timeout: float | None,
                progress: Callable[[list[PoolStatusOut]], object] | None
                ) -> list[PoolStatusOut]:
    """Poll the status of the pools of ``target`` (a pool ``ns/pool`` or a channel
    ``ns/name:chan``: the pools bound to it) until every live replica of each reports
    ``name`` loaded (with its bytes), each pool having one at least. On timeout a
    RegistryError (exit 6) names every replica that has not, and why."""
    pools_ = _target_pools(http, target)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = WAIT_POLL_MIN
    while True:
        statuses = [pool_status(http, p) for p in pools_]
        if progress is not None:
            progress(statuses)
        lagging = {s.pool: _lagging(s, name) for s in statuses}
        if not any(lagging.values()):
            return statuses
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _not_loaded(name, timeout, lagging)
        http.sleep(delay if left is None else min(delay, left))
        delay = min(delay * POLL_GROWTH, WAIT_POLL_MAX)


def _target_pools(http: Http, target: str) -> list[str]:
    r = parse_ref(target) if ":" in target else None
    if r is None or r.channel is None:
        parse_pool_name(target)
        return [target]
    label = f"{r.adapter}:{r.channel}"
    bound = [p.name for p in pools(http, r.namespace) if label in pool(http, p.name).channels]
    if not bound:
        raise errors.BadRequest(f"no pool serves {label}: nothing to wait for "
                                "(lorareg pool bind NS/POOL " + label + ")")
    return bound


def _lagging(status: PoolStatusOut, name: str) -> list[str]:
    """Why each live replica of the pool does not serve ``name`` yet (none: all do)."""
    live = [r for r in status.replicas if r.live]
    if not live:
        return ["no live replica (none heard within "
                f"{status.live_factor} heartbeat intervals)"]
    return [f"{r.replica_id}: {_why(r, name)}" for r in live if name not in r.loaded]


def _why(replica: ReplicaOut, name: str) -> str:
    if replica.verdict == BaseVerdict.INCOMPATIBLE:
        return (f"incompatible base (replica {replica.base_fingerprint}, pool "
                f"{replica.pool_fingerprint})")
    for d in replica.drift:
        if d.served_name == name:
            return f"{d.kind.value}: {d.detail}"
    held = {a.served_name: a for a in replica.adapters}
    if name in held:
        return f"{held[name].state.value} since {held[name].since.isoformat()}"
    return "not reported" + (f" (agent error: {replica.last_error})" if replica.last_error
                             else "")


def _not_loaded(name: str, timeout: float | None, lagging: dict[str, list[str]]
                ) -> errors.RegistryError:
    text = "; ".join(f"pool {p}: {', '.join(why)}" for p, why in lagging.items() if why)
    return errors.RegistryError(
        f"{name} is not loaded on every live replica after {timeout or 0:g}s: {text}",
        served_name=name, pools=[{"pool": p, "not_loaded": why}
                                 for p, why in lagging.items() if why])


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
