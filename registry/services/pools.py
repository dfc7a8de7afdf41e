"""Serving pools: engines started alike (one base, one engine configuration), the channels
they serve and the versions pinned to them. Routers, the UI and export only call this module
and :mod:`registry.services.desired_sets` (the desired sets, which channel changes keep in
step).

* **Tenancy**: a pool belongs to a namespace and serves only that namespace's channels and
  versions, so one tenant's promotion never changes another tenant's desired set or verdicts.
* **Changes are checked**: creating or changing a pool validates every setting as vLLM would
  (and target modules against the base's tensor manifest); binding a channel, pinning a
  version and changing settings are refused, with nothing changed, unless the desired set
  they lead to passes every rule (:mod:`registry.services.serving_compat`).
* **Locks**: the channel row first, then pool rows in id order (as channel changes take them);
  pool-only changes lock the pool row. Every desired-set sync runs under its pool's lock.
* Every change writes an audit event (``pool.*``) in its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.errors import BadRequest, Conflict, NotFound
from registry.models import (
    AdapterVersion,
    Channel,
    Namespace,
    PoolBinding,
    PoolPin,
    ServingPool,
    utcnow,
)
from registry.refs import Ref, parse_base_ref, parse_pool_name, parse_ref
from registry.services import adapters, audit, bases, channels, serving_compat, version_tensors
from registry.services import desired_sets as sets
from registry.services import versions as version_service
from registry.services.context import Actor
from registry.statuses import VersionStatus
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK

MAX_DRAIN_SECONDS = 30 * 86400
CLEARABLE = ("served_model_name", "architecture", "target_modules", "max_adapter_memory")


@dataclass
class PoolSettings:
    """A pool's engine settings: the flags its engines were started with, plus lorareg's
    ``max_adapter_memory`` (a budget for the desired set) and ``drain_seconds``."""

    base: str
    model_id: str
    dtype: str
    engine: str = "vllm"
    served_model_name: str | None = None
    architecture: str | None = None
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_loras: int = 1
    max_cpu_loras: int | None = None
    target_modules: list[str] | None = None
    max_adapter_memory: int | None = None
    drain_seconds: int = 600


@dataclass
class PoolChanges:
    """Settings to change (None: keep; ``clear``: unset). The base and engine are fixed."""

    model_id: str | None = None
    dtype: str | None = None
    served_model_name: str | None = None
    architecture: str | None = None
    max_lora_rank: int | None = None
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    target_modules: list[str] | None = None
    max_adapter_memory: int | None = None
    drain_seconds: int | None = None
    clear: list[str] = field(default_factory=list)


# --- pools ----------------------------------------------------------------------------------


def create_pool(session: Session, actor: Actor, full_name: str, settings: PoolSettings
                ) -> ServingPool:
    """Create a pool in its namespace; Conflict if the name is taken."""
    ns_name, name = parse_pool_name(full_name)
    serving_compat.check_engine(settings.engine)
    hub_id, revision = parse_base_ref(settings.base)
    base = bases.find_base(session, hub_id, revision)
    if base is None:
        raise BadRequest(f"base {settings.base} is not registered: register it first "
                         "(lorareg base register)")
    now = utcnow()
    pool = ServingPool(name=name, engine=settings.engine, base=base, created_by=actor.name,
                       created_at=now, updated_at=now)
    _apply(pool, {f.name: getattr(settings, f.name) for f in fields(settings)
                  if f.name not in ("base", "engine")})
    pool.namespace = adapters.ensure_namespace(session, actor, ns_name)
    try:
        with session.begin_nested():
            session.add(pool)
    except IntegrityError:
        raise Conflict(f"pool {full_name} already exists") from None
    audit.record(session, actor, "pool.created", "pool", full_name, namespace=ns_name,
                 payload=describe(pool))
    return pool


def _apply(pool: ServingPool, values: dict[str, Any]) -> None:
    """Set settings and check them as vLLM would (the pool's base must be set)."""
    for key, value in values.items():
        setattr(pool, key, value)
    if not 1 <= len(pool.model_id or "") <= 512 or not pool.model_id.isprintable():
        raise BadRequest("model_id (what the engine was started with) is 1..512 characters")
    if pool.served_model_name is not None and not (
            1 <= len(pool.served_model_name) <= 256 and pool.served_model_name.isprintable()):
        raise BadRequest("served_model_name is 1..256 printable characters")
    pool.dtype = serving_compat.check_dtype(pool.dtype)
    pool.max_lora_rank = serving_compat.check_rank(pool.max_lora_rank)
    pool.max_loras, pool.max_cpu_loras = serving_compat.check_slots(
        pool.max_loras, pool.max_cpu_loras)
    pool.architecture = serving_compat.check_architecture(pool.architecture)
    modules = serving_compat.base_modules(bases.manifest_shapes(pool.base))
    targets = serving_compat.check_target_modules(pool.target_modules, modules,
                                                  pool.architecture)
    pool.target_modules = list(targets) if targets is not None else None
    if pool.max_adapter_memory is not None and pool.max_adapter_memory < 1:
        raise BadRequest("max_adapter_memory is a positive number of bytes")
    if not 0 <= pool.drain_seconds <= MAX_DRAIN_SECONDS:
        raise BadRequest(f"drain_seconds must be between 0 and {MAX_DRAIN_SECONDS}")


def describe(pool: ServingPool) -> dict[str, Any]:
    """The pool's settings as plain values (audit payloads, API answers)."""
    return {"engine": pool.engine, "base": f"{pool.base.hub_id}@{pool.base.revision}",
            "base_fingerprint": pool.base.fingerprint, "model_id": pool.model_id,
            "served_model_name": pool.served_model_name, "architecture": pool.architecture,
            "max_lora_rank": pool.max_lora_rank, "max_loras": pool.max_loras,
            "max_cpu_loras": pool.max_cpu_loras, "dtype": pool.dtype,
            "target_modules": pool.target_modules,
            "max_adapter_memory": pool.max_adapter_memory, "drain_seconds": pool.drain_seconds}


def get_pool(session: Session, full_name: str) -> ServingPool:
    ns, name = parse_pool_name(full_name)
    pool = session.scalar(select(ServingPool).join(ServingPool.namespace)
                          .where(Namespace.name == ns, ServingPool.name == name))
    if pool is None:
        raise NotFound(f"pool {full_name} not found")
    return pool


def list_pools(session: Session, scope: Sequence[str] | None, namespace: str | None = None
               ) -> list[ServingPool]:
    """Pools the caller may see (``scope`` None: every namespace), by namespace and name."""
    stmt = select(ServingPool).join(ServingPool.namespace).order_by(Namespace.name,
                                                                     ServingPool.name)
    if scope is not None:
        stmt = stmt.where(Namespace.name.in_(scope))
    if namespace is not None:
        stmt = stmt.where(Namespace.name == namespace)
    return list(session.scalars(stmt))


def update_pool(session: Session, actor: Actor, pool: ServingPool, changes: PoolChanges
                ) -> ServingPool:
    """Change settings; refused (nothing changed) if the desired set would no longer pass."""
    values = {f.name: getattr(changes, f.name) for f in fields(changes)
              if f.name != "clear" and getattr(changes, f.name) is not None}
    if set(changes.clear) - set(CLEARABLE) or set(changes.clear) & set(values):
        raise BadRequest(f"only {', '.join(CLEARABLE)} can be cleared, and not also set")
    pool = sets.lock(session, [pool.id])[0]
    before = describe(pool)
    with session.no_autoflush:  # a refused change must never reach the database
        _apply(pool, {**values, **dict.fromkeys(changes.clear)})
        sets.refuse(f"pool {pool.full_name} cannot change so",
                    sets.problems(session, pool, sets.live(session, pool)))
    pool.updated_at = utcnow()
    after = describe(pool)
    audit.record(session, actor, "pool.updated", "pool", pool.full_name,
                 namespace=pool.namespace.name,
                 payload={k: after[k] for k in after if after[k] != before[k]})
    return pool


# --- bindings and pins ----------------------------------------------------------------------


def bind(session: Session, actor: Actor, store: BlobStore, pool: ServingPool, channel_ref: str
         ) -> Channel:
    """Make ``pool`` serve channel ``ns/name:chan`` (created empty if new); idempotent.

    Refused, with nothing changed, unless every version the channel serves passes the pool's
    rules and the grown desired set fits. Records the tensor headers of the adapter's active
    versions that have none (pushed before lorareg kept them), so that later promotions on
    the channel are checked without reading blobs.
    """
    ref = _channel_ref(channel_ref)
    _same_namespace(pool, ref.namespace, f"channel {channel_ref}")
    adapter = adapters.get_adapter(session, ref.adapter)
    channel = channels.ensure_channel(session, actor, adapter, str(ref.channel))  # read locked
    pool = sets.lock(session, [pool.id])[0]
    active = session.scalars(select(AdapterVersion).where(
        AdapterVersion.adapter_id == adapter.id,
        AdapterVersion.status == VersionStatus.ACTIVE)).all()
    version_tensors.ensure(session, store, [*active, *sets.serves(channel)])
    if session.get(PoolBinding, (pool.id, channel.id)) is not None:
        return channel
    members = sets.live(session, pool)
    sets.add_channel(members, channel)
    sets.refuse(f"channel {channel_ref} cannot be bound to pool {pool.full_name}",
                sets.problems(session, pool, members, [v.id for v in sets.serves(channel)]))
    session.add(PoolBinding(pool_id=pool.id, channel_id=channel.id, created_by=actor.name,
                            created_at=utcnow()))
    session.flush()
    audit.record(session, actor, "pool.bound", "pool", pool.full_name,
                 namespace=pool.namespace.name, payload={"channel": channel_ref})
    sets.sync(session, actor, pool)
    return channel


def unbind(session: Session, actor: Actor, pool: ServingPool, channel_ref: str) -> None:
    """Stop serving a channel: its versions leave the desired set (unless held otherwise)."""
    ref = _channel_ref(channel_ref)
    _same_namespace(pool, ref.namespace, f"channel {channel_ref}")
    channel = channels.get_channel(session, ref.adapter, str(ref.channel), for_update=True)
    pool = sets.lock(session, [pool.id])[0]
    binding = session.get(PoolBinding, (pool.id, channel.id))
    if binding is None:
        raise NotFound(f"pool {pool.full_name} does not serve channel {channel_ref}")
    session.delete(binding)
    session.flush()
    audit.record(session, actor, "pool.unbound", "pool", pool.full_name,
                 namespace=pool.namespace.name, payload={"channel": channel_ref})
    sets.sync(session, actor, pool)


def pin(session: Session, actor: Actor, store: BlobStore, pool: ServingPool, version_ref: str
        ) -> AdapterVersion:
    """Keep version ``ns/name@N`` in the desired set whatever the channels serve; idempotent;
    refused, with nothing changed, unless it and the grown set pass the pool's rules."""
    version = _explicit_version(session, pool, version_ref)
    version_tensors.ensure(session, store, [version])
    pool = sets.lock(session, [pool.id])[0]
    if session.get(PoolPin, (pool.id, version.id)) is not None:
        return version
    members = sets.live(session, pool)
    sets.add(members, version, "pinned")
    sets.refuse(f"{sets.ref(version)} cannot be pinned to pool {pool.full_name}",
                sets.problems(session, pool, members, [version.id]))
    session.add(PoolPin(pool_id=pool.id, version_id=version.id, created_by=actor.name,
                        created_at=utcnow()))
    session.flush()
    audit.record(session, actor, "pool.pinned", "pool", pool.full_name,
                 namespace=pool.namespace.name, payload={"version": sets.ref(version)})
    sets.sync(session, actor, pool)
    return version


def unpin(session: Session, actor: Actor, pool: ServingPool, version_ref: str) -> None:
    version = _explicit_version(session, pool, version_ref)
    pool = sets.lock(session, [pool.id])[0]
    row = session.get(PoolPin, (pool.id, version.id))
    if row is None:
        raise NotFound(f"{version_ref} is not pinned to pool {pool.full_name}")
    session.delete(row)
    session.flush()
    audit.record(session, actor, "pool.unpinned", "pool", pool.full_name,
                 namespace=pool.namespace.name, payload={"version": sets.ref(version)})
    sets.sync(session, actor, pool)


def _channel_ref(text: str) -> Ref:
    ref = parse_ref(text)
    if ref.channel is None:
        raise BadRequest(f"{text!r} is not a channel reference like ns/name:prod")
    return ref


def _explicit_version(session: Session, pool: ServingPool, text: str) -> AdapterVersion:
    ref = parse_ref(text)
    if ref.version is None:
        raise BadRequest(f"{text!r}: name an explicit version, e.g. {ref.adapter}@3")
    _same_namespace(pool, ref.namespace, f"version {text}")
    return version_service.get_version(session, ref)


def _same_namespace(pool: ServingPool, namespace: str, what: str) -> None:
    if namespace != pool.namespace.name:
        raise BadRequest(f"pool {pool.full_name} serves only namespace "
                         f"{pool.namespace.name}; {what} is not in it")
