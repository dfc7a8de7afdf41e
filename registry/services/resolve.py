"""Resolve: which version serves this request? The hot path, answered from memory.

A channel's state is read from the database at most once per ``ttl`` (0.5 s by default) per
process and shared by every request meanwhile, so a promotion made through any API replica is
visible everywhere within one ``ttl``; a change made through this process is visible at once
(``invalidate``). Version manifests are immutable and cached for good.

Stickiness: ``bucket = int(blake2b(f"{channel_id}:{rollout_id}:{key}")[:8]) mod 10000``; the
canary serves the request when ``bucket < canary_weight_bp``. The bucket of a key never changes
during a rollout, so raising the weight only moves keys from stable to canary; a new rollout
has a new id and reshuffles.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.db import transaction
from registry.errors import NotFound
from registry.models import Adapter, AdapterVersion, Channel, Namespace
from registry.refs import check_channel, parse_adapter_name
from registry.served_names import served_name

log = logging.getLogger("lorareg.resolve")


@dataclass(frozen=True)
class Target:
    ref: str
    version: int
    manifest_digest: str
    files: tuple[tuple[str, str, int], ...]  # (path, sha256, size)

    @property
    def served_name(self) -> str:
        """The name a router sends the engine for this content (registry.served_names)."""
        adapter = self.ref.rpartition("@")[0]
        namespace, _, name = adapter.partition("/")
        return served_name(namespace, name, self.version, self.manifest_digest)


@dataclass(frozen=True)
class Snapshot:
    adapter: str
    channel: str
    channel_id: int
    revision: int
    rollout_id: int | None
    stable: Target | None
    canary: Target | None
    weight_bp: int
    loaded: float

    @property
    def etag(self) -> str:
        return f'W/"{self.channel_id}-{self.revision}"'


def bucket(channel_id: int, rollout_id: int | None, key: str) -> int:
    digest = hashlib.blake2b(f"{channel_id}:{rollout_id or 0}:{key}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


def choose(snapshot: Snapshot, key: str) -> tuple[Target, bool]:
    """The target for ``key`` and whether it is the canary."""
    if snapshot.canary is not None and snapshot.weight_bp > 0 and (
            bucket(snapshot.channel_id, snapshot.rollout_id, key) < snapshot.weight_bp):
        return snapshot.canary, True
    if snapshot.stable is None:
        if snapshot.canary is not None:
            return snapshot.canary, True
        raise NotFound(f"channel {snapshot.adapter}:{snapshot.channel} points at no version")
    return snapshot.stable, False


def target_of(version: AdapterVersion) -> Target:
    return Target(f"{version.adapter.full_name}@{version.number}", version.number,
                  version.manifest_digest,
                  tuple((f.path, f.digest, f.size) for f in version.files))


def load(session: Session, adapter: str, channel: str, now: float) -> Snapshot:
    """The channel's snapshot, stamped ``loaded=now`` (the cache's clock)."""
    ns, name = parse_adapter_name(adapter)
    row = session.scalar(
        select(Channel).join(Adapter, Channel.adapter_id == Adapter.id)
        .join(Namespace, Adapter.namespace_id == Namespace.id)
        .where(Namespace.name == ns, Adapter.name == name, Channel.name == check_channel(channel)))
    if row is None:
        raise NotFound(f"channel {adapter}:{channel} not found")
    return Snapshot(adapter, channel, row.id, row.revision, row.rollout_id,
                    target_of(row.stable) if row.stable else None,
                    target_of(row.canary) if row.canary else None,
                    row.canary_weight_bp, now)


class ResolveCache:
    """Per-process channel snapshots with a short TTL and single-flight refresh.

    :meth:`get` (in a worker thread) loads a stale snapshot and makes its callers wait for it.
    :meth:`serve` (the hot path, on the event loop) never waits: a snapshot stale by less than
    ``grace`` is served while a background thread (at most ``REFRESHERS`` at once) reloads it,
    so no request queues behind the database and a change is still seen within
    ``ttl + grace`` (0.75 s by default). :meth:`invalidate` drops an adapter's snapshots at once;
    a load that began before it cannot put the old state back (each adapter has a generation
    that invalidation bumps), nor can a load overtake a later one (the snapshot read last is
    kept).
    """

    REFRESHERS = 2
    STRIPES = 64  # single-flight locks, shared by hash: memory does not grow with names asked

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 0.5, grace: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions, self.ttl, self.grace, self._clock = sessions, ttl, grace, clock
        self._entries: dict[tuple[str, str], Snapshot] = {}
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self._generations: dict[str, int] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._guard = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None

    def fresh(self, adapter: str, channel: str) -> Snapshot | None:
        """The cached snapshot if still within its TTL (no I/O: safe on the event loop)."""
        snap = self._entries.get((adapter, channel))
        if snap is not None and self._clock() - snap.loaded < self.ttl:
            return snap
        return None

    def serve(self, adapter: str, channel: str) -> Snapshot | None:
        """The snapshot for the hot path, without I/O: fresh, or stale by less than ``grace``
        while a background thread reloads it; None when the caller must load it (:meth:`get`)."""
        key = (adapter, channel)
        snap = self._entries.get(key)
        if snap is None:
            return None
        age = self._clock() - snap.loaded
        if age < self.ttl:
            return snap
        if age >= self.ttl + self.grace:
            return None
        with self._guard:
            if key in self._refreshing:
                return snap
            self._refreshing.add(key)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(self.REFRESHERS, "resolve-refresh")
            refresher = self._refresher
        refresher.submit(self._refresh, adapter, channel)
        return snap

    def get(self, adapter: str, channel: str) -> Snapshot:
        """Fresh snapshot, loading it (once, for all waiting threads) when stale."""
        key = (adapter, channel)
        snap = self.fresh(*key)
        if snap is not None:
            return snap
        with self._stripes[hash(key) % self.STRIPES]:
            snap = self.fresh(*key)
            if snap is None:
                snap = self._load(key)
            return snap

    def _load(self, key: tuple[str, str]) -> Snapshot:
        generation = self._generations.get(key[0], 0)
        with transaction(self._sessions, readonly=True) as session:
            snap = load(session, *key, self._clock())
        with self._guard:
            current = self._entries.get(key)
            if self._generations.get(key[0], 0) == generation and (
                    current is None or current.loaded <= snap.loaded):
                self._entries[key] = snap
        return snap

    def _refresh(self, adapter: str, channel: str) -> None:
        key = (adapter, channel)
        try:
            self._load(key)
        except Exception:
            # e.g. the channel is gone or the database down: the next request loads it
            # itself (get) and answers with the error.
            log.warning("background reload of %s:%s failed", adapter, channel, exc_info=True)
            self._entries.pop(key, None)
        finally:
            with self._guard:
                self._refreshing.discard(key)

    def invalidate(self, adapter: str, channel: str | None = None) -> None:
        """Drop ``adapter``'s snapshots (``channel``: only that one's; loads of the adapter
        still running are discarded either way)."""
        with self._guard:
            self._generations[adapter] = self._generations.get(adapter, 0) + 1
            for key in list(self._entries):
                if key[0] == adapter and channel in (None, key[1]):
                    self._entries.pop(key, None)
