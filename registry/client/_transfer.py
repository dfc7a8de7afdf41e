"""Moving files between local folders and the registry, independent of HTTP.

* Scanning: :func:`iter_folder` walks a folder the way push sees it, :func:`scan_folder` hashes
  it into :class:`LocalFile` entries, :func:`file_chunks` streams one file for an upload and
  notices when it changes underneath.
* Progress: :class:`Reporter` feeds byte counts to a callable or a tqdm-like bar.
* Downloading a file set into a folder, resumable, verified and atomic
  (:func:`download_folder`): files land in ``.<dest>.partial-<key>`` next to ``dest``; whole
  files already there and hashing right are kept, a partial file continues from its size (the
  caller's ``download`` function asks for a ``Range``); every file's sha256 is checked (a
  mismatch deletes the file and raises DigestMismatch, as does a stored blob the download finds
  to be of another size: :func:`corrupt_blob`); files not in the manifest are pruned; the
  folder is renamed to ``dest`` only when complete.

The HTTP side (which URL, retries, ``Range`` headers) lives in :mod:`registry.client._blobs`;
it hands :func:`download_folder` a :data:`Download` function that streams one blob into a
:class:`Sink`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import queue
import secrets
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from registry import errors
from registry.manifest import check_portable, normalize_path
from registry.wire import FileOut

CHUNK = 1024 * 1024
SKIP_DIRS = frozenset({"__pycache__"})


# ------------------------------------------------------------------------------- progress


@runtime_checkable
class ProgressBar(Protocol):
    """What transfers need of a tqdm bar."""

    def update(self, n: float | None = ...) -> bool | None: ...

    def reset(self, total: float | None = ...) -> None: ...


Progress = Callable[[int], object] | ProgressBar


class Reporter:
    """Feeds byte counts to a callable, a tqdm-like bar, or nothing."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def start(self, total: int, phase: str | None = None) -> None:
        """A new phase of ``total`` bytes: a bar is reset (and renamed, if it can be)."""
        if isinstance(self._progress, ProgressBar):
            if phase is not None and hasattr(self._progress, "set_description_str"):
                self._progress.set_description_str(phase)
            self._progress.reset(total=total)

    def __call__(self, n: int) -> None:
        if not n or self._progress is None:
            return
        if isinstance(self._progress, ProgressBar):
            self._progress.update(n)
        else:
            self._progress(n)


# ---------------------------------------------------------------------------- local files


@dataclass(frozen=True)
class LocalFile:
    """One file of a local folder: its manifest path, where it lives, its sha256 and size."""

    path: str
    source: Path
    digest: str
    size: int

    def entry(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}


def sha256_file(path: Path, report: Callable[[int], object] | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (``report`` hears each chunk's size)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            if report is not None:
                report(len(chunk))
    return h.hexdigest()


def iter_folder(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(relative POSIX path, file)`` for every regular file under ``folder``, sorted.

    Hidden files and folders (``.git``, ``.DS_Store``) and ``__pycache__`` are skipped.
    Symlinks to files are followed (Hugging Face snapshots are symlink farms); symlinked
    folders are not, so a link cycle cannot loop.
    """
    found: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for name in names:
            file = Path(root) / name
            if not name.startswith(".") and file.is_file():
                found.append((normalize_path(file.relative_to(folder).as_posix()), file))
    return iter(sorted(found))


def scan_folder(folder: Path, report: Callable[[int], object] | None = None) -> list[LocalFile]:
    """Hash every file of a folder (see :func:`iter_folder`); ``report`` hears hashed bytes.

    The names are checked first, as the server will (:func:`registry.manifest.check_portable`):
    a folder that could not be pulled on some system is refused before anything is hashed.
    """
    if not folder.is_dir():
        raise errors.BadRequest(f"{folder} is not a folder")
    found = list(iter_folder(folder))
    check_portable(rel for rel, _ in found)
    files = [LocalFile(rel, f, sha256_file(f, report), f.stat().st_size) for rel, f in found]
    if not files:
        raise errors.BadRequest(f"{folder} contains no files to push")
    return files


def folder_size(folder: Path) -> int:
    """Bytes :func:`scan_folder` will hash."""
    return sum(f.stat().st_size for _, f in iter_folder(folder))


def file_chunks(file: LocalFile) -> Iterator[bytes]:
    """The file's bytes for an upload; BadRequest if it no longer has the scanned size."""
    sent = 0
    with file.source.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sent += len(chunk)
            if sent > file.size:
                break
            yield chunk
    if sent != file.size:
        raise errors.BadRequest(f"{file.source} changed while it was being pushed; push again")


# ------------------------------------------------------------------------------ downloads


class Sink:
    """A file being downloaded: what is on disk and its running sha256.

    ``size`` and ``hasher`` describe the bytes in the file; when :meth:`write_from` returns
    or raises they are all fsynced, so after an interrupted download a retry can ask for
    ``Range: bytes=<size>-``.
    """

    def __init__(self, target: Path, report: Reporter) -> None:
        self.target, self.report = target, report
        self.hasher = hashlib.sha256()
        self.size = 0
        self.fetched = 0
        if target.is_file():
            with target.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    self.hasher.update(chunk)
                    self.size += len(chunk)
        report(self.size)

    def restart(self) -> None:
        """Start the file over (the server ignored our Range)."""
        self.report(-self.size)
        self.target.write_bytes(b"")
        self.hasher, self.size = hashlib.sha256(), 0

    def write_from(self, chunks: Iterable[bytes]) -> None:
        """Append, hash and fsync every chunk as received. If the iterator raises (e.g. the
        connection dropped), every byte received before is still written, hashed and fsynced,
        so a retry can resume at ``size``.

        This thread only receives: it hands batches of chunks (no copy) through a bounded
        queue to a writer thread that appends each batch with one ``writev`` and then hashes
        it. ``writev`` and sha256 release the GIL, so receiving overlaps with both. An error
        in the writer (e.g. a full disk) is raised here. Chunks are used after the iterator
        moves on, so they must not change (``bytes`` never do).
        """
        with self.target.open("ab", buffering=0) as fh:
            appender = _Appender(self, fh.fileno())
            try:
                appender.feed(chunks)
            finally:
                try:
                    appender.close()  # raises the writer's error, if any
                finally:
                    os.fsync(fh.fileno())


#: Chunks are handed to the writer thread in batches of BATCH_BYTES (or BATCH_CHUNKS chunks);
#: with BATCH_DEPTH batches queued, one being written and one filling, a download holds about
#: (BATCH_DEPTH + 2) * BATCH_BYTES bytes.
BATCH_BYTES = 1024 * 1024
BATCH_CHUNKS = 256  # well under IOV_MAX (1024 on Linux) for one writev
BATCH_DEPTH = 4
#: Every WRITEBACK bytes the writer asks the kernel to start writing them to disk, so the disk
#: works while we receive rather than all during the final fsync (which still comes).
WRITEBACK = 64 * 1024 * 1024


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (Python's ``os`` lacks it), or None elsewhere.

    With SYNC_FILE_RANGE_WRITE it only starts writeback: it neither waits nor drops the pages
    from the cache, and a write error still reaches the final fsync. (``os.fdatasync`` would
    wait and commit the journal each time; ``posix_fadvise(DONTNEED)`` evicts pages.)
    """
    if sys.platform != "linux":
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], func)


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>


class _Appender:
    """Feeds a :class:`Sink` (see ``write_from``): this thread batches chunks, a writer thread
    appends and hashes the batches, through a bounded queue."""

    def __init__(self, sink: Sink, fd: int) -> None:
        # Its own descriptor: should close() be interrupted (a second Ctrl-C), the writer
        # may outlive the caller's file, never a descriptor reused by another one.
        self._sink, self._fd = sink, os.dup(fd)
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(BATCH_DEPTH)
        self._batch: list[bytes] = []
        self._batched = 0
        self._error: BaseException | None = None
        # A daemon: an interrupted pull (Ctrl-C while waiting in close) must not keep the
        # process alive.
        self._thread = threading.Thread(target=self._write, name="lorareg-sink", daemon=True)
        self._thread.start()

    def feed(self, chunks: Iterable[bytes]) -> None:
        batch = self._batch
        for chunk in chunks:
            batch.append(chunk)
            self._batched += len(chunk)
            if self._batched >= BATCH_BYTES or len(batch) >= BATCH_CHUNKS:
                self._hand_over()
                batch = self._batch

    def close(self) -> None:
        """Hand over the last batch and wait until everything is written; raise the writer's
        error, if it had one."""
        try:
            if self._error is None and self._batch:
                self._hand_over()
        finally:
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(self._batch)
        self._sink.report(self._batched)
        self._batch, self._batched = [], 0

    def _write(self) -> None:
        """Writer thread: append and hash each batch; after an error, only drain the queue.

        Hashing after writing keeps ``hasher`` and ``size`` to what is in the file. (Hashing
        in the receiving thread instead, while chunks are in its CPU cache, measured slower:
        it lengthens the one thread that cannot overlap with anything.)
        """
        sink, unsynced = self._sink, 0
        try:
            while (batch := self._queue.get()) is not None:
                if self._error is not None:
                    continue
                try:
                    size = _write_all(self._fd, batch)
                except BaseException as exc:  # raised in the receiving thread
                    self._error = exc
                    continue
                for chunk in batch:
                    sink.hasher.update(chunk)
                sink.size += size
                sink.fetched += size
                unsynced += size
                if unsynced >= WRITEBACK and _sync_file_range is not None:
                    # A hint: its failure is ignored, and an I/O error shows up at the fsync.
                    _sync_file_range(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
                    unsynced = 0
        finally:
            os.close(self._fd)


def _write_all(fd: int, chunks: list[bytes]) -> int:
    """Append ``chunks`` with one ``writev`` (a short one is finished chunk by chunk)."""
    total = sum(map(len, chunks))
    done = os.writev(fd, chunks)
    if done < total:
        view = memoryview(b"".join(chunks))[done:]
        while view:
            written = os.write(fd, view)
            if not written:  # a regular file never takes nothing; do not spin if one does
                raise OSError(errno.EIO, "writing a download made no progress")
            view = view[written:]
    return total


# Streams blob ``digest`` (``size`` bytes) into the sink, from ``sink.size`` on.
Download = Callable[[str, Sink, int], None]


def download_folder(
    files: Sequence[FileOut], dest: Path, key: str, download: Download,
    report: Reporter, *, overwrite: bool = False,
) -> int:
    """Make ``dest`` hold exactly ``files`` (``{path, digest, size}``), verified; return the
    bytes downloaded. ``key`` names the partial folder an interrupted run resumes from (e.g.
    the manifest digest), so a different file set never reuses it."""
    check_dest(dest, overwrite)
    partial = dest.parent / f".{dest.name}.partial-{key}"
    partial.mkdir(parents=True, exist_ok=True)
    report.start(sum(f.size for f in files))
    downloaded = sum(fetch_file(f, partial, report, download) for f in files)
    prune(partial, {normalize_path(f.path) for f in files})
    install(partial, dest, overwrite)
    return downloaded


def fetch_file(entry: FileOut, root: Path, report: Reporter, download: Download) -> int:
    """Make ``root/<path>`` hold the verified file; return the bytes downloaded."""
    path, digest, size = normalize_path(entry.path), entry.digest, entry.size
    target = root.joinpath(*path.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_complete(target, digest, size):
        report(size)
        return 0
    sink = Sink(target, report)
    try:
        download(digest, sink, size)
    except errors.DigestMismatch as cause:  # the download found the stored blob corrupt
        raise mismatch(target, path, digest, size, sink, cause) from None
    if sink.hasher.hexdigest() != digest or sink.size != size:
        raise mismatch(target, path, digest, size, sink)
    return sink.fetched


def mismatch(target: Path, path: str, digest: str, size: int, sink: Sink,
             cause: errors.RegistryError | None = None) -> errors.DigestMismatch:
    """Remove the file; the error names it, both digests and both sizes (and what the
    download learnt about the stored blob, if it found it corrupt)."""
    target.unlink(missing_ok=True)
    actual = sink.hasher.hexdigest()
    why = f"{cause.detail}; " if cause is not None else ""
    extra = {**(cause.extra if cause is not None else {}), "path": path, "expected": digest,
             "actual": actual, "expected_size": size, "received_size": sink.size}
    return errors.DigestMismatch(
        f"{path}: {why}downloaded {sink.size} bytes hashing to {actual}, expected {size} "
        f"bytes of {digest}; the file was removed", **extra)


def corrupt_blob(digest: str, size: int, stored: int | None) -> errors.DigestMismatch:
    """The registry's stored copy of a blob holds ``stored`` bytes (None: fewer than asked
    for), not ``size``: as the server reports it, or as a presigned store's answer shows."""
    held = "fewer bytes" if stored is None else f"{stored} bytes"
    return errors.DigestMismatch(
        f"the registry's stored copy is corrupt (its blob store holds {held}, not {size})",
        expected=digest, expected_size=size, stored_size=stored)


def is_complete(target: Path, digest: str, size: int) -> bool:
    """True if ``target`` already holds the file; a wrong full-size file is deleted."""
    if not target.is_file():
        return False
    have = target.stat().st_size
    if have == size and sha256_file(target) == digest:
        return True
    if have >= size:
        target.unlink()
    return False


def range_start(status_code: int, content_range: str | None) -> int:
    """First byte of a download answer: 0 for a full (200) answer, the start of a 206 answer's
    ``Content-Range`` (-1 if unreadable)."""
    if status_code != 206:
        return 0
    unit, _, spec = (content_range or "").partition(" ")
    start = spec.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else -1


def stored_size(status_code: int, headers: Mapping[str, str]) -> int | None:
    """The whole blob's size as a download answer declares it: the total of a 206's (or
    416's) ``Content-Range``, a 200's ``Content-Length``; None if it does not say, or if the
    body is encoded (the length is then the encoded one)."""
    if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    if status_code in (206, 416):
        total = headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = headers.get("content-length", "")
    return int(length) if status_code == 200 and length.isdigit() else None


def check_dest(dest: Path, overwrite: bool) -> None:
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise errors.Conflict(f"{dest} already exists; pass overwrite (--force) to replace it")


def prune(root: Path, keep: set[str]) -> None:
    """Remove files a previous attempt left in the partial folder that are not in the manifest."""
    for rel, file in list(iter_folder(root)):
        if rel not in keep:
            file.unlink()
    for dirpath, _dirs, _files in sorted(os.walk(root), reverse=True):
        if Path(dirpath) != root and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()


def install(partial: Path, dest: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an old ``dest`` is swapped out, then deleted."""
    check_dest(dest, overwrite)
    if not (dest.exists() or dest.is_symlink()):
        partial.rename(dest)
        return
    backup = dest.parent / f".{dest.name}.old-{secrets.token_hex(4)}"
    dest.rename(backup)
    try:
        partial.rename(dest)
    except OSError:
        backup.rename(dest)
        raise
    if backup.is_dir() and not backup.is_symlink():
        shutil.rmtree(backup)
    else:
        backup.unlink()
