"""Output folders that appear whole or not at all, for jobs that write adapter or model folders.

Shared by the merge and the composition, and kept apart from :mod:`merge_worker.merge` so that a
composition does not import the merge's compiled kernels (numba), which it never uses.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class OutputFile:
    name: str
    size: int


def listing(folder: Path) -> tuple[OutputFile, ...]:
    """The files of a finished output folder, by name."""
    return tuple(OutputFile(p.name, p.stat().st_size) for p in sorted(folder.iterdir())
                 if p.is_file())


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder, renamed to ``out_dir`` on success and removed on failure
    (``out_dir`` must not exist or be empty: checked by the caller before any work)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked up front); rename cannot replace it portably
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
