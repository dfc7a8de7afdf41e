"""The resolve state (registry/services/resolve_state.py) over the change feed
(registry/services/resolve_feed.py), on committed databases of both backends: every channel is
loaded in bulk and read as the single-channel path reads it; an unknown channel is a 404 from
memory once the database said so; what changes after start (a promotion, a new channel, a
rename, a delete, whoever writes it) is applied by the next poll; commits in any order are not
missed; a killed feed connection is followed by a full load, with no stale answer past the
bound meanwhile.

Clocks are injected and polls called by hand, except in the connection-loss test, whose
subject is the real poller thread (it asserts the promise, "never staler than the bound",
over what was served, not a duration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session, sessionmaker

from registry import migrate
from registry.db import make_engine, make_session_factory, transaction
from registry.errors import NotFound
from registry.models import Adapter, Namespace
from registry.prometheus import ResolveCollector
from registry.services.resolve import Snapshot, load
from registry.services.resolve_state import FEED_APPLICATION_NAME, ResolveState, feed_sessions
from tests.fixtures.resolve_seed import (
    ID_BASE,
    delete_adapter,
    digest,
    promote_by_sql,
    seed_channels,
)

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
PG = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def engine_(fresh_db_url: str) -> Iterator[Engine]:
    engine = make_engine(fresh_db_url)
    yield engine
    engine.dispose()


def sessions_of(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def version(state: ResolveState, adapter: str) -> int | None:
    snap = state.serve(adapter, "prod")
    assert snap is not None and snap.stable is not None
    return snap.stable.version


def broken(*args: Any, **kw: Any) -> Any:
    raise AssertionError("the database was asked")


@BOTH
def test_every_channel_is_loaded_as_the_single_read_reads_it(engine_: Engine) -> None:
    names = seed_channels(engine_, 40, canary_every=10)
    state = ResolveState(sessions_of(engine_), clock=lambda: 0.0, background=False)
    state.sync()
    assert len(state.snapshots()) == 40 and state.ready
    gauges = {m.name: m.samples[0].value for m in ResolveCollector(state).collect()}
    assert gauges == {"lorareg_resolve_channels": 40, "lorareg_resolve_feed_age_seconds": 0.0,
                      "lorareg_resolve_full_loads": 1, "lorareg_resolve_feed_failures": 0}
    with transaction(sessions_of(engine_), readonly=True) as session:
        for name in names:
            held, read = state.serve(name, "prod"), load(session, name, "prod", 0.0)
            assert held == read, name  # the same targets, files, revision, rollout, weight
    snap = state.serve("fleet/a00010", "prod")
    assert snap is not None and snap.stable is not None and snap.canary is not None
    assert (snap.stable.ref, snap.canary.ref, snap.weight_bp) == (
        "fleet/a00010@1", "fleet/a00010@2", 1000)
    assert snap.stable.files == (("adapter_config.json", digest(10, 1, 0), 100),
                                 ("adapter_model.safetensors", digest(10, 1, 1), 101))
    assert snap.stable.manifest_digest == digest(10, 1, 99)
    assert snap.stable.served_name == f"fleet~a00010~1~{digest(10, 1, 99)[:12]}"

    # An unknown channel is read from the database once, then a 404 from memory.
    unknown = (("fleet/nope", "prod"), ("fleet/a00001", "staging"), ("nobody/a00001", "prod"))
    for adapter, channel in unknown:
        assert state.serve(adapter, channel) is None  # not held: ask the database
        with pytest.raises(NotFound, match=f"channel {adapter}:{channel} not found"):
            state.get(adapter, channel)
    state._sessions = state._feed = broken  # type: ignore[assignment]
    for adapter, channel in unknown:
        with pytest.raises(NotFound, match=f"channel {adapter}:{channel} not found"):
            state.serve(adapter, channel)
        with pytest.raises(NotFound):
            state.get(adapter, channel)
    assert version(state, "fleet/a00001") == 1


@BOTH
def test_changes_after_start_are_applied_by_the_next_poll(engine_: Engine) -> None:
    seed_channels(engine_, 5)
    now = [0.0]
    state = ResolveState(sessions_of(engine_), clock=lambda: now[0], background=False)
    state.sync()
    first = state.serve("fleet/a00002", "prod")
    assert first is not None

    def poll() -> None:
        now[0] += 0.1
        state.sync()

    # A promotion made elsewhere (another replica, the worker, SQL).
    promote_by_sql(engine_, 1, 2)
    assert version(state, "fleet/a00001") == 1  # not polled yet: the state as of t=0
    poll()
    assert version(state, "fleet/a00001") == 2

    # A channel created after start, asked for before (a 404, remembered): a 404 from memory
    # until the poll that sees it, then resolvable; one nobody asked for is read at once.
    with pytest.raises(NotFound):
        state.get("fleet/a00006", "prod")
    seed_channels(engine_, 2, first=6)
    with pytest.raises(NotFound):
        state.serve("fleet/a00006", "prod")
    assert state.get("fleet/a00007", "prod").stable is not None
    poll()
    assert version(state, "fleet/a00006") == 1

    # A renamed adapter, and a renamed namespace: the old names stop resolving.
    with engine_.begin() as conn:
        conn.execute(update(Adapter).where(Adapter.id == ID_BASE + 3).values(name="renamed"))
    poll()
    assert state.serve("fleet/a00003", "prod") is None
    with pytest.raises(NotFound):
        state.get("fleet/a00003", "prod")
    renamed = state.serve("fleet/renamed", "prod")
    assert renamed is not None and renamed.channel_id == ID_BASE + 3
    assert renamed.stable is not None and renamed.stable.ref == "fleet/renamed@1"
    with engine_.begin() as conn:
        conn.execute(update(Namespace).where(Namespace.name == "fleet").values(name="fleet2"))
    poll()
    for name in ("fleet/a00002", "fleet/renamed"):
        assert state.serve(name, "prod") is None
    moved = state.serve("fleet2/a00002", "prod")
    assert moved is not None and moved.channel_id == ID_BASE + 2
    assert moved.revision == first.revision  # a rename is not a change of the channel

    # Deleted: a channel alone, then a whole adapter.
    with engine_.begin() as conn:
        conn.execute(text("DELETE FROM channels WHERE id = :id"), {"id": ID_BASE + 4})
    delete_adapter(engine_, 5)
    poll()
    for name in ("fleet2/a00004", "fleet2/a00005"):
        assert state.serve(name, "prod") is None  # not held
        with pytest.raises(NotFound):
            state.get(name, "prod")
    assert sorted(s.adapter for s in state.snapshots()) == [
        "fleet2/a00001", "fleet2/a00002", "fleet2/a00006", "fleet2/a00007", "fleet2/renamed"]
    assert (state.stats.full_loads, state.stats.polls) == (1, 5)  # all of it incremental


@PG
def test_commits_in_any_order_are_not_missed(engine_: Engine) -> None:
    """A transaction that marked its change before another, and commits after it: the poll
    in between sees only the later one, the next sees both (the watermark is the snapshot's
    xmin, not the highest mark seen)."""
    seed_channels(engine_, 2)
    state = ResolveState(sessions_of(engine_), clock=lambda: 0.0, background=False)
    state.sync()
    slow = engine_.connect()
    slow_tx = slow.begin()
    slow.execute(text("SELECT pg_current_xact_id()"))  # its id is older than the other's
    promote_by_sql(engine_, 2, 2)  # begins and commits meanwhile
    slow.execute(update(Adapter).where(Adapter.id == ID_BASE + 1).values(description="x"))
    slow.execute(text("UPDATE channels SET stable_version_id = :v, revision = revision + 1 "
                      "WHERE id = :id"), {"v": ID_BASE + 12, "id": ID_BASE + 1})
    state.sync()
    assert (version(state, "fleet/a00001"), version(state, "fleet/a00002")) == (1, 2)
    slow_tx.commit()
    slow.close()
    state.sync()
    assert (version(state, "fleet/a00001"), version(state, "fleet/a00002")) == (2, 2)
    assert state.stats.full_loads == 1


@PG
def test_a_killed_feed_connection_is_followed_by_a_full_load_and_no_stale_answer(
        engine_: Engine) -> None:
    seed_channels(engine_, 20)
    state = ResolveState(sessions_of(engine_), feed=feed_sessions(sessions_of(engine_)),
                         staleness=0.75)
    served: list[tuple[float, int | None]] = []
    stop = threading.Event()

    def ask() -> None:  # a router asking all along: (when it got the answer, the version)
        while not stop.is_set():
            try:
                snap = state.serve("fleet/a00007", "prod")
            except NotFound:
                snap = None
            answer = snap.stable.version if snap is not None and snap.stable else None
            served.append((time.monotonic(), answer))
            time.sleep(0.002)

    state.start()
    asker = threading.Thread(target=ask)
    try:
        deadline = time.monotonic() + 30
        while not state.ready:
            assert time.monotonic() < deadline, "the state never loaded"
            time.sleep(0.01)
        asker.start()
        with engine_.begin() as conn:
            killed = conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"),
                {"name": FEED_APPLICATION_NAME})
        assert killed == 1
        promote_by_sql(engine_, 7, 2)
        promoted_at = time.monotonic()
        while state.stats.full_loads < 2 or not served or served[-1][1] != 2:
            assert time.monotonic() < deadline, (state.stats, served[-3:])
            time.sleep(0.01)
        assert served[-1][0] - promoted_at < 1.0  # the bound, served within it
        while time.monotonic() < promoted_at + 1.0:  # answers past the bound, to check
            time.sleep(0.01)
    finally:
        stop.set()
        if asker.is_alive():
            asker.join(10)
        state.close()
    # Never staler than the bound: after promotion + staleness, no answer of @1 (None: not
    # from memory, the caller reads the database). And monotonic: no @1 after an @2.
    late = [v for at, v in served if at > promoted_at + 0.75]
    assert late and 1 not in late
    answered = [v for _, v in served if v is not None]
    assert answered == sorted(answered) and answered[-1] == 2


def test_a_new_feed_connection_means_a_full_load(tmp_path: Path) -> None:
    """What makes the next poll a full load (SQLite here: no connection of its own, so the
    flag is set by hand as the connect event sets it on PostgreSQL)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    seed_channels(engine, 3)
    state = ResolveState(sessions_of(engine), clock=lambda: 0.0, background=False)
    state.sync()
    state.sync()
    state._reconnected = True
    state.sync()
    assert (state.stats.full_loads, state.stats.polls) == (2, 1)
    snap: Snapshot | None = state.serve("fleet/a00001", "prod")
    assert snap is not None
    engine.dispose()
