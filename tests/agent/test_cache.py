"""The agent's cache folder (registry/agent/cache.py): bytes counted, LRU eviction beyond the
limit that never touches a kept folder (desired, draining, loaded), another pool's folder, or
a folder without our sidecar."""

from __future__ import annotations

import os
from pathlib import Path

from registry.agent.cache import cache_bytes, evict
from registry.served_names import served_name
from registry.serving.export import SIDECAR, Sidecar

POOL = "ns/cpu"


def folder(root: Path, number: int, size: int, used: float, pool: str = POOL,
           sidecar: bool = True) -> str:
    name = served_name("ns", "bot", number, f"{number:064x}")
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x" * size)
    if sidecar:
        card = Sidecar(pool, name, f"ns/bot@{number}", f"{number:064x}", "/m", None, "a", "b")
        (path / SIDECAR).write_bytes(card.to_bytes())
    for p in [path, *path.iterdir()]:
        os.utime(p, (used, used))
    return name


def test_eviction_is_lru_and_spares_kept_foreign_and_unknown_folders(tmp_path: Path) -> None:
    old, older, oldest = (folder(tmp_path, n, 1000, t) for n, t in ((1, 300), (2, 200), (3, 100)))
    kept = folder(tmp_path, 4, 1000, 50)
    foreign = folder(tmp_path, 5, 1000, 10, pool="ns/other")
    unknown = folder(tmp_path, 6, 1000, 5, sidecar=False)
    total = cache_bytes(tmp_path)
    assert total > 6000

    gone = evict(tmp_path, POOL, total - 1500, keep={kept})
    assert gone == [oldest, older]  # least recently used first, and only as many as needed
    left = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert left == {old, kept, foreign, unknown}

    assert evict(tmp_path, POOL, 0, keep={kept}) == [old]
    left = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert left == {kept, foreign, unknown}  # over the limit, but nothing else may go


def test_under_the_limit_nothing_moves(tmp_path: Path) -> None:
    name = folder(tmp_path, 1, 10, 100)
    assert evict(tmp_path, POOL, 10**9, keep=set()) == []
    assert (tmp_path / name).is_dir()
    assert evict(tmp_path / "absent", POOL, 0, keep=set()) == []
