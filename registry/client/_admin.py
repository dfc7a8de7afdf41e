"""The server itself, tokens and the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from registry.client._http import Http, query
from registry.wire import AuditOut, Health, Page, ServerVersion, TokenOut, WhoAmI


def health(http: Http) -> Health:
    return http.get("/healthz", Health)


def server_version(http: Http) -> ServerVersion:
    return http.get("/api/v1/version", ServerVersion)


def whoami(http: Http) -> WhoAmI:
    return http.get("/api/v1/whoami", WhoAmI)


def audit(http: Http, namespace: str | None, target: str | None, action: str | None,
          limit: int | None) -> Iterator[AuditOut]:
    params = query(namespace=namespace, target=target, action=action)
    return http.paginate("/api/v1/audit", AuditOut, params, limit)


def create_token(http: Http, name: str, role: str, namespace: str | None,
                 expires_in_days: int | None) -> TokenOut:
    body: dict[str, Any] = {"name": name, "role": role, "namespace": namespace}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    return http.post("/api/v1/tokens", body, TokenOut)


def tokens(http: Http) -> list[TokenOut]:
    return http.get("/api/v1/tokens", Page[TokenOut]).items


def revoke_token(http: Http, token_id: str) -> None:
    http.send("DELETE", f"/api/v1/tokens/{quote(token_id, safe='')}")
