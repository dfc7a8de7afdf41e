"""File manifests of adapter versions: safe relative paths, portable file sets, and the
deterministic digest.

Two levels of path checks:

* :func:`normalize_path` -- safe: relative, inside the folder, no control characters. Every
  path the registry stores or writes passes it (push, pull, merge artifacts, bases).
* :func:`check_portable` -- portable: a version's file set can be materialized as written on
  Linux, macOS and Windows file systems alike. Both ``lorareg push`` (before hashing or
  uploading anything) and the server (before writing anything) run it; pulls do not, so a
  version an older release accepted stays pullable wherever its names happen to fit.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
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


# --- portability ----------------------------------------------------------------------------

# NAME_MAX of Linux and macOS (bytes), NTFS (UTF-16 units, never more than UTF-8 bytes).
MAX_COMPONENT_BYTES = 255
# Relative to the adapter folder; macOS's PATH_MAX (1024 bytes, absolute) keeps the rest for
# the destination folder. (Windows needs long paths enabled past 260 characters, whatever we do.)
MAX_PATH_BYTES = 512
# Characters Windows refuses in names ('/' separates components; NUL and controls go below).
WINDOWS_FORBIDDEN = frozenset('<>:"|?*\\')
# Device names Windows reserves, with any extension: "nul.txt" opens the null device.
WINDOWS_DEVICES = frozenset({
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
    *(f"{stem}{n}" for stem in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"),
})
# Controls (C0, DEL, C1 incl. U+0085 NEL), invisible format characters (zero-width, bidi
# overrides and isolates, U+FEFF), lone surrogates, and the line/paragraph separators.
_REFUSED_CATEGORIES = {
    "Cc": "a control character", "Cf": "an invisible formatting character",
    "Cs": "a lone surrogate, not valid Unicode", "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def check_portable(paths: Iterable[str]) -> None:
    """Raise InvalidPath unless every one of ``paths`` (as :func:`normalize_path` returns them)
    can be created as written on Linux, macOS and Windows, and no two of them clash there.

    A name must be NFC, hold no control, invisible or Windows-forbidden character, end in no
    dot or space, not be a Windows device name; a component is at most 255 bytes of UTF-8 and
    the path at most 512. No two paths (or folders) may differ only by case or normalization,
    and no file may also be the folder of another.
    """
    seen: dict[str, tuple[str, bool, str]] = {}  # folded prefix -> (prefix, is folder, path)
    for path in paths:
        _check_portable_path(path)
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            prefix, is_dir = "/".join(parts[:i]), i < len(parts)
            other, other_is_dir, other_path = seen.setdefault(_fold(prefix),
                                                              (prefix, is_dir, path))
            if other != prefix:
                raise InvalidPath(_case_clash(other, other_path, prefix, path))
            if other_is_dir != is_dir:
                raise InvalidPath(f"{prefix!r} is both a file and the folder of another file "
                                  f"({other_path!r} and {path!r})")


def _case_clash(one: str, one_path: str, two: str, two_path: str) -> str:
    if (one, two) == (one_path, two_path):
        return f"file paths {one!r} and {two!r} differ only by case (one file on macOS and Windows)"
    return (f"{one!r} and {two!r} (in file paths {one_path!r} and {two_path!r}) differ only "
            "by case (one name on macOS and Windows)")


def _fold(path: str) -> str:
    """The name macOS and Windows see: case-insensitive (casefold is the broader rule)."""
    return unicodedata.normalize("NFC", path.casefold())


def _check_portable_path(path: str) -> None:
    reason = _unportable(path)
    if reason is not None:
        raise InvalidPath(f"file path {path!r} {reason}")


def _unportable(path: str) -> str | None:
    """Why ``path`` is not portable, or None."""
    for char in path:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            return f"contains U+{ord(char):04X} ({what})"
        if char in WINDOWS_FORBIDDEN:
            return f"contains {char!r}, which Windows does not allow in file names"
    if not unicodedata.is_normalized("NFC", path):
        return ("is not in Unicode NFC form (macOS would see it as the same name as its NFC "
                "form); rename it to its composed form")
    if len(path.encode()) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes of UTF-8"
    return next(filter(None, map(_unportable_component, path.split("/"))), None)


def _unportable_component(part: str) -> str | None:
    size = len(part.encode())
    if size > MAX_COMPONENT_BYTES:
        return (f"has a name of {size} bytes (at most {MAX_COMPONENT_BYTES} bytes of UTF-8 per "
                "file or folder name)")
    if part.endswith((".", " ")):
        return f"has a name ending in a dot or space ({part!r}), which Windows drops"
    if part.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        return f"has the name {part!r}, which Windows reserves for a device"
    return None
