"""File manifests of adapter versions: safe relative paths and the deterministic digest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from registry.errors import BadRequest, InvalidPath

DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_PATH = 512
MAX_FILES = 1000


@dataclass(frozen=True)
class FileEntry:
    path: str
    digest: str
    size: int


def normalize_path(path: str) -> str:
    """Return the canonical relative POSIX form of ``path`` or raise InvalidPath.

    Refused: empty, absolute, drive letters, backslashes, NUL and control characters,
    ``.``/``..`` segments, and anything longer than 512 characters.
    """
    if not path or len(path) > MAX_PATH:
        raise InvalidPath(f"file path {path!r} is empty or longer than {MAX_PATH} characters")
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise InvalidPath(f"file path {path!r} contains a backslash or control character")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidPath(f"file path {path!r} must be relative")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidPath(f"file path {path!r} escapes the adapter folder")
    return str(PurePosixPath(*parts))


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise BadRequest(f"digest {digest!r} is not 64 lowercase hex characters of sha256")
    return digest


def normalize_files(files: Iterable[FileEntry]) -> list[FileEntry]:
    """Validate every entry and sort by path; duplicate paths are refused."""
    out: dict[str, FileEntry] = {}
    for f in files:
        path = normalize_path(f.path)
        check_digest(f.digest)
        if f.size < 0:
            raise BadRequest(f"file {path!r} has a negative size")
        if path in out:
            raise InvalidPath(f"file path {path!r} appears twice in the manifest")
        out[path] = FileEntry(path, f.digest, f.size)
    if not out:
        raise BadRequest("a version needs at least one file")
    if len(out) > MAX_FILES:
        raise BadRequest(f"a version may have at most {MAX_FILES} files")
    return [out[p] for p in sorted(out)]


def manifest_digest(files: Iterable[FileEntry]) -> str:
    """sha256 of the canonical JSON ``[[path, digest, size], ...]`` sorted by path."""
    rows = sorted([f.path, f.digest, f.size] for f in files)
    canonical = json.dumps(rows, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
