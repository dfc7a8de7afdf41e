"""The resolve change feed: what every channel is, read in bulk, and what changed since a mark.

The database marks every channel change itself, in the changing transaction (triggers of
migrations/versions/0009_resolve_feed.py): ``channels.change_seq`` on insert, update and on a
rename of the channel's adapter or namespace, a ``channel_tombstones`` row on delete. A reader
keeps a *watermark*: every change committed after the watermark was read carries a mark at or
above it. So a reader that reads the watermark first and then the rows marked at or above the
previous one misses no change, whatever the order in which writers commit:

* PostgreSQL: the mark is the writer's transaction id, the watermark the ``xmin`` of the
  reader's snapshot (every transaction below it has ended: its rows are visible now, and
  those of any transaction still running, or not begun, will carry a mark at or above it).
  Writers share no counter and take no lock for the feed. A transaction open for long holds
  ``xmin`` back: the rows changed meanwhile are read again by every poll until it ends
  (applying them again changes nothing).
* SQLite: writers are serialized by the database lock, so a counter (``resolve_feed``) taken
  by the trigger is committed in order; the watermark is the counter + 1.

Rows come out as :class:`~registry.services.resolve.Snapshot` objects, compact
(:class:`~registry.services.resolve.Target`), streamed from one query.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, or_, select, text
from sqlalchemy.orm import Session, aliased

from registry.models import (
    Adapter,
    AdapterVersion,
    Channel,
    ChannelTombstone,
    Namespace,
    VersionFile,
)
from registry.services.resolve import FileRow, Paths, Snapshot, Target, pack_files

STREAM_ROWS = 2000  # rows fetched per round trip by the bulk read (server-side cursor on PG)


def watermark(session: Session) -> int:
    """The mark at or above which every change committed from now on will be."""
    if session.get_bind().dialect.name == "postgresql":
        found = session.scalar(text(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
    else:
        found = session.scalar(text("SELECT seq + 1 FROM resolve_feed WHERE id = 1"))
    return int(found or 0)


def _rows(since: int | None) -> Select[*tuple[Any, ...]]:
    """One row per file of each target of each channel (a channel without a version: one row
    of NULLs), ordered so that a channel's rows, and a target's, come together."""
    version, file = aliased(AdapterVersion), aliased(VersionFile)
    stmt = (
        select(Channel.id, Namespace.name, Adapter.name, Channel.name, Channel.revision,
               Channel.rollout_id, Channel.canary_weight_bp, Channel.stable_version_id,
               Channel.canary_version_id, version.id, version.number,
               version.manifest_digest, file.path, file.digest, file.size)
        .join(Adapter, Channel.adapter_id == Adapter.id)
        .join(Namespace, Adapter.namespace_id == Namespace.id)
        .outerjoin(version, or_(version.id == Channel.stable_version_id,
                                version.id == Channel.canary_version_id))
        .outerjoin(file, file.version_id == version.id)
        .order_by(Channel.id, version.id, file.path))
    if since is not None:
        stmt = stmt.where(Channel.change_seq >= since)
    return stmt


@dataclass
class _Pending:
    """The channel being read: its row and the targets seen so far."""

    row: Any  # a row of _rows(): its first nine columns are the channel's
    targets: dict[int, Target]
    files: list[FileRow]
    version: tuple[int, int, str] | None = None  # (id, number, manifest digest) being read


class Reader:
    """Turns the feed's rows into snapshots. One per load: it shares the names (adapter,
    channel, file paths) and the targets of versions several channels point at."""

    def __init__(self, loaded: float, paths: Paths) -> None:
        self.loaded, self._paths = loaded, paths
        self._names: dict[str, str] = {}
        self._targets: dict[int, Target] = {}

    def snapshots(self, session: Session, since: int | None = None) -> Iterator[Snapshot]:
        """Every channel (``since`` None), or those marked at or above ``since``."""
        # Core rows on the session's connection: no ORM row processing for 400,000 rows.
        result = session.connection().execute(
            _rows(since), execution_options={"yield_per": STREAM_ROWS})
        pending: _Pending | None = None
        for row in result:
            if pending is None or pending.row[0] != row[0]:
                if pending is not None:
                    yield self._snapshot(pending)
                pending = _Pending(row, {}, [])
            self._add(pending, row)
        if pending is not None:
            yield self._snapshot(pending)

    def _add(self, pending: _Pending, row: Any) -> None:
        _, _, _, _, _, _, _, _, _, version_id, number, manifest, path, digest, size = row
        if version_id is None:
            return
        if pending.version is None or pending.version[0] != version_id:
            self._close_target(pending)
            pending.version = (version_id, number, manifest)
        if path is not None:
            pending.files.append((path, digest, size))

    def _close_target(self, pending: _Pending) -> None:
        if pending.version is None:
            return
        version_id, number, manifest = pending.version
        target = self._targets.get(version_id)
        if target is None:
            files = sorted(pending.files)
            target = Target.packed(self._name(f"{pending.row[1]}/{pending.row[2]}"), number,
                                   manifest, self._paths.shared(tuple(p for p, _, _ in files)),
                                   pack_files(files))
            self._targets[version_id] = target
        pending.targets[version_id] = target
        pending.version, pending.files = None, []

    def _snapshot(self, pending: _Pending) -> Snapshot:
        self._close_target(pending)
        channel_id, ns, name, channel, revision, rollout_id, weight_bp, stable_id, canary_id = (
            pending.row[:9])
        return Snapshot(self._name(f"{ns}/{name}"), self._name(channel), channel_id, revision,
                        rollout_id, pending.targets.get(stable_id),
                        pending.targets.get(canary_id), weight_bp, self.loaded)

    def _name(self, name: str) -> str:
        """One string object per name in this load (adapter names repeat once per channel)."""
        return self._names.setdefault(name, name)


def deleted_since(session: Session, since: int) -> list[int]:
    """Ids of the channels deleted with a mark at or above ``since``."""
    return list(session.scalars(select(ChannelTombstone.channel_id)
                                .where(ChannelTombstone.change_seq >= since)))
