"""Every channel of the registry in one process's memory, kept fresh by the change feed.

:class:`ResolveState` loads all channels in bulk (one streamed query) and then polls the feed
(registry/services/resolve_feed.py) once per ``poll_interval`` for what changed, on one
background thread; requests never wait for it.

What a request is told (:meth:`ResolveState.serve`, no I/O, on the event loop):

* **Fresh**: the state answers only while its last successful poll *began* less than
  ``staleness`` ago (0.75 s by default), or the channel itself was read that recently. A poll
  sees every change committed before it began, so an answer is never older than
  ``staleness``: a promotion through any replica is answered by every replica within it.
  Past it (the database is slow or down, the poller died, nobody asked for a while), the
  caller reads the channel from the database itself (:meth:`ResolveState.get`).
* **Negative cache**: a channel the state does not hold is read from the database once; if
  it does not exist, later requests get the 404 from memory while the state is fresh (a
  channel created since is held as soon as a poll or a read sees it, which the negative
  entry does not outlive: the state's entries are looked up first).
* **Monotonic**: a channel's snapshot only ever moves to a higher revision (or to another
  channel under the same name), whoever read it (poll, full load, a request's own read), so
  a process never answers an older state of a channel after a newer one.
* **A change made here is seen at once**: :meth:`ResolveState.invalidate` (after the commit)
  marks the channel dirty until a read that began after it lands.

A new connection of the poller (the first, or one after the database dropped it: a restart,
a failover, ``pg_terminate_backend``) and any failed poll make the next poll a full load
again: nothing the process missed meanwhile can survive it. On PostgreSQL the poller has a
connection of its own, named ``lorareg-resolve-feed`` in ``pg_stat_activity``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from registry.db import make_engine, make_session_factory, transaction
from registry.errors import NotFound
from registry.services.resolve import Paths, Snapshot, load
from registry.services.resolve_feed import Reader, deleted_since, watermark

log = logging.getLogger("lorareg.resolve")

FEED_APPLICATION_NAME = "lorareg-resolve-feed"
APPLY_BATCH = 1000  # snapshots applied per lock hold during a full load
MISSING_MAX = 10_000  # names remembered as missing (the negative cache), at most


@dataclass
class FeedStats:
    """What the poller did, for tests and metrics."""

    full_loads: int = 0
    polls: int = 0
    failures: int = 0
    channels: int = 0


def feed_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The poller's sessions: on PostgreSQL one connection of its own, named for
    ``pg_stat_activity``; on SQLite the app's (a file has no connection to lose)."""
    engine = _bind(sessions)
    if engine is None or engine.dialect.name != "postgresql":
        return sessions
    feed = make_engine(engine.url.render_as_string(hide_password=False), pool_size=1,
                       max_overflow=0,
                       connect_args={"application_name": FEED_APPLICATION_NAME})
    return make_session_factory(feed)


class ResolveState:
    """The resolve state of one process: every channel, fresh within ``staleness``.

    ``clock`` (monotonic seconds) is the freshness clock, injectable in tests; the poller's
    pace and idleness use real time. ``background=False``: no poller thread, the caller
    calls :meth:`sync` (tests). The poller starts on first use (or :meth:`start`) and stops
    after ``idle`` seconds without a request; the next request starts it again (and, the state
    being stale by then, reads its channel from the database meanwhile)."""

    STRIPES = 64  # single-flight locks for a request's own read, shared by hash

    def __init__(self, sessions: sessionmaker[Session], *, staleness: float = 0.75,
                 poll_interval: float | None = None, idle: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, background: bool = True,
                 feed: sessionmaker[Session] | None = None) -> None:
        self._sessions, self._feed = sessions, feed or sessions
        self.staleness, self.idle, self._clock = staleness, idle, clock
        self.poll_interval = poll_interval if poll_interval is not None else staleness / 3
        self._background = background
        self._entries: dict[str, Snapshot] = {}  # "ns/name:channel" -> snapshot
        self._keys: dict[int, str] = {}  # channel id -> its key
        self._paths = Paths()
        self._synced_at = float("-inf")  # clock at the start of the last successful poll
        self._complete = False  # a full load landed: every channel is held
        self._mark: int | None = None  # the feed's watermark; None: the next poll is full
        self._reconnected = False  # the poller's connection was made anew: load in full
        self._connections = 0  # made since the poller started
        self._dirty: dict[str, int] = {}  # key -> ticket of its invalidation
        self._missing: dict[str, float] = {}  # key -> when a read found no such channel
        self._ticket = 0
        self._touched: set[str] | None = None  # keys a request read during a full load
        self._guard = threading.Lock()
        self._sync_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self._poller: threading.Thread | None = None
        self._wake = threading.Event()
        self._asked = time.monotonic()
        self._closed = False
        self.stats = FeedStats()
        self._watch_connections()

    # --- the read path -------------------------------------------------------------------

    def serve(self, adapter: str, channel: str) -> Snapshot | None:
        """The channel's snapshot from memory, None when the caller must read the database
        (:meth:`get`): the state is stale, holds no such channel, or it was changed here
        since. Raises NotFound when a read found no such channel and nothing fresher since."""
        key, now = f"{adapter}:{channel}", self._clock()
        self._asked = time.monotonic()
        if self._poller is None and self._background:
            self.start()
        if self._dirty and key in self._dirty:
            return None
        fresh = now - self._synced_at < self.staleness
        snap = self._entries.get(key)
        if snap is None:
            missing = self._missing.get(key)
            if missing is not None and (fresh or now - missing < self.staleness):
                raise NotFound(f"channel {adapter}:{channel} not found")
            return None
        return snap if fresh or now - snap.loaded < self.staleness else None

    def get(self, adapter: str, channel: str) -> Snapshot:
        """The snapshot, read from the database (once for all waiting threads) when memory
        cannot answer. Blocking: call it in a thread."""
        snap = self.serve(adapter, channel)
        if snap is not None:
            return snap
        key = f"{adapter}:{channel}"
        with self._stripes[hash(key) % self.STRIPES]:
            snap = self.serve(adapter, channel)
            return snap if snap is not None else self._read(adapter, channel)

    def _read(self, adapter: str, channel: str) -> Snapshot:
        key = f"{adapter}:{channel}"
        with self._guard:
            ticket = self._ticket
        started = self._clock()
        try:
            with transaction(self._sessions, readonly=True) as session:
                snap = load(session, adapter, channel, started)
        except NotFound:
            self._forget(key, ticket, started)
            raise
        return self._apply([snap], ticket, touch=True)[0]

    def snapshots(self) -> list[Snapshot]:
        """Every channel held (no freshness check: for measurements and tests)."""
        return list(self._entries.values())

    def age(self) -> float:
        """Seconds since the last successful poll began (infinite before the first)."""
        return self._clock() - self._synced_at

    @property
    def ready(self) -> bool:
        """Whether the state answers from memory now (complete and fresh)."""
        return self._complete and self._clock() - self._synced_at < self.staleness

    # --- changes ---------------------------------------------------------------------------

    def invalidate(self, adapter: str, channel: str) -> None:
        """``adapter:channel`` was changed through this process (call it after the commit):
        not served from memory until a read that began after this call lands."""
        with self._guard:
            self._ticket += 1
            self._dirty[f"{adapter}:{channel}"] = self._ticket
            self._missing.pop(f"{adapter}:{channel}", None)
        self._wake.set()  # poll now: other requests need not each read it

    def _apply(self, snaps: Iterable[Snapshot], ticket: int, touch: bool = False
               ) -> list[Snapshot]:
        """Keep each snapshot unless the state holds a later revision of its channel; the
        snapshots now held, in order. ``ticket``: the invalidations before the read began."""
        kept = []
        with self._guard:
            for snap in snaps:
                kept.append(self._keep(snap))
                key = f"{snap.adapter}:{snap.channel}"
                if self._missing:
                    self._missing.pop(key, None)
                if touch and self._touched is not None:
                    self._touched.add(key)
                if key in self._dirty and self._dirty[key] <= ticket:
                    del self._dirty[key]
        return kept

    def _keep(self, snap: Snapshot) -> Snapshot:
        key = f"{snap.adapter}:{snap.channel}"
        old_key = self._keys.get(snap.channel_id)
        current = self._entries.get(old_key) if old_key is not None else None
        if current is not None and current.revision > snap.revision:
            return current
        if old_key is not None and old_key != key:  # renamed
            self._entries.pop(old_key, None)
        other = self._entries.get(key)
        if other is not None and other.channel_id != snap.channel_id:  # a new channel
            self._keys.pop(other.channel_id, None)
        self._entries[key] = snap
        self._keys[snap.channel_id] = key
        return snap

    def _forget(self, key: str, ticket: int, started: float) -> None:
        """A read that began at ``started`` found no such channel: drop it if held (it was
        deleted) and remember it is missing (bounded: past ``MISSING_MAX`` start again)."""
        with self._guard:
            snap = self._entries.get(key)
            if snap is None or snap.loaded <= started:
                self._entries.pop(key, None)
                if snap is not None:
                    self._keys.pop(snap.channel_id, None)
                if len(self._missing) >= MISSING_MAX:
                    self._missing.clear()
                self._missing[key] = started
            if key in self._dirty and self._dirty[key] <= ticket:
                del self._dirty[key]

    def _drop(self, channel_ids: Iterable[int]) -> None:
        with self._guard:
            for channel_id in channel_ids:
                key = self._keys.pop(channel_id, None)
                if key is not None:
                    self._entries.pop(key, None)

    # --- the feed --------------------------------------------------------------------------

    def sync(self) -> None:
        """One poll: a full load when the state has none (or lost track), else what changed
        since the last watermark. Raises what the database raises (the state then stays as
        it was, and the next poll is a full load)."""
        with self._sync_lock:
            with self._guard:
                ticket = self._ticket
            started = self._clock()
            if self._reconnected:
                self._reconnected, self._mark = False, None
            try:
                if self._mark is None:
                    self._full(started, ticket)
                else:
                    self._changes(started, ticket)
            except BaseException:
                self._mark = None
                raise
            self._synced_at = max(self._synced_at, started)
            self.stats.channels = len(self._entries)

    def _full(self, started: float, ticket: int) -> None:
        seen: set[int] = set()
        with self._guard:
            self._touched = set()
        try:
            with transaction(self._feed, readonly=True) as session:
                mark = watermark(session)
                batch: list[Snapshot] = []
                for snap in Reader(started, self._paths).snapshots(session):
                    seen.add(snap.channel_id)
                    batch.append(snap)
                    if len(batch) >= APPLY_BATCH:
                        self._apply(batch, ticket)
                        batch = []
                self._apply(batch, ticket)
            self._drop_unseen(seen)
        finally:
            with self._guard:
                self._touched = None
        self._mark, self._complete = mark, True
        self.stats.full_loads += 1
        log.info("resolve state: %d channels loaded in %.2f s", len(seen),
                 self._clock() - started)

    def _drop_unseen(self, seen: set[int]) -> None:
        """Channels the full load did not see are gone, unless a request read them after
        the load's snapshot was taken."""
        with self._guard:
            touched = self._touched or set()
            gone = [cid for cid, key in self._keys.items()
                    if cid not in seen and key not in touched]
        self._drop(gone)

    def _changes(self, started: float, ticket: int) -> None:
        assert self._mark is not None
        with transaction(self._feed, readonly=True) as session:
            mark = watermark(session)  # first: what commits after it, the next poll reads
            changed = list(Reader(started, self._paths).snapshots(session, self._mark))
            deleted = deleted_since(session, self._mark)
        self._apply(changed, ticket)
        alive = {snap.channel_id for snap in changed}  # deleted, then created again
        self._drop(cid for cid in deleted if cid not in alive)
        self._mark = mark
        self.stats.polls += 1

    def _watch_connections(self) -> None:
        """A new poller connection (after the database dropped the last one) may have missed
        anything: the next poll is a full load. The app's engine disposed (the app is done,
        or forked): the poller stops until the next request."""
        app_engine = _bind(self._sessions)
        if app_engine is not None:
            event.listen(app_engine, "engine_disposed", lambda *_: self._pause())
        engine = _bind(self._feed)
        if engine is None or self._feed is self._sessions:
            return

        def connected(*_: Any) -> None:
            self._connections += 1
            if self._connections > 1:
                self._reconnected = True

        event.listen(engine, "connect", connected)

    # --- the poller thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start the poller unless it runs (the app's start-up calls it: loads at once)."""
        with self._guard:
            if self._poller is not None or self._closed or not self._background:
                return
            self._asked = time.monotonic()
            self._poller = threading.Thread(target=self._run, name="resolve-feed", daemon=True)
            self._poller.start()

    def _run(self) -> None:
        try:
            while not self._closed and time.monotonic() - self._asked < self.idle:
                try:
                    self.sync()
                except Exception:
                    self.stats.failures += 1
                    log.warning("resolve feed poll failed; the next is a full load",
                                exc_info=True)
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        finally:
            self._release()
            with self._guard:
                self._poller = None

    def _release(self) -> None:
        """Close the poller's own connection when it stops (it opens one again, and goes on
        from its watermark, when it starts again)."""
        engine = _bind(self._feed)
        if engine is not None and self._feed is not self._sessions:
            engine.dispose()
            self._connections = 0

    def _pause(self) -> None:
        self._asked = float("-inf")  # idle since ever: the loop ends
        self._wake.set()

    def close(self) -> None:
        """Stop the poller (the app's shutdown) and close its own connection."""
        self._closed = True
        self._wake.set()
        poller = self._poller
        if poller is not None:
            poller.join(10)
        self._release()


def _bind(sessions: sessionmaker[Session]) -> Engine | None:
    """The engine a session factory is bound to (None for a stand-in in tests)."""
    bind = getattr(sessions, "kw", {}).get("bind")
    return bind if isinstance(bind, Engine) else None
