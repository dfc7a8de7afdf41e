"""Resolve across API replicas: two uvicorn processes on one PostgreSQL database. A promotion
made through one is served by the other within a second; answers carry file URLs that
download the right bytes, an ETag, batch and namespace forms, and stick to the request key."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.client import Client
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer, start_uvicorn

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(live_server: LiveServer, tmp_path: Path) -> Iterator[tuple[Client, Client]]:
    """Clients of process A (the fixture's server) and of a second process B, same env."""
    second = start_uvicorn(live_server.env, tmp_path / "server-b.log")
    try:
        with Client(live_server.url, live_server.admin_token) as a, \
                Client(second.url, live_server.admin_token) as b:
            yield a, b
    finally:
        second.stop()


def push_versions(client: Client, tiny_models: TinyModels, tmp_path: Path, adapter: str,
                  count: int) -> list[tuple[int, Path]]:
    base = tiny_models.base("llama")
    client.register_base(base, "tiny/llama", "r1", no_cache=True)
    source = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    pushed = []
    for i in range(1, count + 1):
        folder = tmp_path / f"{adapter.replace('/', '_')}-{i}"
        shutil.copytree(source, folder)
        (folder / "notes.txt").write_text(f"{adapter} version {i}\n")
        version = client.push(folder, adapter, "tiny/llama@r1", metrics={"accuracy": 0.9})
        pushed.append((int(version.version), folder))
    return pushed


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_promotion_through_a_is_resolved_by_b_within_a_second(
    replicas: tuple[Client, Client], live_server: LiveServer, tiny_models: TinyModels,
    tmp_path: Path,
) -> None:
    a, b = replicas
    (v1, _), (v2, folder2) = push_versions(a, tiny_models, tmp_path, "e2e/bot", 2)
    a.promote(f"e2e/bot@{v1}", "prod", now=True)
    before = b.resolve("e2e/bot:prod", key="user-1")  # B now holds v1 in its cache
    assert before.version == v1 and before.etag

    a.promote(f"e2e/bot@{v2}", "prod", now=True)
    promoted_at = time.monotonic()
    while (answer := b.resolve("e2e/bot:prod", key="user-1")).version != v2:
        assert time.monotonic() - promoted_at < 1.0, "B still serves the old version"
        time.sleep(0.01)
    assert time.monotonic() - promoted_at < 1.0
    assert answer.etag and answer.etag != before.etag
    assert answer.ref == f"e2e/bot@{v2}" and answer.canary is False

    # Every file URL downloads exactly the pushed bytes.
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    assert {f.path for f in answer.files} == {
        p.name for p in folder2.iterdir() if p.is_file()}
    for f in answer.files:
        body = httpx.get(f.url, headers=headers, timeout=10).raise_for_status().content
        assert hashlib.sha256(body).hexdigest() == f.digest
        assert body == (folder2 / f.path).read_bytes() and len(body) == f.size


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_batch_namespace_and_sticky_keys_agree_across_replicas(
    replicas: tuple[Client, Client], tiny_models: TinyModels, tmp_path: Path,
) -> None:
    a, b = replicas
    (s1, _), (s2, _) = push_versions(a, tiny_models, tmp_path, "e2e/sticky", 2)
    (o1, _), = push_versions(a, tiny_models, tmp_path, "e2e/other", 1)
    a.promote(f"e2e/sticky@{s1}", "prod", now=True)
    a.promote(f"e2e/other@{o1}", "prod", now=True)
    rollout = a.promote(f"e2e/sticky@{s2}", "prod", steps=[50, 100], interval_seconds=3600
                        ).rollout
    assert rollout is not None and rollout.weight_bp == 5000

    keys = [f"user-{i}" for i in range(200)]
    time.sleep(0.6)  # past B's snapshot TTL: both replicas see the canary
    on_a = {k: a.resolve("e2e/sticky:prod", key=k).version for k in keys}
    on_b = {k: b.resolve("e2e/sticky:prod", key=k).version for k in keys}
    again = {k: b.resolve("e2e/sticky:prod", key=k).version for k in keys}
    assert on_a == on_b == again  # one key, one version, whichever replica answers
    share = sum(v == s2 for v in on_a.values()) / len(keys)
    assert set(on_a.values()) == {s1, s2} and 0.3 < share < 0.7, share

    items = [{"adapter": "e2e/sticky", "key": k} for k in keys[:50]] + ["e2e/other"]
    for client in (a, b):
        batch = client.resolve_batch("prod", items)
        assert [r.version for r in batch[:50]] == [on_a[k] for k in keys[:50]]
        assert all(r.canary == (r.version == s2) for r in batch[:50])
        assert (batch[-1].adapter, batch[-1].version) == ("e2e/other", o1)
        assert all(f.url for r in batch for f in r.files)

        listed = {c.adapter: c for c in client.resolve_namespace("e2e", "prod")}
        assert set(listed) == {"e2e/sticky", "e2e/other"}
        assert (listed["e2e/sticky"].stable, listed["e2e/sticky"].canary,
                listed["e2e/sticky"].canary_weight_bp) == (s1, s2, 5000)
        assert listed["e2e/other"].stable == o1
