"""The rollout controller under contention: three worker processes tick the same rollout on
PostgreSQL every 50 ms; every step is taken exactly once and the rollout is promoted once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AdapterVersion, AuditEvent, ChannelEvent, GateEvaluation, Rollout
from registry.services import adapters, channels, rollouts, versions
from registry.services.channels import Change
from registry.services.jobs import db_now
from registry.services.metrics import MetricInput
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest
from tests.conftest import PgDatabases
from tests.fixtures.models import TinyModels
from tests.fixtures.server import base_env
from tests.fixtures.workers import spawn_worker, stop_workers, wait_until
from tests.merge_worker.helpers import ACTOR, register, store_folder

pytestmark = pytest.mark.e2e

STEPS = list(range(10, 101, 10))


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> str:
    return pg_databases.fresh()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


def push(session: Session, store: LocalBlobStore, folder: Path, accuracy: float) -> int:
    entries = store_folder(session, store, folder)
    req = PushRequest("acme/ctl", entries, "tiny/llama", "r1",
                      metrics=[MetricInput("accuracy", accuracy)])
    return versions.push_version(session, store, ACTOR, req).version.id


def start_rollout(engine: Engine, store: LocalBlobStore, tiny_models: TinyModels,
                  tmp_path: Path) -> int:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    folders = []
    for tag in ("1", "2"):
        folder = tmp_path / f"adapter-{tag}"
        folder.mkdir()
        for f in adapter.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "notes.txt").write_text(tag)
        folders.append(folder)
    with transaction(make_session_factory(engine)) as session:
        register(session, store, base)
        ids = [push(session, store, folders[0], 0.90), push(session, store, folders[1], 0.91)]
        stable, candidate = (session.get_one(AdapterVersion, i) for i in ids)
        prod = channels.ensure_channel(session, ACTOR, adapters.get_adapter(session, "acme/ctl"),
                                       "prod")
        channels.promote_now(session, prod, stable, Change(ACTOR))
        spec = RolloutSpec(steps=STEPS, interval_seconds=1,
                           gates=["eval.accuracy >= stable - 0.01"])
        return rollouts.start(session, prod, candidate, Change(ACTOR), spec).id


def rollout_status(engine: Engine, rollout_id: int) -> str:
    with transaction(make_session_factory(engine)) as session:
        return session.get_one(Rollout, rollout_id).status


def test_three_workers_never_double_advance_a_step(
    pg_url: str, engine: Engine, tiny_models: TinyModels, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    rollout_id = start_rollout(engine, store, tiny_models, tmp_path)
    env = base_env(LORAREG_DATABASE_URL=pg_url, LORAREG_BLOB_URL=f"file://{tmp_path / 'blobs'}")
    workers = [spawn_worker(env, tmp_path / f"w{i}", poll=0.05) for i in range(3)]
    try:
        wait_until(lambda: rollout_status(engine, rollout_id) != "progressing", timeout=90,
                   interval=0.2)
    finally:
        stop_workers(*workers)
    assert [w.returncode for w in workers] == [0, 0, 0]
    with transaction(make_session_factory(engine)) as session:
        rollout = session.get_one(Rollout, rollout_id)
        assert (rollout.status, rollout.failures, rollout.step_index) == ("promoted", 0, 9)
        # Every event of the channel after the first promotion (the rollout's whole life).
        events = list(session.scalars(select(ChannelEvent).where(
            ChannelEvent.channel_id == rollout.channel_id).order_by(ChannelEvent.id)))[1:]
        evaluations = list(session.scalars(select(GateEvaluation.step_index).where(
            GateEvaluation.rollout_id == rollout_id)))
        audited = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.like("channel.rollout.%"))))
    steps = Counter(e.metrics["step"] for e in events if e.action == "rollout.step")
    assert steps == dict.fromkeys(range(len(STEPS)), 1)
    assert [e.action for e in events].count("rollout.promoted") == 1
    assert [e.canary_weight_bp for e in events if e.action == "rollout.step"] == [
        s * 100 for s in STEPS]
    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions))  # no revision was written twice
    # Each step's gate was evaluated exactly once: no worker decided a step another had.
    assert Counter(evaluations) == dict.fromkeys(range(len(STEPS)), 1)
    assert Counter(audited) == {"channel.rollout.started": 1, "channel.rollout.step": 10,
                                "channel.rollout.promoted": 1}
    ticks = sum((tmp_path / f"w{i}.log").read_text().count("rollout controller acted")
                for i in range(3))
    assert ticks == len(STEPS)  # 9 advances and 1 promotion, each by exactly one worker


def test_promoted_event_names_its_rollout(
    pg_url: str, engine: Engine, tiny_models: TinyModels, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    rollout_id = start_rollout(engine, store, tiny_models, tmp_path)
    with transaction(make_session_factory(engine)) as session:
        for _ in STEPS:  # walk every step without waiting for the intervals
            session.execute(update(Rollout).where(Rollout.id == rollout_id).values(
                next_eval_at=db_now(session) - timedelta(seconds=1)))
            rollouts.tick(session)
        assert session.get_one(Rollout, rollout_id).status == "promoted"
        actions = session.scalars(select(ChannelEvent.action).where(
            ChannelEvent.rollout_id == rollout_id))
        assert "rollout.promoted" in set(actions)


def waiting_for_locks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")) or 0)


def test_rollback_during_a_controller_tick_does_not_deadlock(
    pg_url: str, engine: Engine, tiny_models: TinyModels, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    rollout_id = start_rollout(engine, store, tiny_models, tmp_path)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        session.execute(update(Rollout).where(Rollout.id == rollout_id).values(
            next_eval_at=db_now(session) - timedelta(seconds=1)))
    failures: list[BaseException] = []

    def tick() -> None:
        try:
            with transaction(factory) as session:
                rollouts.tick(session)
        except Exception as exc:  # the deadlock victim
            failures.append(exc)

    with transaction(factory) as session:
        # The rollback route: rollout row first, then the channel (the controller's order).
        rollouts.rollback(session, channels.get_channel(session, "acme/ctl", "prod"),
                          Change(ACTOR, reason="during a tick"), 1)
        ticker = threading.Thread(target=tick)  # skips the locked rollout, never deadlocks
        ticker.start()
        ticker.join(30)
    assert failures == []
    with transaction(factory) as session:
        rollout = session.get_one(Rollout, rollout_id)
        channel = channels.get_channel(session, "acme/ctl", "prod")
        assert rollout.status == "aborted" and "rolled back" in rollout.reason
        assert channel.stable is not None and channel.stable.number == 1
        assert channel.rollout_id is None and channel.canary_weight_bp == 0
