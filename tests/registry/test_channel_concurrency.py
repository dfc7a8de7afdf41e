"""Promotions of one channel at once, on PostgreSQL with real commits: each waits on the
channel's row lock and, once it holds it, works from the channel as the one before it left it,
so the history's from/to chain has no gap and a canary started after a promotion compares
with the version that promotion made stable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.services import adapters, bases, channels, rollouts, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest, Ref
from tests.fixtures.adapters import adapter_files, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("carol")
Work = Callable[[Session], object]


def setup(session: Session, store: LocalBlobStore, count: int) -> None:
    """acme/bot v1..v<count>, all verified; prod serves v1."""
    bases.register_base(session, ACTOR, registration(entries()))
    for seed in range(1, count + 1):
        files = store_files(session, store, adapter_files(seed=seed))
        versions.push_version(session, store, ACTOR, PushRequest("acme/bot", files,
                                                                 "tiny/llama", "abc"))
    prod = channels.ensure_channel(session, ACTOR, adapters.get_adapter(session, "acme/bot"),
                                   "prod")
    channels.promote_now(session, prod, version(session, 1), Change(ACTOR))


def version(session: Session, number: int) -> versions.AdapterVersion:
    return versions.get_version(session, Ref("acme", "bot", version=number))


def promote(number: int) -> Work:
    """What POST .../channels/prod/promote --now does: lock (ensure) the channel, promote."""
    def work(session: Session) -> None:
        adapter = adapters.get_adapter(session, "acme/bot")
        prod = channels.ensure_channel(session, ACTOR, adapter, "prod")
        channels.promote_now(session, prod, version(session, number), Change(ACTOR))
    return work


def start_canary(number: int) -> Work:
    def work(session: Session) -> None:
        prod = channels.get_channel(session, "acme/bot", "prod", for_update=True)
        rollouts.start(session, prod, version(session, number), Change(ACTOR),
                       RolloutSpec(steps=[50, 100], interval_seconds=60))
    return work


def wait_for_waiters(engine: Engine, count: int) -> None:
    """Until ``count`` transactions of this database wait for a lock (the channel's)."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    for _ in range(1200):
        with engine.connect() as conn:
            if int(conn.scalar(query) or 0) >= count:
                return
        threading.Event().wait(0.05)
    raise AssertionError(f"{count} transactions never queued on the channel's lock")


def run_queued(engine: Engine, works: list[Work]) -> None:
    """Queue every ``work`` on the channel's row lock in order, then let them all go."""
    errors: list[BaseException] = []

    def run(work: Work) -> None:
        try:
            with transaction(make_session_factory(engine)) as session:
                work(session)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    with engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM channels FOR UPDATE"))
        for n, thread in enumerate(threads, 1):
            thread.start()
            wait_for_waiters(engine, n)
        holder.rollback()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.fixture
def pg_engine(fresh_db_url: str) -> Engine:
    return make_engine(fresh_db_url)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_queued_promotions_chain_their_history(pg_engine: Engine, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    try:
        with transaction(make_session_factory(pg_engine)) as session:
            setup(session, store, 4)
        run_queued(pg_engine, [promote(2), promote(3), promote(4)])
        with transaction(make_session_factory(pg_engine)) as session:
            prod = channels.get_channel(session, "acme/bot", "prod")
            events = list(reversed(channels.history(session, prod).items))
            assert [(e.revision, e.from_stable, e.to_stable) for e in events] == [
                (1, None, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4)]
            assert prod.stable is not None and prod.stable.number == 4 and prod.revision == 4
    finally:
        pg_engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_canary_queued_behind_a_promotion_compares_with_the_new_stable(
        pg_engine: Engine, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    try:
        with transaction(make_session_factory(pg_engine)) as session:
            setup(session, store, 3)
        run_queued(pg_engine, [promote(2), start_canary(3)])
        with transaction(make_session_factory(pg_engine)) as session:
            prod = channels.get_channel(session, "acme/bot", "prod")
            rollout = rollouts.recent(session, prod.id)[0]
            assert prod.stable is not None and prod.stable.number == 2
            assert prod.canary is not None and prod.canary.number == 3
            assert rollout.baseline_version_id == version(session, 2).id
            assert [e.action for e in reversed(channels.history(session, prod).items)] == [
                "promoted", "promoted", "rollout.started", "rollout.step"]
    finally:
        pg_engine.dispose()
