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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.db import transaction
from registry.errors import NotFound
from registry.models import Adapter, AdapterVersion, Channel, Namespace
from registry.refs import check_channel, parse_adapter_name


@dataclass(frozen=True)
class Target:
    ref: str
    version: int
    manifest_digest: str
    files: tuple[tuple[str, str, int], ...]  # (path, sha256, size)


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


def load(session: Session, adapter: str, channel: str) -> Snapshot:
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
                    row.canary_weight_bp, time.monotonic())


class ResolveCache:
    """Per-process channel snapshots with a short TTL and single-flight refresh."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions, self.ttl, self._clock = sessions, ttl, clock
        self._entries: dict[tuple[str, str], Snapshot] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def fresh(self, adapter: str, channel: str) -> Snapshot | None:
        """The cached snapshot if still within its TTL (no I/O: safe on the event loop)."""
        snap = self._entries.get((adapter, channel))
        if snap is not None and self._clock() - snap.loaded < self.ttl:
            return snap
        return None

    def get(self, adapter: str, channel: str) -> Snapshot:
        """Fresh snapshot, loading it (once, for all waiting threads) when stale."""
        key = (adapter, channel)
        snap = self.fresh(*key)
        if snap is not None:
            return snap
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            snap = self.fresh(*key)
            if snap is None:
                with transaction(self._sessions) as session:
                    snap = load(session, adapter, channel)
                self._entries[key] = snap
            return snap

    def invalidate(self, adapter: str, channel: str | None = None) -> None:
        for key in list(self._entries):
            if key[0] == adapter and channel in (None, key[1]):
                self._entries.pop(key, None)
