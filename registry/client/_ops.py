"""Client methods for operations: webhooks and their deliveries, garbage collection,
retention."""

from __future__ import annotations

from typing import Any

from registry.client._core import Core, adapter_path


class OpsMixin:
    """Webhook, gc and retention methods of :class:`registry.client.Client`."""

    def add_webhook(self: Core, namespace: str, url: str, events: list[str], *,
                    secret: str | None = None, allow_private: bool = False) -> dict[str, Any]:
        """Subscribe ``url`` to ``events`` of ``namespace``; the answer holds the secret."""
        body: dict[str, Any] = {"url": url, "events": events, "allow_private": allow_private}
        if secret is not None:
            body["secret"] = secret
        result: dict[str, Any] = self._post(f"/api/v1/namespaces/{namespace}/webhooks", body)
        return result

    def webhooks(self: Core, namespace: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(f"/api/v1/namespaces/{namespace}/webhooks")
        return result

    def remove_webhook(self: Core, webhook_id: int) -> None:
        self._send("DELETE", f"/api/v1/webhooks/{webhook_id}")

    def test_webhook(self: Core, webhook_id: int) -> dict[str, Any]:
        """Queue a signed ``ping`` event for the subscription."""
        result: dict[str, Any] = self._post(f"/api/v1/webhooks/{webhook_id}/test", {})
        return result

    def deliveries(self: Core, webhook_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(f"/api/v1/webhooks/{webhook_id}/deliveries")
        return result

    def redeliver(self: Core, delivery_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/api/v1/deliveries/{delivery_id}/redeliver", {})
        return result

    def gc(self: Core, *, grace_seconds: int = 86400, dry_run: bool = True) -> dict[str, Any]:
        """Collect unreferenced blobs older than the grace period (dry run by default)."""
        result: dict[str, Any] = self._post(
            "/api/v1/gc", {"grace_seconds": grace_seconds, "dry_run": dry_run})
        return result

    def set_retention(self: Core, adapter: str, keep_last: int | None) -> dict[str, Any]:
        """Keep the newest ``keep_last`` versions of ``adapter`` (None: keep all)."""
        result: dict[str, Any] = self._send(
            "PUT", f"{adapter_path(adapter)}/retention", json={"keep_last": keep_last}).json()
        return result

    def apply_retention(self: Core, *, dry_run: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/api/v1/retention", {"dry_run": dry_run})
        return result
