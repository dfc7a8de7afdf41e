"""Garbage collection and retention on real databases and stores."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import BlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import Adapter, Blob, utcnow
from registry.services import bases, channels, gc, versions
from registry.services import blobs as blob_service
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("gc-test")
DAY = timedelta(days=1)


@pytest.fixture
def sessions(fresh_db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(fresh_db_url)
    yield make_session_factory(engine)
    engine.dispose()


def age(session: Session, digests: list[str], by: timedelta) -> None:
    """Pretend these blobs were stored and last seen ``by`` ago."""
    old = utcnow() - by
    session.execute(update(Blob).where(Blob.digest.in_(digests))
                    .values(created_at=old, last_seen_at=old))


def put(session: Session, store: BlobStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    blob_service.record(session, store.put(io.BytesIO(data), digest=digest, size=len(data)))
    return digest


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_gc_keeps_referenced_and_recent_deletes_the_rest(
    sessions: sessionmaker[Session], blob_store: BlobStore
) -> None:
    with transaction(sessions) as session:
        files = store_files(session, blob_store, adapter_files())
        versions.push_version(session, blob_store, ACTOR, PushRequest(
            "acme/bot", files, "tiny/llama", "abc"))
        garbage = put(session, blob_store, b"abandoned upload" * 100)
        recent = put(session, blob_store, b"uploaded a minute ago")
        age(session, [f.digest for f in files] + [garbage], 2 * DAY)
    dry = gc.collect(sessions, blob_store, ACTOR, grace=DAY, dry_run=True)
    assert dry.deleted == [garbage] and blob_store.exists(garbage)
    report = gc.collect(sessions, blob_store, ACTOR, grace=DAY)
    assert report.deleted == [garbage] and report.bytes_reclaimed == len(b"abandoned upload") * 100
    assert not blob_store.exists(garbage)
    assert blob_store.exists(recent) and all(blob_store.exists(f.digest) for f in files)
    with transaction(sessions) as session:
        assert session.get(Blob, garbage) is None


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("asked_missing", [True, False], ids=["seen", "locks-only"])
def test_gc_with_a_concurrent_push_in_flight(sessions: sessionmaker[Session],
                                             blob_store: BlobStore, asked_missing: bool) -> None:
    """A push that re-uses an old unreferenced blob while gc runs: either the push wins and
    the blob stays, or gc wins and the push is told to upload it again; never a row that
    points at a missing blob."""
    with transaction(sessions) as session:
        files = store_files(session, blob_store, adapter_files(seed=5))
        old = put(session, blob_store, b"old garbage" * 50)
        age(session, [f.digest for f in files] + [old], 2 * DAY)
    if asked_missing:  # the client asks which blobs are missing: none (and now "seen")
        with transaction(sessions) as session:
            assert blob_service.missing(session, [f.digest for f in files]) == []
    push_started, gc_done = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def slow_push() -> None:
        with transaction(sessions) as session:
            blob_service.require_stored(session, files)  # takes FOR SHARE locks
            push_started.set()
            gc_done.wait(2)  # gc runs while this push holds its locks
            result["version"] = versions.push_version(session, blob_store, ACTOR, PushRequest(
                "acme/bot", files, "tiny/llama", "abc")).version.number

    pusher = threading.Thread(target=slow_push)
    pusher.start()
    push_started.wait(10)
    report = gc.collect(sessions, blob_store, ACTOR, grace=DAY)
    gc_done.set()
    pusher.join(30)
    assert result["version"] == 1
    assert report.deleted == [old]
    assert all(blob_store.exists(f.digest) for f in files)
    # Even with the grace window ignored, the locks and re-check keep referenced blobs.
    with transaction(sessions) as session:
        age(session, [f.digest for f in files], 2 * DAY)
    again = gc.collect(sessions, blob_store, ACTOR, grace=DAY)
    assert again.deleted == [] and all(blob_store.exists(f.digest) for f in files)


def test_orphan_objects_without_rows_are_swept(sessions: sessionmaker[Session],
                                               tmp_path: Path) -> None:
    from registry.blobs import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs")
    data = b"stored but the row never committed"
    digest = hashlib.sha256(data).hexdigest()
    store.put(io.BytesIO(data), digest=digest, size=len(data))
    assert gc.collect(sessions, store, ACTOR, grace=DAY).orphans_deleted == 0  # too recent
    assert gc.collect(sessions, store, ACTOR, grace=timedelta(0)).orphans_deleted == 1
    assert not store.exists(digest)


def test_retention_keeps_last_n_and_channel_versions(session: Session, tmp_path: Path) -> None:
    from registry.blobs import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs")
    bases.register_base(session, ACTOR, registration(entries()))
    made = []
    for seed in range(5):
        files = store_files(session, store, adapter_files(seed=seed))
        made.append(versions.push_version(session, store, ACTOR, PushRequest(
            "acme/bot", files, "tiny/llama", "abc")).version)
    prod = channels.ensure_channel(session, ACTOR, made[0].adapter, "prod")
    channels.promote_now(session, prod, made[0], Change(ACTOR))
    assert gc.apply_retention(session, ACTOR).yanked == []  # off by default
    session.execute(update(Adapter).values(keep_last=2))
    session.expire_all()
    dry = gc.apply_retention(session, ACTOR, dry_run=True)
    assert dry.yanked == ["acme/bot@3", "acme/bot@2"]
    assert all(v.status == "active" for v in made)
    gc.apply_retention(session, ACTOR, dry_run=False)
    assert [v.status for v in made] == ["active", "yanked", "yanked", "active", "active"]
