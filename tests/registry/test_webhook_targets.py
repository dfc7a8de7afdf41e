"""Which addresses webhooks may reach (SSRF): address spellings at subscription, the address a
delivery really connects to, the instance-only private setting, namespace isolation of the
webhook routes, and delivery errors that say nothing about the network."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from merge_worker.worker import Worker
from registry.api.app import create_app
from registry.blobs import LocalBlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.models import Webhook, WebhookDelivery, WebhookEvent
from registry.services import webhooks
from tests.fixtures.api import Api
from tests.fixtures.s3 import free_port
from tests.registry.test_webhooks import Receiver

# Each spells a cloud metadata or link-local address: refused even where private targets are
# allowed.
METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::ffff:100.100.100.200]/",
    "http://100.100.100.200/",
    "http://[fd00:ec2::254]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64, well-known prefix
    "http://[64:ff9b:1:a9fe:a9:fe00::]/",  # NAT64, local-use prefix of length 48
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64, local-use prefix of length 96
    "http://[::a9fe:a9fe]/",  # IPv4-compatible
    "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",  # Teredo, client 169.254.169.254
    "http://[fe80::1%25eth0]/",  # scoped link-local
    "http://[fe80::1]/",
    "http://169.254.1.1/",
]
# Each reaches the host itself or a private network: refused unless the instance allows.
PRIVATE_SPELLINGS = [
    "http://127.0.0.1:8080/", "http://localhost/", "http://2130706433/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://10.1.2.3/",
    "http://[64:ff9b::a00:1]/", "http://192.168.1.1/", "http://100.64.0.1/",
    "http://[fc00::1]/", "http://[fec0::1]/", "http://[2002:a00:1::1]/",
]
PUBLIC = ["http://8.8.8.8/hook", "http://[64:ff9b::808:808]/", "http://[2606:4700::1111]/"]


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_api(fresh_db_url: str, tmp_path: Path) -> Iterator[Callable[[bool], Api]]:
    """The API in-process; the argument is LORAREG_WEBHOOK_ALLOW_PRIVATE."""
    engine = make_engine(fresh_db_url)

    def make(allow_private: bool) -> Api:
        settings = Settings(mode="production", database_url=fresh_db_url,
                            blob_url=f"file://{tmp_path / 'blobs'}",
                            webhook_allow_private=allow_private)
        app = create_app(settings, engine=engine, store=LocalBlobStore(tmp_path / "blobs"),
                         host="0.0.0.0")
        api = Api(TestClient(app, raise_server_exceptions=False), engine, "")
        api.admin = api.token("admin")
        return api

    yield make
    engine.dispose()


def subscribe(api: Api, token: str, url: str, *, allow_private: bool = False,
              ns: str = "acme") -> Any:
    return api.client.post(f"/api/v1/namespaces/{ns}/webhooks", headers=h(token), json={
        "url": url, "events": ["ping"], "allow_private": allow_private})


@pytest.mark.parametrize("instance_allows", [False, True])
@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_metadata_and_link_local_refused_at_subscription_however_spelled(
    make_api: Callable[[bool], Api], url: str, instance_allows: bool
) -> None:
    api = make_api(instance_allows)
    r = subscribe(api, api.admin, url, allow_private=instance_allows)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "link-local or cloud metadata" in r.json()["detail"]
    assert api.count(Webhook) == 0


@pytest.mark.parametrize("url", PRIVATE_SPELLINGS)
def test_private_targets_refused_at_subscription_by_default(
    make_api: Callable[[bool], Api], url: str
) -> None:
    api = make_api(False)
    r = subscribe(api, api.admin, url)
    assert r.status_code == 400, r.text
    assert "private" in r.json()["detail"]
    assert api.count(Webhook) == 0


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_accepted(make_api: Callable[[bool], Api], url: str) -> None:
    api = make_api(False)
    assert subscribe(api, api.admin, url).status_code == 201
    assert api.count(Webhook) == 1


def test_namespace_admin_cannot_enable_private_targets(
    make_api: Callable[[bool], Api]
) -> None:
    api = make_api(False)
    ns_admin = api.token("admin", "acme")
    for token in (ns_admin, api.admin):  # the instance setting, not a role, decides
        r = subscribe(api, token, "http://127.0.0.1:8080/hook", allow_private=True)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "LORAREG_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]
    assert api.count(Webhook) == 0


def test_instance_allowing_private_targets_still_needs_the_hook_to_ask(
    make_api: Callable[[bool], Api]
) -> None:
    api = make_api(True)
    ns_admin = api.token("admin", "acme")
    refused = subscribe(api, ns_admin, "http://127.0.0.1:8080/hook")
    assert refused.status_code == 400 and api.count(Webhook) == 0
    made = subscribe(api, ns_admin, "http://127.0.0.1:8080/hook", allow_private=True)
    assert made.status_code == 201 and made.json()["allow_private"] is True


def test_another_namespace_cannot_touch_webhooks(make_api: Callable[[bool], Api]) -> None:
    api = make_api(False)
    hook = subscribe(api, api.token("admin", "acme"), PUBLIC[0]).json()
    assert api.client.post(f"/api/v1/webhooks/{hook['id']}/test",
                           headers=h(api.admin)).status_code == 202
    with api.engine.connect() as conn:
        delivery_id = conn.scalar(select(WebhookDelivery.id))
    other = api.token("admin", "other")
    attempts = [
        ("POST", "/api/v1/namespaces/acme/webhooks", {"url": PUBLIC[1], "events": ["ping"]}),
        ("GET", "/api/v1/namespaces/acme/webhooks", None),
        ("DELETE", f"/api/v1/webhooks/{hook['id']}", None),
        ("POST", f"/api/v1/webhooks/{hook['id']}/test", None),
        ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", None),
        ("POST", f"/api/v1/deliveries/{delivery_id}/redeliver", None),
    ]
    for method, path, body in attempts:
        r = api.client.request(method, path, json=body, headers=h(other))
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "secret" not in r.text and PUBLIC[0] not in r.text
    assert api.count(Webhook) == 1 and api.count(WebhookEvent) == 1
    with api.engine.connect() as conn:
        assert conn.scalar(select(Webhook.active)) is True


# Deliveries: the worker, a real receiver on 127.0.0.1 and hooks stored as if their host had
# resolved to a public address when they were subscribed.


@pytest.fixture
def sessions(fresh_db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(fresh_db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def deliver(sessions: sessionmaker[Session], tmp_path: Path, url: str, *,
            instance_allows: bool, hook_allows: bool) -> WebhookDelivery:
    """Store a hook for ``url``, queue a ping and let a worker deliver it once."""
    with transaction(sessions) as session:
        hook = Webhook(namespace="acme", url=url, secret=webhooks.new_secret(),
                       event_types=["ping"], allow_private=hook_allows, created_by="t")
        session.add(hook)
        session.flush()
        webhooks.ping(session, hook)
    settings = Settings(home=tmp_path / "home", database_url="sqlite://",
                        webhook_allow_private=instance_allows)
    worker = Worker(settings, sessions, LocalBlobStore(tmp_path / "blobs"), {})
    assert worker.deliver_webhooks() == 1
    with transaction(sessions) as session:
        return session.scalars(select(WebhookDelivery)).one()


def test_host_resolving_to_loopback_at_delivery_is_refused_at_connect(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    """DNS rebinding: the host now answers 127.0.0.1; nothing reaches the receiver."""
    url = receiver.url.replace("127.0.0.1", "localhost")
    row = deliver(sessions, tmp_path, url, instance_allows=False, hook_allows=False)
    assert receiver.received == []
    assert (row.status, row.last_status_code, row.last_error) == ("pending", None,
                                                                  "delivery failed")


def test_hook_that_did_not_ask_is_refused_even_where_the_instance_allows(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    row = deliver(sessions, tmp_path, url, instance_allows=True, hook_allows=False)
    assert receiver.received == [] and row.last_error == "delivery failed"


def test_hook_stored_with_allow_private_is_refused_unless_the_instance_allows(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    """A row from before the instance setting (a namespace admin could set the flag) gets
    no private target."""
    row = deliver(sessions, tmp_path, receiver.url, instance_allows=False, hook_allows=True)
    assert receiver.received == [] and row.last_error == "delivery failed"


def test_private_target_delivered_where_the_instance_allows(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    row = deliver(sessions, tmp_path, url, instance_allows=True, hook_allows=True)
    assert len(receiver.received) == 1
    assert (row.status, row.last_status_code, row.last_error) == ("delivered", 204, None)


def test_stored_error_says_nothing_about_the_connection(
    sessions: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="lorareg.webhooks"):
        row = deliver(sessions, tmp_path, f"http://127.0.0.1:{port}/hook",
                      instance_allows=True, hook_allows=True)
    assert (row.last_status_code, row.last_error) == (None, "delivery failed")
    assert str(port) in caplog.text  # the operator's log keeps the details


def test_redirect_not_followed_and_status_only(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status, receiver.headers = 302, {"Location": "http://169.254.169.254/latest"}
    row = deliver(sessions, tmp_path, receiver.url, instance_allows=True, hook_allows=True)
    assert len(receiver.received) == 1
    assert (row.last_status_code, row.last_error) == (302, "delivery failed: HTTP 302")
