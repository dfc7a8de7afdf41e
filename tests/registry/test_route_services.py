"""What routers did themselves and services now do: revoking a token, subscribing and
unsubscribing webhooks, setting retention (each audited by its service), and the reads of
bases, webhooks and a namespace's channels. Another namespace's admin tries every mutation
and changes nothing; on SQLite and PostgreSQL, through the API."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from registry.db import make_session_factory, transaction
from registry.models import Adapter, ApiToken, AuditEvent, Webhook
from registry.services import adapters
from registry.services.context import Actor
from tests.conftest import BACKENDS
from tests.fixtures.api import Api

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
HOOK = {"url": "https://93.184.216.34/hook", "events": ["version.pushed"]}  # public, no DNS


def seed(api: Api) -> None:
    with transaction(make_session_factory(api.engine)) as session:
        for name in ("acme/bot", "beta/bot"):
            adapters.ensure_adapter(session, Actor("seed"), name)


def call(api: Api, method: str, path: str, token: str, **kw: Any) -> Any:
    return api.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)


def audit_actions(api: Api) -> list[tuple[str, str]]:
    with api.engine.connect() as conn:
        return [(a, t) for a, t in conn.execute(
            select(AuditEvent.action, AuditEvent.target).order_by(AuditEvent.id))]


def refused(answer: Any, status: int = 403) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_another_namespaces_admin_changes_nothing(api: Api) -> None:
    seed(api)
    acme, beta = api.token("admin", "acme"), api.token("admin", "beta")
    hook = call(api, "POST", "/api/v1/namespaces/acme/webhooks", acme, json=HOOK).json()
    acme_reader = call(api, "POST", "/api/v1/tokens", acme,
                       json={"name": "r", "role": "reader", "namespace": "acme"}).json()
    before = audit_actions(api)

    refused(call(api, "DELETE", f"/api/v1/tokens/{acme_reader['id']}", beta))
    refused(call(api, "POST", "/api/v1/namespaces/acme/webhooks", beta, json=HOOK))
    refused(call(api, "DELETE", f"/api/v1/webhooks/{hook['id']}", beta))
    refused(call(api, "PUT", "/api/v1/adapters/acme/bot/retention", beta,
                 json={"keep_last": 1}))
    refused(call(api, "GET", "/api/v1/namespaces/acme/webhooks", beta))
    refused(call(api, "DELETE", "/api/v1/tokens/nosuchid", beta), 404)

    assert audit_actions(api) == before
    with api.engine.connect() as conn:
        assert conn.scalar(select(ApiToken.revoked_at).where(
            ApiToken.id == acme_reader["id"])) is None
        assert conn.scalar(select(Webhook.active).where(Webhook.id == hook["id"])) is True
        assert conn.scalar(select(Webhook.id).where(Webhook.namespace == "acme")
                           .order_by(Webhook.id.desc())) == hook["id"]
        assert conn.scalar(select(Adapter.keep_last).where(Adapter.name == "bot")) is None
    assert call(api, "GET", "/api/v1/whoami", acme_reader["token"]).status_code == 200


def test_each_service_writes_its_audit_event(api: Api) -> None:
    seed(api)
    acme = api.token("admin", "acme")
    hook = call(api, "POST", "/api/v1/namespaces/acme/webhooks", acme, json=HOOK)
    assert hook.status_code == 201, hook.text
    hook_id = hook.json()["id"]
    listed = call(api, "GET", "/api/v1/namespaces/acme/webhooks", acme).json()
    assert [h["id"] for h in listed] == [hook_id] and listed[0]["secret"] is None
    assert call(api, "DELETE", f"/api/v1/webhooks/{hook_id}", acme).status_code == 204
    assert call(api, "GET", "/api/v1/namespaces/acme/webhooks", acme).json()[0]["active"] is False
    kept = call(api, "PUT", "/api/v1/adapters/acme/bot/retention", acme, json={"keep_last": 3})
    assert kept.status_code == 200, kept.text
    reader = call(api, "POST", "/api/v1/tokens", acme,
                  json={"name": "r", "role": "reader", "namespace": "acme"}).json()
    assert call(api, "DELETE", f"/api/v1/tokens/{reader['id']}", acme).status_code == 204
    refused(call(api, "GET", "/api/v1/whoami", reader["token"]), 401)
    assert call(api, "DELETE", f"/api/v1/tokens/{reader['id']}", acme).status_code == 204
    actions = audit_actions(api)
    for expected in [("webhook.created", str(hook_id)), ("webhook.removed", str(hook_id)),
                     ("adapter.retention", "acme/bot"), ("token.revoked", reader["id"])]:
        assert actions.count(expected) == 1, (expected, actions)


def test_reads_moved_out_of_the_routers(api: Api) -> None:
    seed(api)
    bases = call(api, "GET", "/api/v1/bases", api.admin, params={"hub_id": "nobody/none"})
    assert bases.status_code == 200 and bases.json() == {"items": [], "next_cursor": None}
    channels = call(api, "GET", "/api/v1/resolve/acme", api.admin, params={"channel": "prod"})
    assert channels.status_code == 200 and channels.json() == []
    refused(call(api, "GET", "/api/v1/resolve/acme", api.token("reader", "beta")))
    refused(call(api, "GET", "/api/v1/resolve/acme", api.admin,
                 params={"channel": "no such!"}), 400)
