"""The registry side of the fleet against a real uvicorn on PostgreSQL: the desired set's long
poll wakes on a promotion (and holds no thread while it waits), and replicas simulated by
heartbeats from the test."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AdapterVersion
from registry.services import bases, channels, desired_sets, pools, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.pools import PoolSettings
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files
from tests.fixtures.server import LiveServer
from tests.registry.test_bases import entries, registration

pytestmark = pytest.mark.e2e
ACTOR = Actor("e2e")
POOL = "/api/v1/pools/acme/gpu-a"


@dataclass
class Seeded:
    served: list[str]  # served names of acme/bot@1..3
    digests: list[str]
    fingerprint: str  # the pool base's


def seed(database_url: str, blobs: Path, count: int = 3) -> Seeded:
    """acme/bot@1..count pushed, acme/gpu-a serving acme/bot:prod at v1 (through services)."""
    engine = make_engine(database_url)
    store = LocalBlobStore(blobs)
    try:
        with transaction(make_session_factory(engine)) as session:
            base, _ = bases.register_base(session, ACTOR, registration(entries()))
            made: list[AdapterVersion] = []
            for seed_ in range(count):
                files = store_files(session, store, adapter_files(seed=seed_))
                made.append(versions.push_version(session, store, ACTOR, PushRequest(
                    "acme/bot", files, "tiny/llama", "abc")).version)
            pool = pools.create_pool(session, ACTOR, "acme/gpu-a", PoolSettings(
                base="tiny/llama@abc", model_id="/models/llama", dtype="bfloat16",
                max_loras=4))
            prod = channels.ensure_channel(session, ACTOR, made[0].adapter, "prod")
            channels.promote_now(session, prod, made[0], Change(ACTOR))
            pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
            return Seeded([desired_sets.served(v) for v in made],
                          [v.manifest_digest for v in made], base.fingerprint)
    finally:
        engine.dispose()


def headers(server: LiveServer, etag: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {server.admin_token}"}
    return out if etag is None else {**out, "If-None-Match": etag}


def promote(server: LiveServer, number: int) -> None:
    r = httpx.post(f"{server.url}/api/v1/adapters/acme/bot/channels/prod/promote",
                   json={"version": number, "now": True}, headers=headers(server))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_long_polls_wake_on_a_promotion_and_hold_no_thread(
        live_server: LiveServer, fresh_db_url: str, tmp_path: Path) -> None:
    seeded = seed(fresh_db_url, tmp_path / "blobs")
    url = f"{live_server.url}{POOL}/desired"
    first = httpx.get(url, headers=headers(live_server))
    etag = first.headers["etag"]
    held = httpx.get(f"{url}?wait=0.2", headers=headers(live_server, etag))
    assert held.status_code == 304 and held.headers["etag"] == etag  # nothing changed

    # More waiting polls than the server's thread pool has threads (anyio's default: 40).
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def wait_for_change() -> None:
        r = httpx.get(f"{url}?wait=60", headers=headers(live_server, etag), timeout=90)
        with lock:
            answers.append(r)

    waiters = [threading.Thread(target=wait_for_change) for _ in range(48)]
    for t in waiters:
        t.start()
    time.sleep(1.0)  # let them reach the server; the assertions do not depend on it
    pool = httpx.get(f"{live_server.url}{POOL}", headers=headers(live_server))
    assert pool.status_code == 200  # a plain route still gets a thread meanwhile
    assert answers == []  # nobody has been answered before the set changed
    promote(live_server, 2)
    for t in waiters:
        t.join(120)
    assert len(answers) == 48
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["etag"] for r in answers} == {answers[0].headers["etag"]} != {etag}
    body: dict[str, Any] = answers[0].json()
    assert [m["served_name"] for m in body["members"]] == [seeded.served[1]]
    assert [m["served_name"] for m in body["draining"]] == [seeded.served[0]]
