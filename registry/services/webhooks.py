"""Durable webhooks: a transactional outbox and signed, retried deliveries.

Events are written by :func:`emit` inside the transaction of the change they report (the audit
log calls it), with one delivery row per subscribed webhook. A delivery loop in the workers
claims due deliveries (``FOR UPDATE SKIP LOCKED``), POSTs them and records the outcome; a
failed attempt is retried with exponential backoff up to a limit and then marked ``dead``.
A worker killed between commit and send leaves the delivery pending, so it is sent later:
delivery is at least once, and ``webhook-id`` (``evt_<event id>``) is stable across attempts
so receivers can de-duplicate.

Signatures follow the Standard Webhooks scheme: headers ``webhook-id``,
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` =
``v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>`` where ``key`` is the base64
part of the ``whsec_...`` secret, decoded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.egress import Guard, guarded_client
from registry.errors import BadRequest, NotFound, PermissionDenied
from registry.models import AuditEvent, Webhook, WebhookDelivery, WebhookEvent, utcnow
from registry.statuses import BaseVerdict, DeliveryStatus

EVENT_TYPES = (
    "version.pushed", "metrics.logged", "version.yanked", "version.unyanked",
    "merge.succeeded", "merge.failed", "rollout.started", "rollout.step", "rollout.paused",
    "rollout.promoted", "rollout.aborted", "channel.changed", "rollback", "pool.drift",
    "pool.incompatible_base", "ping",
)
# audit action -> webhook event type
FROM_AUDIT = {
    "version.pushed": "version.pushed", "metrics.logged": "metrics.logged",
    "version.yanked": "version.yanked", "version.unyanked": "version.unyanked",
    "merge.succeeded": "merge.succeeded", "channel.rollout.started": "rollout.started",
    "channel.rollout.step": "rollout.step", "channel.rollout.paused": "rollout.paused",
    "channel.rollout.promoted": "rollout.promoted", "channel.rollout.aborted": "rollout.aborted",
    "channel.promoted": "channel.changed", "channel.configured": "channel.changed",
    "channel.rollback": "rollback", "pool.replica_drift": "pool.drift",
}
TIMEOUT = httpx.Timeout(10.0)
PUBLIC_ONLY = Guard()  # an instance that does not allow private targets
log = logging.getLogger("lorareg.webhooks")


def event_type_of(event: AuditEvent) -> str | None:
    if event.action == "job.failed" and event.payload.get("kind") == "merge":
        return "merge.failed"
    if event.action == "pool.replica_verdict":  # only becoming incompatible is news to send
        incompatible = event.payload.get("verdict") == BaseVerdict.INCOMPATIBLE
        return "pool.incompatible_base" if incompatible else None
    return FROM_AUDIT.get(event.action)


def emit(session: Session, event: AuditEvent) -> WebhookEvent | None:
    """Queue a webhook event for an audit event, in the same transaction."""
    kind = event_type_of(event)
    if kind is None or event.namespace is None:
        return None
    hooks = [h for h in session.scalars(select(Webhook).where(
        Webhook.namespace == event.namespace, Webhook.active.is_(True)))
        if kind in h.event_types]
    if not hooks:
        return None
    return _queue(session, hooks, event.namespace, kind, {
        "type": kind, "target": event.target, "actor": event.actor,
        "request_id": event.request_id, "data": event.payload,
    })


def _queue(session: Session, hooks: Sequence[Webhook], namespace: str, kind: str,
           body: dict[str, Any]) -> WebhookEvent:
    row = WebhookEvent(namespace=namespace, event_type=kind, payload=body)
    session.add(row)
    session.flush()
    row.payload = {**body, "id": f"evt_{row.id}", "timestamp": utcnow().isoformat()}
    now = utcnow()
    session.add_all(WebhookDelivery(webhook_id=h.id, event_id=row.id, next_attempt_at=now)
                    for h in hooks)
    session.flush()
    return row


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def create(session: Session, namespace: str, url: str, event_types: Sequence[str], *,
           created_by: str, guard: Guard = PUBLIC_ONLY, allow_private: bool = False,
           secret: str | None = None) -> Webhook:
    """Subscribe ``url``. ``guard`` is the instance's (LORAREG_WEBHOOK_ALLOW_PRIVATE);
    ``allow_private`` asks for a private target, which only that setting can permit."""
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if not event_types or unknown:
        raise BadRequest(f"event types must be a non-empty subset of {', '.join(EVENT_TYPES)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if secret is not None and not secret.startswith("whsec_"):
        raise BadRequest("a webhook secret looks like whsec_<base64>")
    if allow_private and not guard.allow_private:
        raise PermissionDenied(
            "private webhook targets are turned off on this instance; only its operator can "
            "turn them on (LORAREG_WEBHOOK_ALLOW_PRIVATE), and link-local and cloud metadata "
            "addresses stay refused even then")
    hook = Webhook(namespace=namespace, url=guard.narrowed(allow_private).check_url(url),
                   secret=secret or new_secret(), event_types=sorted(set(event_types)),
                   allow_private=allow_private, created_by=created_by)
    session.add(hook)
    session.flush()
    return hook


def get(session: Session, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return hook


def ping(session: Session, hook: Webhook) -> WebhookEvent:
    return _queue(session, [hook], hook.namespace, "ping", {"type": "ping",
                                                           "webhook_id": hook.id})


def deliveries(session: Session, hook: Webhook, limit: int = 100) -> list[WebhookDelivery]:
    return list(session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.webhook_id == hook.id).order_by(WebhookDelivery.id.desc()).limit(limit)))


def redeliver(session: Session, delivery_id: int) -> WebhookDelivery:
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found")
    row.status, row.next_attempt_at = DeliveryStatus.PENDING, utcnow()
    return row


class DeliveryClient:
    """The HTTP clients deliveries go through, each connection checked by the instance's
    guard: one for public targets, and one for webhooks subscribed with ``allow_private``
    while the instance allows private targets. (Two pools, so that a connection opened for a
    private target is never reused by a webhook that may not reach it.)"""

    def __init__(self, guard: Guard, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.public = guarded_client(guard.narrowed(False), timeout)
        self.private = guarded_client(guard, timeout) if guard.allow_private else None

    def for_hook(self, hook: Webhook) -> httpx.Client:
        if hook.allow_private and self.private is not None:
            return self.private
        return self.public

    def close(self) -> None:
        self.public.close()
        if self.private is not None:
            self.private.close()

    def __enter__(self) -> DeliveryClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def deliver_one(session: Session, client: DeliveryClient, *, max_attempts: int,
                backoff: timedelta) -> WebhookDelivery | None:
    """Send the oldest due delivery (held under its row lock while sending)."""
    now = utcnow()
    row = session.scalar(select(WebhookDelivery).where(
        WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(1)
        .with_for_update(skip_locked=True))
    if row is None:
        return None
    hook = session.get_one(Webhook, row.webhook_id)
    event = session.get_one(WebhookEvent, row.event_id)
    row.attempts += 1
    code, error = _send(client.for_hook(hook), hook, event, row.id)
    row.last_status_code, row.last_error = code, error
    if error is None:
        row.status, row.delivered_at = DeliveryStatus.DELIVERED, utcnow()
    elif row.attempts >= max_attempts or not hook.active:
        row.status = DeliveryStatus.DEAD
    else:
        row.next_attempt_at = utcnow() + min(backoff * 2 ** (row.attempts - 1),
                                             timedelta(hours=1))
    return row


def _send(client: httpx.Client, hook: Webhook, event: WebhookEvent,
          delivery_id: int) -> tuple[int | None, str | None]:
    """POST the event; the error stored for the namespace's admins says only that it failed
    (and the status, if one came back): what went wrong at connect (refused by the address
    guard, connection refused, timeout) would map the network behind the server."""
    body = json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()
    msg_id, timestamp = f"evt_{event.id}", int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(hook.secret, msg_id, timestamp, body),
               "user-agent": "lorareg-webhooks"}
    try:  # streamed and closed unread: a receiver's answer is its status, not its body
        with client.stream("POST", hook.url, content=body, headers=headers) as response:
            code = response.status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # the URL may hold credentials: not logged
        log.warning("webhook %s delivery %s failed: %s: %s", hook.id, delivery_id,
                    type(exc).__name__, exc)
        return None, "delivery failed"
    if 200 <= code < 300:
        return code, None
    return code, f"delivery failed: HTTP {code}"


def stats(session: Session) -> dict[str, int]:
    rows = session.execute(select(WebhookDelivery.status, func.count())
                           .group_by(WebhookDelivery.status)).all()
    return {status: int(n) for status, n in rows}
