"""The append-only audit log. Every mutating service calls :func:`record` inside its own
transaction, so an event exists exactly when its mutation was committed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import AuditEvent
from registry.services import webhooks
from registry.services.context import Actor
from registry.services.pagination import Page, paginate_by_id


def record(
    session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target: str,
    *,
    namespace: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event to the current transaction."""
    event = AuditEvent(
        actor=actor.name,
        action=action,
        target_type=target_type,
        target=target,
        namespace=namespace,
        payload=payload or {},
        request_id=actor.request_id,
    )
    session.add(event)
    webhooks.emit(session, event)  # the outbox row commits (or not) with this event
    return event


def list_events(
    session: Session,
    *,
    namespaces: Sequence[str] | None = None,
    namespace: str | None = None,
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[AuditEvent]:
    """Newest first. ``namespaces`` restricts to the caller's scope (None = all)."""
    stmt = select(AuditEvent)
    if namespaces is not None:
        stmt = stmt.where(AuditEvent.namespace.in_(namespaces))
    if namespace:
        stmt = stmt.where(AuditEvent.namespace == namespace)
    if target:
        stmt = stmt.where(AuditEvent.target.startswith(target, autoescape=True))
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    return paginate_by_id(session, stmt, AuditEvent.id, cursor=cursor, limit=limit)


def trail(session: Session, target_type: str, target: str, limit: int = 50
          ) -> list[AuditEvent]:
    """The audit trail of exactly one target (no prefix match), newest first."""
    return list(session.scalars(
        select(AuditEvent).where(AuditEvent.target_type == target_type,
                                 AuditEvent.target == target)
        .order_by(AuditEvent.id.desc()).limit(limit)))
