"""Channels: named pointers (``prod``, ``staging``) at a stable version and optional canary.

Every change is a compare-and-swap on the channel's ``revision``: the row is locked, the
caller's expected revision compared, the revision bumped, a history row and an audit event
written, all in one transaction. Two pipelines that read revision 3 and both promote get one
success and one Conflict (409), never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import insert_ignore
from registry.errors import Conflict, IncompatibleBase, InvalidAdapter, NotFound, PermissionDenied
from registry.models import Adapter, AdapterVersion, Channel, ChannelEvent, Namespace, utcnow
from registry.refs import check_channel, check_namespace
from registry.services import adapters, audit, desired_sets, metrics, profiles
from registry.services.context import Actor
from registry.services.pagination import Page, paginate_by_id
from registry.statuses import CompatStatus, VersionStatus


@dataclass(frozen=True)
class Change:
    """Who changes a channel, how sure they are of its state, and why."""

    actor: Actor
    expect_revision: int | None = None
    reason: str = ""
    is_admin: bool = False


def get_channel(session: Session, adapter_name: str, name: str, *, for_update: bool = False
                ) -> Channel:
    """A channel; ``for_update``: under its row lock, as it is once the lock is ours."""
    adapter = adapters.get_adapter(session, adapter_name)
    stmt = select(Channel).where(Channel.adapter_id == adapter.id,
                                 Channel.name == check_channel(name))
    channel = session.scalar(stmt)
    if channel is None:
        raise NotFound(f"channel {adapter_name}:{name} not found")
    return lock(session, channel.id) if for_update else channel


def lock(session: Session, channel_id: int) -> Channel:
    """Take a channel's row lock, then read the channel and the versions it points at.

    Two statements on purpose: on PostgreSQL a ``SELECT ... FOR UPDATE`` that waited for
    another transaction's lock returns the locked row as that transaction left it, but the rows
    the same statement joins to it (the stable and canary versions) as they were before the
    wait, so a promotion that held the lock would be missed (a wrong "from" in the history, no
    stable to compare a canary with). The second statement starts after the wait and sees all
    of it; ``populate_existing`` overwrites what this session had loaded before.
    """
    session.execute(select(Channel.id).where(Channel.id == channel_id)
                    .with_for_update(of=Channel))
    return session.scalars(select(Channel).where(Channel.id == channel_id)
                           .execution_options(populate_existing=True)).one()


def ensure_channel(session: Session, actor: Actor, adapter: Adapter, name: str) -> Channel:
    """Get a channel under its row lock, creating it empty on first use."""
    check_channel(name)
    now = utcnow()
    insert_ignore(session, Channel, {
        "adapter_id": adapter.id, "name": name, "canary_weight_bp": 0, "profile": "any",
        "protected": False, "revision": 0, "created_at": now, "updated_at": now,
    })
    return get_channel(session, adapter.full_name, name, for_update=True)


def list_channels(session: Session, adapter_name: str) -> list[Channel]:
    adapter = adapters.get_adapter(session, adapter_name)
    return list(session.scalars(select(Channel).where(Channel.adapter_id == adapter.id)
                                .order_by(Channel.name)))


def in_namespace(session: Session, namespace: str, name: str) -> list[Channel]:
    """Channel ``name`` of every adapter of ``namespace`` that has one, by adapter name."""
    return list(session.scalars(
        select(Channel).join(Adapter, Channel.adapter_id == Adapter.id)
        .join(Namespace, Adapter.namespace_id == Namespace.id)
        .where(Namespace.name == check_namespace(namespace), Channel.name == check_channel(name))
        .order_by(Adapter.name)))


def check_cas(channel: Channel, change: Change) -> None:
    if change.expect_revision is not None and change.expect_revision != channel.revision:
        raise Conflict(
            f"channel {_name(channel)} is at revision {channel.revision}, not "
            f"{change.expect_revision}: someone changed it meanwhile; re-read and retry",
            current_revision=channel.revision,
        )
    if channel.protected and not change.is_admin:
        raise PermissionDenied(f"channel {_name(channel)} is protected: only admins change it")


def configure(session: Session, adapter_name: str, name: str, change: Change, *,
              profile: str | None = None, protected: bool | None = None) -> Channel:
    """Create a channel or change its serving profile / protection."""
    adapter = adapters.get_adapter(session, adapter_name)
    channel = ensure_channel(session, change.actor, adapter, name)
    check_cas(channel, change)
    if profile is not None:
        channel.profile = profiles.check_profile(profile)
    if protected is not None:
        channel.protected = protected
    record(session, channel, change, "configured",
           extra={"profile": channel.profile, "protected": channel.protected})
    return channel


def check_promotable(session: Session, channel: Channel, version: AdapterVersion,
                     new_base: bool = False, as_canary: bool = False) -> None:
    """Every precondition of putting ``version`` on ``channel`` (as its stable version, or
    ``as_canary`` next to it), each a clear refusal; the pools serving the channel included."""
    name = f"{version.adapter.full_name}@{version.number}"
    if version.adapter_id != channel.adapter_id:
        raise Conflict(f"{name} belongs to another adapter than channel {_name(channel)}")
    if version.status == VersionStatus.YANKED:
        raise Conflict(f"{name} is yanked ({version.yank_reason}) and cannot be promoted")
    fingerprint = version.base_model.fingerprint if version.base_model else None
    if fingerprint is None or version.compat_status != CompatStatus.VERIFIED:
        raise IncompatibleBase(
            f"{name} is not verified against a registered base "
            f"({version.base_hub_id}@{version.base_revision}): register the base first")
    if channel.base_fingerprint and channel.base_fingerprint != fingerprint and not new_base:
        raise IncompatibleBase(
            f"{name} was trained on base {fingerprint}, but {_name(channel)} serves base "
            f"{channel.base_fingerprint}; pass --new-base to switch bases on purpose",
            expected_fingerprint=channel.base_fingerprint, actual_fingerprint=fingerprint)
    found = profiles.problems(session, version, channel.profile)
    if found:
        raise InvalidAdapter(
            f"{name} cannot be served by profile {channel.profile!r}: " + "; ".join(found),
            problems=found)
    desired_sets.check_entry(session, channel, version, as_canary=as_canary)


def promote_now(session: Session, channel: Channel, version: AdapterVersion, change: Change,
                new_base: bool = False) -> Channel:
    """Make ``version`` the stable version at once (no canary)."""
    check_cas(channel, change)
    if channel.rollout_id is not None:
        raise Conflict(f"a rollout is active on {_name(channel)}: abort it before promoting")
    check_promotable(session, channel, version, new_base)
    set_stable(session, channel, version, change, "promoted")
    return channel


def set_stable(session: Session, channel: Channel, version: AdapterVersion, change: Change,
               action: str, rollout_id: int | None = None) -> None:
    before = channel.stable.number if channel.stable else None
    channel.stable = version
    channel.canary = None
    channel.canary_weight_bp = 0
    channel.rollout_id = None
    channel.base_fingerprint = version.base_model.fingerprint if version.base_model else None
    record(session, channel, change, action, from_stable=before, to_stable=version.number,
           snapshot=version, rollout_id=rollout_id)


def record(session: Session, channel: Channel, change: Change, action: str, *,
           from_stable: int | None = None, to_stable: int | None = None,
           snapshot: AdapterVersion | None = None, extra: dict[str, Any] | None = None,
           rollout_id: int | None = None) -> ChannelEvent:
    """Bump the revision and write the history row and the audit event of one change."""
    channel.revision += 1
    channel.updated_at = utcnow()
    snap = metrics.latest(session, [snapshot.id])[snapshot.id] if snapshot else {}
    event = ChannelEvent(
        channel_id=channel.id, revision=channel.revision, action=action,
        from_stable=from_stable, to_stable=to_stable,
        canary=channel.canary.number if channel.canary else None,
        canary_weight_bp=channel.canary_weight_bp, rollout_id=rollout_id or channel.rollout_id,
        actor=change.actor.name, reason=change.reason, metrics={**snap, **(extra or {})},
    )
    session.add(event)
    session.flush()
    audit.record(session, change.actor, f"channel.{action}", "channel", _name(channel),
                 namespace=channel.adapter.namespace.name,
                 payload={"revision": channel.revision, "from": from_stable, "to": to_stable,
                          "canary": event.canary, "weight_bp": event.canary_weight_bp,
                          "reason": change.reason, **(extra or {})})
    desired_sets.channel_changed(session, change.actor, channel)  # pools serving the channel
    return event


def history(session: Session, channel: Channel, *, cursor: str | None = None, limit: int = 100
            ) -> Page[ChannelEvent]:
    stmt = select(ChannelEvent).where(ChannelEvent.channel_id == channel.id)
    return paginate_by_id(session, stmt, ChannelEvent.id, cursor=cursor, limit=limit)


def channels_pointing_at(session: Session, version_ids: Sequence[int]) -> set[int]:
    """Version ids some channel serves (stable or canary): retention never removes these."""
    rows = session.execute(select(Channel.stable_version_id, Channel.canary_version_id))
    held = {v for row in rows for v in row if v is not None}
    return held & set(version_ids)


def _name(channel: Channel) -> str:
    return f"{channel.adapter.full_name}:{channel.name}"


channel_name = _name
