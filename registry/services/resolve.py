"""Resolve: which version serves this request? The model of an answer, from memory.

A channel's answer is a :class:`Snapshot` (its revision, rollout, canary weight and the two
:class:`Target` versions it points at). Every channel of the registry is held in memory by
:class:`registry.services.resolve_state.ResolveState`, kept fresh by the change feed
(:mod:`registry.services.resolve_feed`); :func:`load` reads one channel from the database
when memory cannot answer. Version contents are immutable, so a target never changes.

Stickiness: ``bucket = int(blake2b(f"{channel_id}:{rollout_id}:{key}")[:8]) mod 10000``; the
canary serves the request when ``bucket < canary_weight_bp``. The bucket of a key never changes
during a rollout, so raising the weight only moves keys from stable to canary; a new rollout
has a new id and reshuffles.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.models import Adapter, AdapterVersion, Channel, Namespace
from registry.refs import check_channel, parse_adapter_name
from registry.served_names import served_name

FileRow = tuple[str, str, int]  # (path, sha256, size)
# One file in a target's packed bytes: the digest as 64 ASCII characters (a sha256 in hex;
# stored as text, so any digest round-trips) and the size.
_FILE = struct.Struct(">64sQ")


class Target:
    """One version a channel points at: ref, number, manifest digest and files.

    Held for every channel of the registry, so it is compact (``__slots__``, the files packed
    into one ``bytes``, the tuple of paths shared by every version with the same file names,
    the adapter name shared with its channel); the ``files`` are unpacked only to build an
    answer, and answers are cached (``registry.web.caches.AnswerCache``)."""

    __slots__ = ("_packed", "_paths", "adapter", "manifest_digest", "version")
    adapter: str
    version: int
    manifest_digest: str
    _paths: tuple[str, ...]
    _packed: bytes

    def __init__(self, ref: str, version: int, manifest_digest: str,
                 files: Iterable[FileRow] = ()) -> None:
        rows = sorted(files)
        self.adapter, self.version = ref.rpartition("@")[0], version
        self.manifest_digest = manifest_digest
        self._paths = tuple(p for p, _, _ in rows)
        self._packed = pack_files(rows)

    @classmethod
    def packed(cls, adapter: str, version: int, manifest_digest: str,
               paths: tuple[str, ...], packed: bytes) -> Target:
        """A target from parts already made compact (the bulk loader's path)."""
        target = cls.__new__(cls)
        target.adapter, target.version, target.manifest_digest = adapter, version, manifest_digest
        target._paths, target._packed = paths, packed
        return target

    @property
    def ref(self) -> str:
        return f"{self.adapter}@{self.version}"

    @property
    def files(self) -> tuple[FileRow, ...]:
        return tuple((path, digest.decode("ascii"), size) for path, (digest, size)
                     in zip(self._paths, _FILE.iter_unpack(self._packed), strict=True))

    @property
    def served_name(self) -> str:
        """The name a router sends the engine for this content (registry.served_names)."""
        namespace, _, name = self.adapter.partition("/")
        return served_name(namespace, name, self.version, self.manifest_digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (
            self.adapter, self.version, self.manifest_digest, self._paths, self._packed) == (
            other.adapter, other.version, other.manifest_digest, other._paths, other._packed)

    def __hash__(self) -> int:
        return hash((self.adapter, self.version, self.manifest_digest))

    def __repr__(self) -> str:
        return f"Target({self.ref!r}, {self.version}, {self.manifest_digest!r}, {self.files!r})"


def pack_files(rows: Sequence[FileRow]) -> bytes:
    """Digests and sizes of files sorted by path, in :class:`Target`'s packed form."""
    return b"".join(_FILE.pack(digest.encode("ascii"), size) for _, digest, size in rows)


class Paths:
    """One shared tuple per distinct list of file names (most versions have the same few):
    a process holding 200,000 targets keeps a handful of path tuples, and interned names."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, ...], tuple[str, ...]] = {}

    def shared(self, paths: tuple[str, ...]) -> tuple[str, ...]:
        found = self._known.get(paths)
        if found is None:
            found = self._known.setdefault(paths, tuple(sys.intern(p) for p in paths))
        return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    adapter: str
    channel: str
    channel_id: int
    revision: int
    rollout_id: int | None
    stable: Target | None
    canary: Target | None
    weight_bp: int
    loaded: float  # the state's clock when this was read from the database

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
                  version.manifest_digest, ((f.path, f.digest, f.size) for f in version.files))


def load(session: Session, adapter: str, channel: str, now: float) -> Snapshot:
    """The channel's snapshot, stamped ``loaded=now`` (the caller's clock)."""
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
