"""The agent's cache folder: how many bytes it holds, and LRU eviction beyond a limit.

The folder is ``export --pool``'s layout (:mod:`registry.serving.export`). Eviction takes
the export's lock, considers only folders whose sidecar names this pool, and never one in
``keep`` (desired, draining or loaded: an engine may read it); least recently used first, by
the newest access or change time of the folder's files.
"""

from __future__ import annotations

from pathlib import Path

from registry.serving.export import LOCK, SIDECAR, STORE, Sidecar, is_served_name, remove
from registry.serving.files import fsync_dir, locked


def cache_bytes(root: Path) -> int:
    """Bytes of every regular file under ``root`` (downloads in progress included)."""
    if not root.is_dir():
        return 0
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def last_used(folder: Path) -> float:
    """The newest access time of the adapter's files (an engine reading them), or the
    folder's change time; the sidecar is left out, since eviction itself reads it."""
    times = [p.stat().st_atime for p in folder.rglob("*") if p.is_file() and p.name != SIDECAR]
    return max([folder.stat().st_mtime, *times])


def evict(root: Path, pool: str, limit: int, keep: set[str]) -> list[str]:
    """Delete this pool's folders not in ``keep``, least recently used first, until the
    cache holds at most ``limit`` bytes; the names deleted."""
    if not root.is_dir() or cache_bytes(root) <= limit:
        return []
    gone: list[str] = []
    with locked(root / STORE / LOCK):
        for name in _candidates(root, pool, keep):
            if cache_bytes(root) <= limit:
                break
            remove(root / name, via=root / STORE)
            gone.append(name)
        fsync_dir(root)
    return gone


def _candidates(root: Path, pool: str, keep: set[str]) -> list[str]:
    names = []
    for entry in root.iterdir():
        if is_served_name(entry.name) and entry.name not in keep and entry.is_dir():
            sidecar = Sidecar.read(entry)
            if sidecar is not None and sidecar.pool == pool:
                names.append(entry.name)
    return sorted(names, key=lambda n: last_used(root / n))
