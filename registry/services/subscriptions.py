"""Webhook subscriptions as admins change them: subscribe, list, unsubscribe, each change
audited in its own transaction.

Delivery and the outbox live in :mod:`registry.services.webhooks`, which the audit log itself
calls for every event; the audited operations on subscriptions sit here so that the arrow runs
one way (subscriptions -> audit -> webhooks).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.egress import Guard
from registry.models import Webhook
from registry.refs import check_namespace
from registry.services import audit, webhooks
from registry.services.context import Actor


def subscribe(session: Session, actor: Actor, namespace: str, url: str,
              event_types: Sequence[str], *, guard: Guard = webhooks.PUBLIC_ONLY,
              allow_private: bool = False, secret: str | None = None) -> Webhook:
    """Subscribe ``url`` to ``event_types`` of ``namespace`` (see :func:`webhooks.create` for
    ``guard`` and ``allow_private``)."""
    hook = webhooks.create(session, check_namespace(namespace), url, event_types,
                           created_by=actor.name, guard=guard, allow_private=allow_private,
                           secret=secret)
    audit.record(session, actor, "webhook.created", "webhook", str(hook.id),
                 namespace=namespace, payload={"url": url, "events": list(event_types)})
    return hook


def of_namespace(session: Session, namespace: str) -> list[Webhook]:
    """A namespace's subscriptions, active or not, oldest first."""
    return list(session.scalars(select(Webhook).where(Webhook.namespace == namespace)
                                .order_by(Webhook.id)))


def unsubscribe(session: Session, actor: Actor, hook: Webhook) -> Webhook:
    """Stop queueing events for ``hook``; its deliveries stay inspectable."""
    hook.active = False
    audit.record(session, actor, "webhook.removed", "webhook", str(hook.id),
                 namespace=hook.namespace)
    return hook
