"""`lorareg webhook|gc|retention` against a real server and worker, with a real receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from tests.cli.helpers import embedded_server, run
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer
from tests.fixtures.workers import wait_until
from tests.registry.test_webhooks import Receiver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The receiver listens on loopback, a private target: the instance allows those.
    with embedded_server(tmp_path_factory.mktemp("ops"), LORAREG_WEBHOOK_BACKOFF_SECONDS="0.2",
                         LORAREG_WEBHOOK_ALLOW_PRIVATE="true") as srv:
        yield srv


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_webhook_add_test_deliveries_rm(server: LiveServer, receiver: Receiver,
                                        tiny_models: TinyModels) -> None:
    env = server.env
    assert run(env, "webhook", "add", "acme", receiver.url, "--event", "ping").code == 4
    added = run(env, "--json", "webhook", "add", "acme", receiver.url, "--allow-private",
                "--event", "version.pushed", "--event", "ping").json()
    secret, hook = added["secret"], added["id"]
    assert secret.startswith("whsec_")
    assert run(env, "webhook", "test", str(hook)).code == 0
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    assert run(env, "push", str(adapter), "--adapter", "acme/hooked",
               "--base", "tiny/llama@r1").code == 0
    wait_until(lambda: len(receiver.received) >= 2, timeout=30)
    types = sorted(json.loads(r["body"])["type"] for r in receiver.received)
    assert types == ["ping", "version.pushed"]
    first = receiver.received[0]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (f"{first['headers']['webhook-id']}.{first['headers']['webhook-timestamp']}."
              .encode() + first["body"])
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert first["headers"]["webhook-signature"] == f"v1,{expected}"
    rows = run(env, "--json", "webhook", "deliveries", str(hook)).json()
    assert {d["status"] for d in rows} == {"delivered"}
    assert run(env, "webhook", "redeliver", str(rows[0]["id"])).code == 0
    wait_until(lambda: len(receiver.received) >= 3, timeout=30)
    assert run(env, "webhook", "rm", str(hook)).code == 0
    listed = run(env, "--json", "webhook", "ls", "acme").json()
    assert [h["active"] for h in listed] == [False]
    refused = run(env, "webhook", "add", "acme", "http://[::ffff:169.254.169.254]/x",
                  "--allow-private", "--event", "ping")
    assert refused.code == 4 and "link-local" in refused.stderr


def test_gc_and_retention_commands(server: LiveServer) -> None:
    env = server.env
    dry = run(env, "--json", "gc", "--dry-run", "--grace", "0s").json()
    assert dry["dry_run"] is True
    report = run(env, "gc", "--grace", "24h")
    assert report.code == 0 and "deleted" in report.stdout
    assert run(env, "gc", "--grace", "soon").code == 1
    assert run(env, "retention", "set", "acme/nothing", "--keep-last", "2").code == 2
    plan = run(env, "--json", "retention", "apply").json()
    assert plan["dry_run"] is True and plan["yanked"] == []
