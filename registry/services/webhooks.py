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
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import BadRequest, NotFound
from registry.models import AuditEvent, Webhook, WebhookDelivery, WebhookEvent, utcnow

EVENT_TYPES = (
    "version.pushed", "metrics.logged", "version.yanked", "version.unyanked",
    "merge.succeeded", "merge.failed", "rollout.started", "rollout.step", "rollout.paused",
    "rollout.promoted", "rollout.aborted", "channel.changed", "rollback", "ping",
)
# audit action -> webhook event type
FROM_AUDIT = {
    "version.pushed": "version.pushed", "metrics.logged": "metrics.logged",
    "version.yanked": "version.yanked", "version.unyanked": "version.unyanked",
    "merge.succeeded": "merge.succeeded", "channel.rollout.started": "rollout.started",
    "channel.rollout.step": "rollout.step", "channel.rollout.paused": "rollout.paused",
    "channel.rollout.promoted": "rollout.promoted", "channel.rollout.aborted": "rollout.aborted",
    "channel.promoted": "channel.changed", "channel.configured": "channel.changed",
    "channel.rollback": "rollback",
}
# Cloud metadata endpoints beyond the link-local range.
METADATA_HOSTS = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
TIMEOUT = httpx.Timeout(10.0)


def event_type_of(event: AuditEvent) -> str | None:
    if event.action == "job.failed" and event.payload.get("kind") == "merge":
        return "merge.failed"
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


def check_url(url: str, allow_private: bool) -> str:
    """Refuse URLs that are not http(s) or that resolve to link-local/metadata addresses
    (SSRF), unless ``allow_private``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"webhook URL {url!r} must be an absolute http(s) URL")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadRequest(f"webhook host {parts.hostname!r} does not resolve: {exc}") from exc
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if (addr.is_link_local or addr.is_multicast or addr.is_unspecified
                or addr in METADATA_HOSTS):
            raise BadRequest(
                f"webhook URL {url!r} resolves to {addr}, a link-local or metadata address; "
                "pass allow_private to subscribe it anyway")
    return url


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def create(session: Session, namespace: str, url: str, event_types: Sequence[str], *,
           created_by: str, allow_private: bool = False, secret: str | None = None) -> Webhook:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if not event_types or unknown:
        raise BadRequest(f"event types must be a non-empty subset of {', '.join(EVENT_TYPES)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if secret is not None and not secret.startswith("whsec_"):
        raise BadRequest("a webhook secret looks like whsec_<base64>")
    hook = Webhook(namespace=namespace, url=check_url(url, allow_private),
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
    row.status, row.next_attempt_at = "pending", utcnow()
    return row


def deliver_one(session: Session, client: httpx.Client, *, max_attempts: int,
                backoff: timedelta) -> WebhookDelivery | None:
    """Send the oldest due delivery (held under its row lock while sending)."""
    now = utcnow()
    row = session.scalar(select(WebhookDelivery).where(
        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(1)
        .with_for_update(skip_locked=True))
    if row is None:
        return None
    hook = session.get_one(Webhook, row.webhook_id)
    event = session.get_one(WebhookEvent, row.event_id)
    row.attempts += 1
    code, error = _send(client, hook, event)
    row.last_status_code, row.last_error = code, error
    if error is None:
        row.status, row.delivered_at = "delivered", utcnow()
    elif row.attempts >= max_attempts or not hook.active:
        row.status = "dead"
    else:
        row.next_attempt_at = utcnow() + min(backoff * 2 ** (row.attempts - 1),
                                             timedelta(hours=1))
    return row


def _send(client: httpx.Client, hook: Webhook, event: WebhookEvent) -> tuple[int | None,
                                                                          str | None]:
    body = json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()
    msg_id, timestamp = f"evt_{event.id}", int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(hook.secret, msg_id, timestamp, body),
               "user-agent": "lorareg-webhooks"}
    try:
        check_url(hook.url, hook.allow_private)  # re-check: DNS may have changed since
        response = client.post(hook.url, content=body, headers=headers)
    except (httpx.HTTPError, BadRequest) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:2000]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def stats(session: Session) -> dict[str, int]:
    rows = session.execute(select(WebhookDelivery.status, func.count())
                           .group_by(WebhookDelivery.status)).all()
    return {status: int(n) for status, n in rows}
