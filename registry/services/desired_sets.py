"""The desired sets of serving pools (the part of :mod:`registry.services.pools` that channel
changes call into, kept apart so that ``channels`` can import it without a cycle).

A pool's desired set is every version a bound channel serves (its stable version and its
canary) plus every pinned version. ``pool_members`` records each stay of a version in it:
opened when the version enters, closed (``removed_at``) when it leaves, always in the same
transaction as the change that moved it and under the pool's row lock. A channel change calls
:func:`channel_changed` (from ``registry.services.channels.record``, the one place every
channel change goes through); binding and pinning call :func:`sync`.

Before a version enters, :func:`check_entry` (promotion) and :func:`problems` (binding,
pinning, pool changes) apply every rule of :mod:`registry.services.serving_compat` to it and
to the grown set; a refusal is :class:`registry.errors.IncompatiblePool` naming each pool and
reason, and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.errors import IncompatiblePool
from registry.models import (
    AdapterVersion,
    Channel,
    PoolBinding,
    PoolMember,
    PoolPin,
    ServingPool,
    utcnow,
)
from registry.served_names import served_name
from registry.services import audit, serving_compat, version_tensors
from registry.services.context import Actor
from registry.services.serving_compat import Candidate, Engine
from registry.statuses import CompatStatus

MAX_LEFT = 200  # ended stays listed with a desired set
Live = dict[int, tuple[AdapterVersion, list[str]]]  # version id -> (version, why it is there)


@dataclass
class Entry:
    """A version in (or once in) a desired set, with why it is there and its verdict."""

    version: AdapterVersion
    served_name: str
    sources: list[str]
    added_at: datetime | None = None
    removed_at: datetime | None = None
    problems: list[str] | None = None


def engine_of(pool: ServingPool) -> Engine:
    """The rules' view of a pool."""
    return Engine(
        label=f"pool {pool.full_name}", max_lora_rank=pool.max_lora_rank,
        max_loras=pool.max_loras, max_cpu_loras=pool.max_cpu_loras, dtype=pool.dtype,
        target_modules=tuple(pool.target_modules) if pool.target_modules is not None else None,
        architecture=pool.architecture, base_fingerprint=pool.base.fingerprint,
        max_adapter_memory=pool.max_adapter_memory)


def candidate(version: AdapterVersion, tensors: version_tensors.Tensors | None) -> Candidate:
    return Candidate(ref(version), version.peft_config,
                     version.base_model.fingerprint if version.base_model else None,
                     version.compat_status == CompatStatus.VERIFIED, tensors)


def served(version: AdapterVersion) -> str:
    """The name routers send the engine for ``version`` (:mod:`registry.served_names`)."""
    return served_name(version.adapter.namespace.name, version.adapter.name, version.number,
                       version.manifest_digest)


def ref(version: AdapterVersion) -> str:
    return f"{version.adapter.full_name}@{version.number}"


def channel_label(channel: Channel) -> str:
    return f"{channel.adapter.full_name}:{channel.name}"


def lock(session: Session, pool_ids: Iterable[int]) -> list[ServingPool]:
    """The pools' rows under lock, in id order (so concurrent lockers never deadlock)."""
    return list(session.scalars(
        select(ServingPool).where(ServingPool.id.in_(sorted(set(pool_ids))))
        .order_by(ServingPool.id).with_for_update(of=ServingPool)
        .execution_options(populate_existing=True)))


def bound_channels(session: Session, pool: ServingPool) -> list[Channel]:
    return sorted(session.scalars(select(Channel).join(
        PoolBinding, PoolBinding.channel_id == Channel.id).where(PoolBinding.pool_id == pool.id)),
        key=channel_label)


def pinned(session: Session, pool: ServingPool) -> list[AdapterVersion]:
    return sorted(session.scalars(select(AdapterVersion).join(
        PoolPin, PoolPin.version_id == AdapterVersion.id).where(PoolPin.pool_id == pool.id)),
        key=lambda v: (v.adapter.full_name, v.number))


def serves(channel: Channel) -> list[AdapterVersion]:
    """The versions a channel serves: its stable version and its canary."""
    return [v for v in (channel.stable, channel.canary) if v is not None]


def add(live: Live, version: AdapterVersion, source: str) -> None:
    live.setdefault(version.id, (version, []))[1].append(source)


def add_channel(live: Live, channel: Channel) -> None:
    for version in serves(channel):
        role = "stable" if version is channel.stable else "canary"
        add(live, version, f"{channel_label(channel)} ({role})")


def live(session: Session, pool: ServingPool, *, without: int | None = None) -> Live:
    """The desired set now: the versions of bound channels (all but ``without``) and pins."""
    found: Live = {}
    for channel in bound_channels(session, pool):
        if channel.id != without:
            add_channel(found, channel)
    for version in pinned(session, pool):
        add(found, version, "pinned")
    return found


def problems(session: Session, pool: ServingPool, members: Live,
             entering: Iterable[int] | None = None) -> list[str]:
    """Problems of ``members`` as the pool's desired set: each version's (only those
    ``entering`` when given: the others were admitted before) and the set's as a whole."""
    engine = engine_of(pool)
    tensors = version_tensors.stored(session, members)
    checked = set(members if entering is None else entering)
    found = []
    for vid, (version, _) in sorted(members.items()):
        if vid in checked:
            found += [f"{ref(version)}: {p}" for p in serving_compat.version_problems(
                engine, candidate(version, tensors.get(vid)))]
    return found + serving_compat.set_problems(
        engine, [(ref(v), tensors.get(vid)) for vid, (v, _) in sorted(members.items())])


def refuse(what: str, found: Sequence[str]) -> None:
    if found:
        raise IncompatiblePool(f"{what}: " + "; ".join(found), problems=list(found))


def sync(session: Session, actor: Actor, pool: ServingPool) -> None:
    """Open and close ``pool_members`` rows to match the desired set now (pool locked)."""
    now_live = live(session, pool)
    current = {m.version_id: m for m in session.scalars(select(PoolMember).where(
        PoolMember.pool_id == pool.id, PoolMember.removed_at.is_(None)))}
    now = utcnow()
    added = [now_live[v][0] for v in sorted(now_live.keys() - current.keys())]
    removed = [current[v] for v in sorted(current.keys() - now_live.keys())]
    session.add_all(PoolMember(pool_id=pool.id, version_id=v.id, added_at=now) for v in added)
    for member in removed:
        member.removed_at = now
    if added or removed:
        session.flush()
        audit.record(session, actor, "pool.desired_changed", "pool", pool.full_name,
                     namespace=pool.namespace.name,
                     payload={"added": [served(v) for v in added],
                              "removed": [served(m.version) for m in removed]})


def _pools_serving(session: Session, channel: Channel) -> list[int]:
    return list(session.scalars(select(PoolBinding.pool_id).where(
        PoolBinding.channel_id == channel.id)))


def channel_changed(session: Session, actor: Actor, channel: Channel) -> None:
    """A channel's stable or canary may have changed (its row is locked): bring the desired
    sets of the pools that serve it in step, in the same transaction."""
    pool_ids = _pools_serving(session, channel)
    if not pool_ids:
        return
    session.flush()
    for pool in lock(session, pool_ids):
        sync(session, actor, pool)


def check_entry(session: Session, channel: Channel, version: AdapterVersion, *,
                as_canary: bool = False) -> None:
    """Refuse to put ``version`` on ``channel`` (as its stable version, or as the canary next
    to the stable one) unless every pool serving the channel takes it; changes nothing."""
    pool_ids = _pools_serving(session, channel)
    if not pool_ids:
        return
    found: dict[str, list[str]] = {}
    for pool in session.scalars(select(ServingPool).where(ServingPool.id.in_(pool_ids))):
        members = live(session, pool, without=channel.id)
        if as_canary and channel.stable is not None:
            add(members, channel.stable, channel_label(channel))
        add(members, version, channel_label(channel))
        if pool_problems := problems(session, pool, members, [version.id]):
            found[pool.full_name] = pool_problems
    if found:
        text = "; ".join(f"pool {name}: {'; '.join(p)}" for name, p in sorted(found.items()))
        raise IncompatiblePool(
            f"{ref(version)} cannot be served on {channel_label(channel)}: {text}",
            pools=[{"pool": name, "problems": p} for name, p in sorted(found.items())])


def check_version(session: Session, store: BlobStore | None, pool: ServingPool,
                  version: AdapterVersion) -> list[str]:
    """``lorareg check REF --pool``: the entry checks, as if ``version`` were pinned (the
    blob store is read for a tensor header not recorded yet; nothing is written)."""
    tensors = version_tensors.read_missing(session, store, [version]).get(version.id)
    engine = engine_of(pool)
    found = serving_compat.version_problems(engine, candidate(version, tensors))
    members = live(session, pool)
    add(members, version, "checked")
    known = version_tensors.stored(session, members)
    if tensors is not None:
        known[version.id] = tensors
    return found + serving_compat.set_problems(
        engine, [(ref(v), known.get(vid)) for vid, (v, _) in members.items()])


def desired(session: Session, store: BlobStore | None, pool: ServingPool) -> list[Entry]:
    """The desired set now, each version with its sources, since when, and its verdict (the
    blob store, when given, is read for tensor headers not recorded yet)."""
    members = live(session, pool)
    since = {m.version_id: m.added_at for m in session.scalars(select(PoolMember).where(
        PoolMember.pool_id == pool.id, PoolMember.removed_at.is_(None)))}
    tensors = version_tensors.read_missing(session, store, [v for v, _ in members.values()])
    engine = engine_of(pool)
    rows = sorted(members.items(), key=lambda item: ref(item[1][0]))
    return [Entry(v, served(v), sources, since.get(vid), None, serving_compat.version_problems(
        engine, candidate(v, tensors.get(vid)))) for vid, (v, sources) in rows]


def set_problems(session: Session, pool: ServingPool) -> list[str]:
    """Problems of the desired set as a whole (how many versions, how much memory)."""
    members = live(session, pool)
    tensors = version_tensors.stored(session, members)
    return serving_compat.set_problems(
        engine_of(pool), [(ref(v), tensors.get(vid)) for vid, (v, _) in members.items()])


def retained(session: Session, pool: ServingPool, now: datetime) -> list[Entry]:
    """What an engine of the pool may still load at ``now``: the desired set, and each version
    that left it less than ``drain_seconds`` ago (its last stay's end). Export keeps exactly
    these folders; anything else may go."""
    cutoff = now - timedelta(seconds=pool.drain_seconds)
    rows = session.scalars(select(PoolMember).where(PoolMember.pool_id == pool.id).where(
        PoolMember.removed_at.is_(None) | (PoolMember.removed_at > cutoff))
        .order_by(PoolMember.version_id, PoolMember.id))
    last = {m.version_id: m for m in rows}  # a version's latest stay decides
    return [Entry(m.version, served(m.version), [], m.added_at, m.removed_at)
            for m in sorted(last.values(), key=lambda m: ref(m.version))]


def left(session: Session, pool: ServingPool, limit: int = MAX_LEFT) -> list[Entry]:
    """Stays that ended, newest first: which version left the desired set and when."""
    rows = session.scalars(select(PoolMember).where(
        PoolMember.pool_id == pool.id, PoolMember.removed_at.is_not(None))
        .order_by(PoolMember.removed_at.desc(), PoolMember.id.desc()).limit(limit))
    return [Entry(m.version, served(m.version), [], m.added_at, m.removed_at) for m in rows]


def draining(session: Session, pool: ServingPool, now: datetime) -> list[Entry]:
    """The versions that left the desired set less than ``drain_seconds`` before ``now``: an
    engine may still load them until ``removed_at + drain_seconds``."""
    return [e for e in retained(session, pool, now) if e.removed_at is not None]


def revision(session: Session, pool: ServingPool, now: datetime) -> str:
    """A digest of every fact the desired-set answer (``GET .../desired``) is made of at
    ``now``, read with four small queries and no blob: its ETag, which agents poll.

    The facts: the pool's settings (``updated_at`` moves with each change; base and engine
    are fixed), each bound channel's revision (bumped by every change of what it serves),
    the pins, a summary of every stay in the set (rows are only ever appended and closed
    once, so count, last id, closed count and last close change with any change), the stays
    still held at ``now`` (so a drain's end changes it) and their versions' compat status.
    A version's files, digest and served name never change, so its id stands for them."""
    cutoff = now - timedelta(seconds=pool.drain_seconds)
    channels = session.execute(
        select(PoolBinding.channel_id, Channel.revision).join(
            Channel, Channel.id == PoolBinding.channel_id)
        .where(PoolBinding.pool_id == pool.id).order_by(PoolBinding.channel_id)).all()
    pins = session.scalars(select(PoolPin.version_id).where(PoolPin.pool_id == pool.id)
                           .order_by(PoolPin.version_id)).all()
    stays = session.execute(select(
        func.count(), func.max(PoolMember.id), func.count(PoolMember.removed_at),
        func.max(PoolMember.removed_at)).where(PoolMember.pool_id == pool.id)).one()
    held = session.execute(
        select(PoolMember.id, AdapterVersion.compat_status)
        .join(AdapterVersion, AdapterVersion.id == PoolMember.version_id)
        .where(PoolMember.pool_id == pool.id)
        .where(PoolMember.removed_at.is_(None) | (PoolMember.removed_at > cutoff))
        .order_by(PoolMember.id)).all()
    facts = [pool.id, pool.updated_at, pool.base.fingerprint, pool.model_id,
             pool.served_model_name, pool.drain_seconds, [list(c) for c in channels],
             list(pins), list(stays), [list(h) for h in held]]
    text = json.dumps(facts, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
