"""Operations: webhooks and their deliveries, garbage collection, retention."""

from __future__ import annotations

from typing import Any

from registry.client._http import Http
from registry.client._paths import adapter_path
from registry.wire import (
    AdapterOut,
    DeliveryOut,
    GcReportOut,
    PingQueued,
    RetentionReportOut,
    WebhookOut,
)


def add_webhook(http: Http, namespace: str, url: str, events: list[str], secret: str | None,
                allow_private: bool) -> WebhookOut:
    body: dict[str, Any] = {"url": url, "events": events, "allow_private": allow_private}
    if secret is not None:
        body["secret"] = secret
    return http.post(f"/api/v1/namespaces/{namespace}/webhooks", body, WebhookOut)


def webhooks(http: Http, namespace: str) -> list[WebhookOut]:
    return http.get_list(f"/api/v1/namespaces/{namespace}/webhooks", WebhookOut)


def remove_webhook(http: Http, webhook_id: int) -> None:
    http.send("DELETE", f"/api/v1/webhooks/{webhook_id}")


def test_webhook(http: Http, webhook_id: int) -> PingQueued:
    return http.post(f"/api/v1/webhooks/{webhook_id}/test", {}, PingQueued)


def deliveries(http: Http, webhook_id: int) -> list[DeliveryOut]:
    return http.get_list(f"/api/v1/webhooks/{webhook_id}/deliveries", DeliveryOut)


def redeliver(http: Http, delivery_id: int) -> DeliveryOut:
    return http.post(f"/api/v1/deliveries/{delivery_id}/redeliver", {}, DeliveryOut)


def gc(http: Http, grace_seconds: int, dry_run: bool) -> GcReportOut:
    body = {"grace_seconds": grace_seconds, "dry_run": dry_run}
    return http.post("/api/v1/gc", body, GcReportOut)


def set_retention(http: Http, adapter: str, keep_last: int | None) -> AdapterOut:
    return http.call("PUT", f"{adapter_path(adapter)}/retention", AdapterOut,
                     json={"keep_last": keep_last})


def apply_retention(http: Http, dry_run: bool) -> RetentionReportOut:
    return http.post("/api/v1/retention", {"dry_run": dry_run}, RetentionReportOut)
