"""Concurrent pushes and crash consistency, with real commits on real databases."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from registry.blobs import BlobStore, LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.errors import BadRequest, DigestMismatch
from registry.models import AdapterVersion, Blob, VersionFile
from registry.services import blobs as blob_service
from registry.services import versions
from registry.services.context import Actor
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files


@pytest.fixture
def pg_engine(pg_databases: object, request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("pg_databases").fresh()
    engine = make_engine(url, pool_size=20)
    yield engine
    engine.dispose()


def _push(engine: Engine, store: BlobStore, seed: int) -> int:
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        entries = store_files(session, store, adapter_files(seed=seed))
    with transaction(factory) as session:
        req = PushRequest("acme/bot", entries, "tiny/llama", "abc")
        return versions.push_version(session, store, Actor(f"ci-{seed}"), req).version.number


def test_sixteen_concurrent_pushes_get_one_to_sixteen(pg_engine: Engine, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with ThreadPoolExecutor(16) as pool:
        numbers = list(pool.map(lambda s: _push(pg_engine, store, s), range(16)))
    assert sorted(numbers) == list(range(1, 17))
    # A retried push of identical content returns its original number, concurrently too.
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda _: _push(pg_engine, store, 7), range(4)))
    assert again == [numbers[7]] * 4
    with pg_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AdapterVersion)) == 16


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_pushes_to_a_new_adapter(fresh_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(fresh_db_url)
    store = LocalBlobStore(tmp_path / "blobs")
    try:
        with ThreadPoolExecutor(6) as pool:
            numbers = list(pool.map(lambda s: _push(engine, store, s), range(6)))
        assert sorted(numbers) == list(range(1, 7))
    finally:
        engine.dispose()


class Crash(Exception):
    pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_crash_between_blob_write_and_commit_leaves_no_dangling_row(
    fresh_db_url: str, blob_store: BlobStore
) -> None:
    """Blobs are written first and rows committed second: a crash in between leaves at most
    unreferenced blobs, never a row that points at a missing blob."""
    engine = make_engine(fresh_db_url)
    factory = make_session_factory(engine)
    try:
        with pytest.raises(Crash), transaction(factory) as session:
            entries = store_files(session, blob_store, adapter_files(seed=1))
            versions.push_version(session, blob_store, Actor("ci"),
                                  PushRequest("acme/bot", entries, "tiny/llama", "abc"))
            raise Crash  # the process dies before COMMIT
        with transaction(factory) as session:
            assert session.scalar(select(func.count()).select_from(AdapterVersion)) == 0
            assert session.scalar(select(func.count()).select_from(Blob)) == 0
        # The blobs themselves were stored (unreferenced, for GC), and every committed
        # row always points at a stored blob:
        assert all(blob_store.exists(e.digest) for e in entries)
        _push(engine, blob_store, 2)
        with transaction(factory) as session:
            for digest in session.scalars(select(VersionFile.digest)):
                assert blob_store.exists(digest)
    finally:
        engine.dispose()


def test_wrong_declared_digest_stores_nothing( blob_store: BlobStore) -> None:
    data = b"adapter weights" * 1000
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DigestMismatch):
        blob_store.put(io.BytesIO(data), digest=wrong, size=len(data))
    assert not blob_store.exists(wrong)
    assert not blob_store.exists(hashlib.sha256(data).hexdigest())


def test_blob_row_only_after_verified_store(session: Session, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = b"x" * 100
    digest = hashlib.sha256(data).hexdigest()
    assert blob_service.missing(session, [digest]) == [digest]
    with pytest.raises(BadRequest, match="truncated"):
        store.put(io.BytesIO(data[:50]), digest=digest, size=100)
    assert blob_service.missing(session, [digest]) == [digest]
    blob_service.record(session, store.put(io.BytesIO(data), digest=digest, size=100))
    assert blob_service.missing(session, [digest]) == []
