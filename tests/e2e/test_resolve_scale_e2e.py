"""Resolve at fleet scale (issue 24): three uvicorn replicas over one PostgreSQL database
holding 10,000 channels. A promotion through replica A is answered by every replica within
the bound (1 s), also after the replicas' feed connections were killed; no replica ever
answers an older version of a channel after a newer one; the other channels keep answering
from memory, and an unknown channel is a 404."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from registry.client import Client
from registry.db import make_engine
from registry.services.resolve_state import FEED_APPLICATION_NAME
from tests.e2e.test_resolve_e2e import push_versions
from tests.fixtures.models import TinyModels
from tests.fixtures.resolve_seed import seed_channels
from tests.fixtures.server import LiveServer, base_env, bootstrap_admin, start_uvicorn

pytestmark = pytest.mark.e2e

CHANNELS = 10_000
BOUND = 1.0  # the promise: a promotion through A is answered by B within it


@dataclass
class Replica:
    server: LiveServer
    http: httpx.Client
    seen: list[int] = field(default_factory=list)  # the promoted channel's answers, in order

    def version(self, adapter: str) -> int | None:
        r = self.http.get(f"/api/v1/resolve/{adapter}:prod", params={"key": "k"})
        return int(r.json()["version"]) if r.status_code == 200 else None


@pytest.fixture
def fleet(fresh_db_url: str, tmp_path: Path) -> Iterator[tuple[list[Replica], str, str]]:
    engine = make_engine(fresh_db_url)
    try:
        seed_channels(engine, CHANNELS, canary_every=100)
    finally:
        engine.dispose()
    token = bootstrap_admin(fresh_db_url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=fresh_db_url,
                   LORAREG_BLOB_URL=f"file://{tmp_path / 'blobs'}")
    servers: list[LiveServer] = []
    try:
        for name in "abc":
            servers.append(start_uvicorn(env, tmp_path / f"server-{name}.log"))
        replicas = [Replica(s, httpx.Client(base_url=s.url, timeout=10,
                                            headers={"Authorization": f"Bearer {token}"}))
                    for s in servers]
        yield replicas, token, fresh_db_url
        for replica in replicas:
            replica.http.close()
    finally:
        for server in servers:
            server.stop()


def wait_for(replicas: list[Replica], adapter: str, want: int, since: float) -> list[float]:
    """Ask every replica until each answers ``want``; how long each took after ``since``."""
    took: dict[int, float] = {}
    deadline = since + 30
    while len(took) < len(replicas):
        for i, replica in enumerate(replicas):
            if i in took:
                continue
            got = replica.version(adapter)
            if got is not None:
                replica.seen.append(got)
            if got == want:
                took[i] = time.monotonic() - since
        assert time.monotonic() < deadline, (adapter, want, took)
    return [took[i] for i in range(len(replicas))]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_promotion_among_ten_thousand_channels_reaches_every_replica_within_a_second(
        fleet: tuple[list[Replica], str, str], tiny_models: TinyModels, tmp_path: Path,
) -> None:
    replicas, token, url = fleet
    a = replicas[0]
    with Client(a.server.url, token) as client:
        (v1, _), (v2, _), (v3, _) = push_versions(client, tiny_models, tmp_path, "scale/hot", 3)
        client.promote(f"scale/hot@{v1}", "prod", now=True)
        wait_for(replicas, "scale/hot", v1, time.monotonic())

        # The seeded channels answer from every replica, canaries included; unknown: 404.
        sample = random.Random(24).sample(range(1, CHANNELS + 1), 50)
        for replica in replicas:
            assert all(replica.version(f"fleet/a{n:05d}") in (1, 2) for n in sample)
            assert replica.http.get("/api/v1/resolve/fleet/a99999:prod").status_code == 404

        # Other channels asked all along on every replica: each answer stays what it was.
        stop, wrong = threading.Event(), []

        def ask_others(replica: Replica) -> None:
            with httpx.Client(base_url=replica.server.url, timeout=10,
                              headers={"Authorization": f"Bearer {token}"}) as http:
                while not stop.is_set():
                    n = random.randint(1, CHANNELS)
                    r = http.get(f"/api/v1/resolve/fleet/a{n:05d}:prod", params={"key": "u"})
                    if r.status_code != 200 or r.json()["version"] not in (1, 2):
                        wrong.append((n, r.status_code, r.text[:200]))

        askers = [threading.Thread(target=ask_others, args=(r,)) for r in replicas]
        for asker in askers:
            asker.start()
        try:
            client.promote(f"scale/hot@{v2}", "prod", now=True)
            took = wait_for(replicas, "scale/hot", v2, time.monotonic())
            assert max(took) < BOUND, took

            # Notification loss: every replica's feed connection is killed, then a promotion.
            engine = make_engine(url)
            try:
                with engine.begin() as conn:
                    killed = conn.scalar(text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :n AND datname = current_database()"),
                        {"n": FEED_APPLICATION_NAME})
            finally:
                engine.dispose()
            assert killed == len(replicas)
            client.promote(f"scale/hot@{v3}", "prod", now=True)
            took = wait_for(replicas, "scale/hot", v3, time.monotonic())
            assert max(took) < BOUND, took
        finally:
            stop.set()
            for asker in askers:
                asker.join(30)
    assert wrong == []
    for replica in replicas:  # monotonic per replica: never an older version after a newer
        assert replica.seen == sorted(replica.seen), replica.seen
        assert replica.seen[-1] == v3
