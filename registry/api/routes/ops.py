"""Webhook subscriptions and deliveries, garbage collection and retention (admin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import ConfigDict, Field

from registry.api import problems
from registry.api import schemas as s
from registry.egress import Guard
from registry.refs import check_namespace
from registry.services import adapters, gc, subscriptions, webhooks
from registry.web.context import CtxDep

router = APIRouter(prefix="/api/v1", tags=["operations"])


class WebhookIn(s.In):
    url: str = Field(max_length=2048)
    events: list[str] = Field(min_length=1, max_length=len(webhooks.EVENT_TYPES))
    secret: str | None = Field(None, max_length=128)
    # Honoured only while the instance allows private targets (403 otherwise).
    allow_private: bool = False


# Strict: these bodies say what to delete, so only a JSON `false` turns the dry run off and
# only an integer sets the grace period (lax parsing reads 0, "no" or "off" as false, and
# false as a grace of 0 seconds, which would delete uploads still in progress).
class GcIn(s.In):
    model_config = ConfigDict(extra="forbid", strict=True)
    grace_seconds: int = Field(86400, ge=0, le=100 * 365 * 86400)
    dry_run: bool = True


class RetentionIn(s.In):
    model_config = ConfigDict(extra="forbid", strict=True)
    dry_run: bool = True


class KeepLastIn(s.In):
    keep_last: int | None = Field(None, ge=1, le=100000)


@router.post("/namespaces/{ns}/webhooks", response_model=s.WebhookOut, status_code=201)
def add_webhook(ns: str, body: WebhookIn, ctx: CtxDep) -> s.WebhookOut:
    """Subscribe a URL; the response holds the signing secret (shown once). Private
    targets need ``allow_private`` and the instance setting LORAREG_WEBHOOK_ALLOW_PRIVATE."""
    check_namespace(ns)
    ctx.require("admin", ns)
    guard = Guard(allow_private=ctx.state.settings.webhook_allow_private)
    with ctx.tx() as session:
        hook = subscriptions.subscribe(session, ctx.actor, ns, body.url, body.events,
                                       guard=guard, allow_private=body.allow_private,
                                       secret=body.secret)
        return s.webhook_out(hook, with_secret=True)


@router.get("/namespaces/{ns}/webhooks", response_model=list[s.WebhookOut])
def list_webhooks(ns: str, ctx: CtxDep) -> list[s.WebhookOut]:
    ctx.require("admin", ns)
    with ctx.tx() as session:
        return [s.webhook_out(h) for h in subscriptions.of_namespace(session, ns)]


@router.delete("/webhooks/{webhook_id}", status_code=204)
def remove_webhook(webhook_id: int, ctx: CtxDep) -> Response:
    with ctx.tx() as session:
        hook = webhooks.get(session, webhook_id)
        ctx.require("admin", hook.namespace)
        subscriptions.unsubscribe(session, ctx.actor, hook)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/test", response_model=s.PingQueued, status_code=202)
def test_webhook(webhook_id: int, ctx: CtxDep) -> s.PingQueued:
    """Queue a signed ``ping`` event for this subscription."""
    with ctx.tx() as session:
        hook = webhooks.get(session, webhook_id)
        ctx.require("admin", hook.namespace)
        return s.PingQueued(event_id=webhooks.ping(session, hook).id)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[s.DeliveryOut])
def list_deliveries(webhook_id: int, ctx: CtxDep,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[s.DeliveryOut]:
    with ctx.tx() as session:
        hook = webhooks.get(session, webhook_id)
        ctx.require("admin", hook.namespace)
        return [s.delivery_out(d) for d in webhooks.deliveries(session, hook, limit)]


@router.post("/deliveries/{delivery_id}/redeliver", response_model=s.DeliveryOut)
def redeliver(delivery_id: int, ctx: CtxDep) -> s.DeliveryOut:
    with ctx.tx() as session:
        row = webhooks.redeliver(session, delivery_id)
        ctx.require("admin", webhooks.get(session, row.webhook_id).namespace)
        return s.delivery_out(row)


@router.post("/gc", response_model=s.GcReportOut, responses=problems.responses(503))
def collect_garbage(body: GcIn, ctx: CtxDep) -> s.GcReportOut:
    """Delete unreferenced blobs older than the grace period (dry run by default)."""
    ctx.require_global("admin")
    report = gc.collect(ctx.state.sessions, ctx.store, ctx.actor,
                        grace=timedelta(seconds=body.grace_seconds), dry_run=body.dry_run)
    return s.GcReportOut.model_validate(report, from_attributes=True)


@router.post("/retention", response_model=s.RetentionReportOut)
def retention(body: RetentionIn, ctx: CtxDep) -> s.RetentionReportOut:
    """Yank versions beyond each adapter's keep_last (dry run by default)."""
    ctx.require_global("admin")
    with ctx.tx() as session:
        report = gc.apply_retention(session, ctx.actor, dry_run=body.dry_run)
        return s.RetentionReportOut.model_validate(report, from_attributes=True)


@router.put("/adapters/{ns}/{name}/retention", response_model=s.AdapterOut)
def set_retention(ns: str, name: str, body: KeepLastIn, ctx: CtxDep) -> s.AdapterOut:
    """Keep the newest N versions (plus any a channel points at); null turns it off."""
    ctx.require("admin", ns)
    with ctx.tx() as session:
        adapter = adapters.set_retention(session, ctx.actor, f"{ns}/{name}", body.keep_last)
        return s.adapter_out(adapter)
