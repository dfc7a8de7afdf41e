"""A binding and a promotion of the same channel at once, on PostgreSQL with real commits: both
wait on the channel's row lock, and whichever goes first, the desired set recorded afterwards is
exactly what the bound channel serves (no lost update between the two transactions)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import PoolMember
from registry.services import adapters, bases, channels, desired_sets, pools, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.pools import PoolSettings
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("carol")


def in_tx(engine: Engine, work: Callable[[Session], object]) -> None:
    with transaction(make_session_factory(engine)) as session:
        work(session)


def setup(session: Session, store: LocalBlobStore) -> None:
    bases.register_base(session, ACTOR, registration(entries()))
    for seed in (1, 2):
        files = store_files(session, store, adapter_files(seed=seed))
        versions.push_version(session, store, ACTOR, PushRequest("acme/bot", files,
                                                                 "tiny/llama", "abc"))
    pools.create_pool(session, ACTOR, "acme/gpu-a", PoolSettings(
        base="tiny/llama@abc", model_id="/models/llama", dtype="bfloat16"))
    prod = channels.ensure_channel(session, ACTOR, adapters.get_adapter(session, "acme/bot"),
                                   "prod")
    channels.promote_now(session, prod, versions.get_version(
        session, versions.Ref("acme", "bot", version=1)), Change(ACTOR))


def promote_v2(session: Session) -> None:
    prod = channels.get_channel(session, "acme/bot", "prod", for_update=True)
    v2 = versions.get_version(session, versions.Ref("acme", "bot", version=2))
    channels.promote_now(session, prod, v2, Change(ACTOR))


def waiting_on_locks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")) or 0)


def wait_for_waiters(engine: Engine, count: int) -> None:
    for _ in range(1200):
        if waiting_on_locks(engine) >= count:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{count} transactions never queued on the channel's lock")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("first", ["bind", "promote"])
def test_bind_and_promote_at_once_leave_a_consistent_desired_set(
        fresh_db_url: str, tmp_path: Path, first: str) -> None:
    engine = make_engine(fresh_db_url)
    try:
        store = LocalBlobStore(tmp_path / "blobs")
        in_tx(engine, lambda s: setup(s, store))
        errors: list[BaseException] = []

        def run(work: Callable[[Session], object]) -> None:
            try:
                in_tx(engine, work)
            except BaseException as exc:
                errors.append(exc)

        work: dict[str, Callable[[Session], object]] = {
            "bind": lambda s: pools.bind(s, ACTOR, store, pools.get_pool(s, "acme/gpu-a"),
                                         "acme/bot:prod"),
            "promote": promote_v2}
        order = [first, *(k for k in work if k != first)]
        threads = [threading.Thread(target=run, args=(work[k],)) for k in order]
        with engine.connect() as holder:  # both queue on the channel's row lock, in order
            holder.execute(text("SELECT 1 FROM channels FOR UPDATE"))
            for n, thread in enumerate(threads, 1):
                thread.start()
                wait_for_waiters(engine, n)
            holder.rollback()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        with transaction(make_session_factory(engine)) as session:
            pool = pools.get_pool(session, "acme/gpu-a")
            live = set(desired_sets.live(session, pool))
            recorded = set(session.scalars(select(PoolMember.version_id).where(
                PoolMember.removed_at.is_(None))))
            v2 = versions.get_version(session, versions.Ref("acme", "bot", version=2))
            assert live == recorded == {v2.id}
    finally:
        engine.dispose()
