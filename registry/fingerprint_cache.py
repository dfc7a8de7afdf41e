"""A local cache of per-file fingerprint work, so re-checking an unchanged model is cheap.

:mod:`registry.fingerprint` stores each safetensors file's packed tensor entries here, keyed by
the file's identity (:class:`FileKey`); a lookup that finds the exact file version skips hashing
that file. This module treats the stored value as opaque bytes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a file's bytes.

    Any write to a file updates its ctime, which user code cannot set back (unlike mtime with
    ``touch -d``), so ctime and the device are part of the key on top of the resolved path, size,
    mtime and inode.
    """

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileKey:
        """The key of the file at resolved ``path`` whose stat is ``st``."""
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @property
    def stamp(self) -> str:
        # Stored as text: st_dev and st_ino may not fit SQLite's signed 64-bit integers.
        return f"{self.size}:{self.mtime_ns}:{self.ctime_ns}:{self.inode}:{self.device}"


class FingerprintCache:
    """Per-file fingerprint entries keyed by :class:`FileKey`, in a local SQLite file.

    One row per resolved path: a changed file replaces its row, so the cache does not grow as
    files are rewritten. Several processes may share the file (WAL journal, busy timeout). The
    cache only ever saves work: when it cannot be read or written, callers go on without it.
    """

    # The table name carries the fingerprint format: a new format starts from an empty cache.
    _TABLE = "file_entries_v1"

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self._timeout = timeout

    @classmethod
    def default(cls, path: Path | None = None) -> FingerprintCache:
        """The cache at ``path`` (pass ``Settings.fingerprint_cache``), else the per-user one."""
        return cls(path or Path.home() / ".cache" / "lorareg" / "fingerprints.sqlite")

    def get_many(self, keys: Sequence[FileKey]) -> dict[FileKey, bytes]:
        """The stored value of every key whose exact file version the cache knows."""
        found: dict[FileKey, bytes] = {}
        try:
            with self._connect() as conn:
                for key in keys:
                    row = conn.execute(
                        f"SELECT entries FROM {self._TABLE} WHERE path = ? AND stamp = ?",
                        (key.path, key.stamp),
                    ).fetchone()
                    if row is not None:
                        found[key] = bytes(row[0])
        except (sqlite3.Error, OSError) as exc:
            logger.warning("fingerprint cache %s unreadable, not used: %s", self.path, exc)
        return found

    def put_many(self, items: Mapping[FileKey, bytes]) -> None:
        """Remember a value for each file version, replacing older versions of the same path."""
        rows = [(key.path, key.stamp, value) for key, value in items.items()]
        try:
            with self._connect() as conn, conn:  # the second `with` is one transaction
                conn.executemany(
                    f"INSERT OR REPLACE INTO {self._TABLE} (path, stamp, entries) VALUES (?, ?, ?)",
                    rows,
                )
        except (sqlite3.Error, OSError) as exc:
            logger.warning("fingerprint cache %s not updated: %s", self.path, exc)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=self._timeout)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._TABLE} "
                "(path TEXT PRIMARY KEY, stamp TEXT NOT NULL, entries BLOB NOT NULL)"
            )
            yield conn
