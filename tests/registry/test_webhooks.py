"""Webhooks against a real local HTTP receiver: signatures, retries, at-least-once.

The receiver listens on loopback, a private target: these tests subscribe it as an instance
that allows private targets would (``LOCAL``); the address guard has its own tests in
``test_webhook_targets.py``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.egress import Guard
from registry.errors import BadRequest, PermissionDenied
from registry.models import WebhookDelivery
from registry.refs import Ref
from registry.services import (
    bases,
    channels,
    desired_sets,
    jobs,
    merges,
    pools,
    residency,
    rollouts,
    versions,
    webhooks,
)
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.metrics import MetricInput, log_metrics
from registry.services.pools import PoolSettings
from registry.services.residency import Report, Reported
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest
from registry.statuses import AdapterState
from tests.fixtures.adapters import adapter_files, store_files
from tests.fixtures.server import free_port
from tests.registry.test_bases import entries, registration

ACTOR = Actor("dave")
# An instance with LORAREG_WEBHOOK_ALLOW_PRIVATE on, and a webhook that asks for it.
LOCAL: dict[str, Any] = {"guard": Guard(allow_private=True), "allow_private": True}


class Receiver:
    """A real HTTP server that records what it receives; can be switched to fail."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failing = False
        self.status, self.headers = 204, dict[str, str]()  # the answer when not failing
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.failing:
                    self.send_response(503)
                else:
                    receiver.received.append({"headers": dict(self.headers), "body": body})
                    self.send_response(receiver.status)
                    for name, value in receiver.headers.items():
                        self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def sessions(fresh_db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(fresh_db_url)
    yield make_session_factory(engine)
    engine.dispose()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, written from the Standard Webhooks spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig.split(",", 1)[1] == expected for sig in headers["webhook-signature"].split())


def deliver_all(sessions: sessionmaker[Session], rounds: int = 200) -> int:
    sent = 0
    with webhooks.DeliveryClient(LOCAL["guard"]) as client:
        for _ in range(rounds):
            with transaction(sessions) as session:
                row = webhooks.deliver_one(session, client, max_attempts=5,
                                           backoff=timedelta(seconds=0))
            if row is None:
                break
            sent += 1
    return sent


def make_everything_happen(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """One of every event type, through the real services."""
    store = LocalBlobStore(tmp_path / "blobs")
    with transaction(sessions) as session:
        bases.register_base(session, ACTOR, registration(entries()))
        vs = []
        for seed in range(3):
            files = store_files(session, store, adapter_files(seed=seed))
            vs.append(versions.push_version(session, store, ACTOR, PushRequest(
                "acme/bot", files, "tiny/llama", "abc")).version)
        log_metrics(session, ACTOR, vs[0], [MetricInput("acc", 0.9)])
        versions.yank(session, ACTOR, Ref("acme", "bot", version=3), "bad")
        versions.unyank(session, ACTOR, Ref("acme", "bot", version=3))
        prod = channels.ensure_channel(session, ACTOR, vs[0].adapter, "prod")
        channels.promote_now(session, prod, vs[0], Change(ACTOR))
        r = rollouts.start(session, prod, vs[1], Change(ACTOR),
                           RolloutSpec(steps=[50, 100], interval_seconds=60))
        rollouts.pause(session, r, Change(ACTOR))
        rollouts.abort(session, r, Change(ACTOR))
        r2 = rollouts.start(session, prod, vs[1], Change(ACTOR),
                            RolloutSpec(steps=[100], interval_seconds=60))
        session.execute(update(rollouts.Rollout).where(rollouts.Rollout.id == r2.id)
                        .values(next_eval_at=jobs.db_now(session) - timedelta(seconds=1)))
        rollouts.tick(session)
        rollouts.rollback(session, prod, Change(ACTOR, reason="test"))
        job = merges.request_merge(session, ACTOR, vs[2]).job
        assert job is not None
        jobs.claim(session, "w", lease=timedelta(seconds=30))
        jobs.fail(session, job.id, "w", "boom", retry=False)
        merged = store_files(session, store, {"model.safetensors": b"merged"})
        assert vs[0].base_model is not None
        merges.record_artifact(session, ACTOR, version=vs[0], base=vs[0].base_model,
                               files=merged, merged_fingerprint="0" * 64, job_id=None)
        pool = pools.create_pool(session, ACTOR, "acme/gpu-a", PoolSettings(
            base="tiny/llama@abc", model_id="/models/llama", dtype="bfloat16"))
        residency.heartbeat(session, ACTOR, pool, "gpu-0", Report(  # drift + incompatible base
            engine="vllm", agent_version="0", interval_seconds=10, cache_bytes=0,
            base_fingerprint="f" * 64, adapters=[Reported(
                desired_sets.served(vs[0]), AdapterState.LOADED, vs[0].manifest_digest)]))


def test_every_event_type_arrives_once_signed(sessions: sessionmaker[Session],
                                              receiver: Receiver, tmp_path: Path) -> None:
    with transaction(sessions) as session:
        hook = webhooks.create(session, "acme", receiver.url, list(webhooks.EVENT_TYPES),
                               created_by="t", **LOCAL)
        secret, hook_id = hook.secret, hook.id
    make_everything_happen(sessions, tmp_path)
    with transaction(sessions) as session:
        webhooks.ping(session, webhooks.get(session, hook_id))
    deliver_all(sessions)
    types = [json.loads(r["body"])["type"] for r in receiver.received]
    wanted = set(webhooks.EVENT_TYPES)
    assert wanted <= set(types), sorted(wanted - set(types))
    ids = [r["headers"]["webhook-id"] for r in receiver.received]
    assert len(ids) == len(set(ids))  # each event exactly once
    assert all(verify(secret, r["headers"], r["body"]) for r in receiver.received)
    assert not verify("whsec_" + base64.b64encode(b"x" * 24).decode(),
                      receiver.received[0]["headers"], receiver.received[0]["body"])


def test_receiver_down_then_back_gets_everything(sessions: sessionmaker[Session],
                                                 receiver: Receiver, tmp_path: Path) -> None:
    with transaction(sessions) as session:
        webhooks.create(session, "acme", receiver.url, ["version.pushed"], created_by="t",
                        **LOCAL)
    receiver.failing = True
    store = LocalBlobStore(tmp_path / "blobs")
    with transaction(sessions) as session:
        for seed in range(3):
            files = store_files(session, store, adapter_files(seed=seed))
            versions.push_version(session, store, ACTOR, PushRequest(
                "acme/bot", files, "tiny/llama", "abc"))
    deliver_all(sessions, rounds=6)
    with transaction(sessions) as session:
        rows = list(session.scalars(select(WebhookDelivery)))
        assert all(r.status == "pending" and r.attempts >= 1 and r.last_status_code == 503
                   for r in rows)
    receiver.failing = False
    deliver_all(sessions)
    targets = sorted(json.loads(r["body"])["target"] for r in receiver.received)
    assert targets == ["acme/bot@1", "acme/bot@2", "acme/bot@3"]


def test_dead_after_max_attempts_and_redeliver(sessions: sessionmaker[Session],
                                               receiver: Receiver, tmp_path: Path) -> None:
    with transaction(sessions) as session:
        hook = webhooks.create(session, "acme", receiver.url, ["ping"], created_by="t",
                               **LOCAL)
        webhooks.ping(session, hook)
    receiver.failing = True
    deliver_all(sessions)
    with transaction(sessions) as session:
        row = session.scalars(select(WebhookDelivery)).one()
        assert row.status == "dead" and row.attempts == 5
        delivery_id = row.id
    receiver.failing = False
    with transaction(sessions) as session:
        webhooks.redeliver(session, delivery_id)
    deliver_all(sessions)
    assert len(receiver.received) == 1


def test_crash_between_commit_and_send_still_delivers(
    sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    """A worker that dies mid-delivery rolls back its attempt: the event is sent later, with
    the same webhook-id."""
    with transaction(sessions) as session:
        hook = webhooks.create(session, "acme", receiver.url, ["ping"], created_by="t",
                               **LOCAL)
        webhooks.ping(session, hook)

    class Died(Exception):
        pass

    def die(response: httpx.Response) -> None:
        raise Died  # the request went out, and the worker died before committing

    with webhooks.DeliveryClient(LOCAL["guard"]) as client:
        assert client.private is not None
        client.private.event_hooks = {"response": [die]}
        with pytest.raises(Died), transaction(sessions) as session:
            webhooks.deliver_one(session, client, max_attempts=5, backoff=timedelta(0))
    deliver_all(sessions)
    ids = [r["headers"]["webhook-id"] for r in receiver.received]
    assert len(ids) == 2 and ids[0] == ids[1]  # at least once, de-duplicable by id


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data",
                                 "http://[fe80::1]/x", "ftp://example.com/x", "not a url",
                                 "http://127.0.0.1:99999/x"])
def test_ssrf_refused(url: str, session: Session) -> None:
    with pytest.raises(BadRequest):
        webhooks.create(session, "acme", url, ["ping"], created_by="t", **LOCAL)


def test_allow_private_needs_the_instance_and_unknown_events(session: Session) -> None:
    with pytest.raises(PermissionDenied, match="LORAREG_WEBHOOK_ALLOW_PRIVATE"):
        webhooks.create(session, "acme", "http://127.0.0.1/x", ["ping"], created_by="t",
                        allow_private=True)
    with pytest.raises(BadRequest, match="private"):  # the instance allows; the hook did not ask
        webhooks.create(session, "acme", "http://127.0.0.1/x", ["ping"], created_by="t",
                        guard=Guard(allow_private=True))
    hook = webhooks.create(session, "acme", "http://127.0.0.1/x", ["ping"], created_by="t",
                           **LOCAL)
    assert hook.secret.startswith("whsec_") and hook.allow_private
    with pytest.raises(BadRequest, match="unknown"):
        webhooks.create(session, "acme", "http://127.0.0.1/x", ["nope"], created_by="t",
                        **LOCAL)
