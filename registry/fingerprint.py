"""The canonical fingerprint of a model's base weights, format ``lorareg-fp-v1``.

This docstring is the specification: anything that follows it computes the same digest.

**Input.** The safetensors files that hold one model's weights (every shard). Each file must be
a valid safetensors file (the exact rules are in :mod:`registry.safetensors_io`). Every tensor
name appears in exactly one file and contains no control character (U+0000-U+001F, U+007F), so
no name can forge the tab and newline separators below.

**Computation.**

1. For every tensor, ``tensor_sha256`` is the lowercase hex SHA-256 of its data bytes exactly as
   stored: the file's ``data_offsets`` range. safetensors stores elements little-endian in
   C order, so these are the tensor's raw little-endian bytes, whatever the dtype.
2. Every tensor gives one line of text::

       {name}\\t{dtype}\\t{shape}\\t{tensor_sha256}\\n

   ``dtype`` is the header's dtype string (``BF16``, ``F32``, ``I8``, ...). ``shape`` is the
   dimensions in decimal, separated by commas, without spaces, in square brackets:
   ``[2048,5632]``; a scalar is ``[]``.
3. The lines are sorted by tensor name, comparing Unicode code points (the same order as
   comparing UTF-8 bytes). As names hold no character below U+0020, sorting the lines
   themselves gives the same order.
4. The fingerprint is the lowercase hex SHA-256 of the sorted lines concatenated and encoded as
   UTF-8. (A model without tensors would have the digest of the empty string.)

Only the set of (name, dtype, shape, bytes) counts: file names, how the tensors are sharded,
their order inside a file, header padding and ``__metadata__`` do not. Changing any byte of any
tensor, or a dtype, shape or name, changes the fingerprint.

A reference implementation in plain Python (it loads whole tensors; this module streams them)::

    import hashlib, json, struct

    def fingerprint(paths):
        lines = []
        for path in paths:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                header.pop("__metadata__", None)
                for name, t in header.items():
                    begin, end = t["data_offsets"]
                    f.seek(8 + n + begin)
                    digest = hashlib.sha256(f.read(end - begin)).hexdigest()
                    shape = "[" + ",".join(str(d) for d in t["shape"]) + "]"
                    lines.append(f"{name}\\t{t['dtype']}\\t{shape}\\t{digest}\\n")
        return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from registry.errors import IncompatibleBase, InvalidSafetensors, ValidationFailed
from registry.fingerprint_cache import FileKey, FingerprintCache
from registry.safetensors_io import (
    DEFAULT_CHUNK,
    DTYPE_BITS,
    Header,
    TensorInfo,
    iter_chunks,
    mapped_range,
    parse_header,
    tensor_nbytes,
)

__all__ = [
    "FINGERPRINT_FORMAT",
    "FileKey",
    "Fingerprint",
    "FingerprintCache",
    "TensorEntry",
    "compare",
    "ensure_matches",
    "fingerprint_digest",
    "fingerprint_dir",
    "fingerprint_files",
    "first_difference",
    "format_shape",
    "pack_manifest",
    "unpack_manifest",
    "weight_files",
]

FINGERPRINT_FORMAT = "lorareg-fp-v1"
INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SHA256_HEX = re.compile("[0-9a-f]{64}")
# How often the caller's progress callback hears from us while hashing runs.
_PROGRESS_INTERVAL = 0.25

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TensorEntry:
    """One line of the fingerprint: a tensor's name, dtype, shape and data sha256."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def __post_init__(self) -> None:
        # Callers build entries from JSON lists; a list shape would compare unequal to a tuple.
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)

    def line(self) -> str:
        """The tensor's canonical line (step 2 of the specification)."""
        return f"{self.name}\t{self.dtype}\t{format_shape(self.shape)}\t{self.sha256}\n"


@dataclass(frozen=True)
class Fingerprint:
    """A model's fingerprint, the tensors it covers (sorted by name) and their total bytes."""

    digest: str
    tensors: list[TensorEntry]
    total_bytes: int


def format_shape(shape: Sequence[int]) -> str:
    """``[2048,5632]``: the shape as written in a canonical line."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def fingerprint_digest(entries: Iterable[TensorEntry]) -> str:
    """The fingerprint of a set of tensor entries (steps 2-4 of the specification)."""
    digest = hashlib.sha256()
    for entry in _sorted_unique(entries):
        digest.update(entry.line().encode("utf-8"))
    return digest.hexdigest()


def _sorted_unique(entries: Iterable[TensorEntry]) -> list[TensorEntry]:
    ordered = sorted(entries, key=lambda e: e.name)
    for before, after in itertools.pairwise(ordered):
        if before.name == after.name:
            raise ValidationFailed(f"tensor {before.name[:80]!r} is listed twice")
    for entry in ordered:
        if _CONTROL.search(entry.name):  # it could forge the separators of the canonical lines
            raise ValidationFailed(f"tensor name {entry.name[:80]!r} holds a control character")
    return ordered


# --- fingerprinting files -------------------------------------------------------------------


@dataclass
class _Shard:
    path: Path
    key: FileKey
    header: Header | None = None  # parsed when the cache does not know the file
    entries: list[TensorEntry] | None = None


def fingerprint_files(
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    cache: FingerprintCache | None = None,
    progress: Progress | None = None,
) -> Fingerprint:
    """Fingerprint the model whose weights are the safetensors files ``paths``.

    Every header is validated before any tensor is hashed, so a bad file fails fast. Tensors
    are then hashed on ``workers`` threads (default: one per usable CPU) straight from mmap
    views. ``cache`` skips files whose identity (:class:`FileKey`) it has seen. ``progress``
    is called on the caller's thread with ``(bytes_hashed, bytes_to_hash)``, cached files
    excluded, and at least once at the end.
    """
    if not paths:
        raise InvalidSafetensors("no safetensors files to fingerprint")
    shards = _load_shards(paths, cache)
    _check_names(shards)
    fresh = [s for s in shards if s.entries is None]
    _hash_shards(fresh, _worker_count(workers), progress)
    if cache is not None and fresh:
        cache.put_many({s.key: pack_manifest(s.entries or []) for s in fresh})
    entries = [e for s in shards for e in s.entries or []]
    ordered = _sorted_unique(entries)
    total = sum(e.nbytes for e in ordered)
    return Fingerprint(digest=fingerprint_digest(ordered), tensors=ordered, total_bytes=total)


def fingerprint_dir(
    folder: Path,
    *,
    workers: int | None = None,
    cache: FingerprintCache | None = None,
    progress: Progress | None = None,
) -> Fingerprint:
    """Fingerprint the model in ``folder`` (its files are chosen by :func:`weight_files`)."""
    files = weight_files(folder)
    return fingerprint_files(files, workers=workers, cache=cache, progress=progress)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the model in ``folder``.

    When ``model.safetensors.index.json`` exists, exactly the files its ``weight_map`` names
    (repositories may also ship e.g. a ``consolidated.safetensors`` copy of the same weights);
    otherwise every ``*.safetensors`` file at the top level.
    """
    index = folder / INDEX_FILE
    if index.is_file():
        return _index_files(index, folder)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise InvalidSafetensors(f"{folder}: no *.safetensors files")
    return files


def _index_files(index: Path, folder: Path) -> list[Path]:
    weight_map = _read_index(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidSafetensors(f"{index}: weight_map must be a non-empty object")
    names = sorted({str(v) for v in weight_map.values()})
    for name in names:
        # The index comes with downloaded weights: it must not point outside the folder.
        if Path(name).name != name or name in ("", ".", ".."):
            raise InvalidSafetensors(f"{index}: {name!r} is not a file name in {folder}")
        if not (folder / name).is_file():
            raise InvalidSafetensors(f"{index}: names {name!r}, which is not in {folder}")
    return [folder / name for name in names]


def _read_index(index: Path) -> dict[str, Any]:
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise InvalidSafetensors(f"{index}: larger than {MAX_INDEX_BYTES} bytes")
    try:
        doc = json.loads(index.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidSafetensors(f"{index}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InvalidSafetensors(f"{index}: must hold a JSON object")
    return doc


def _load_shards(paths: Sequence[Path], cache: FingerprintCache | None) -> list[_Shard]:
    shards = [_Shard(path, FileKey.of(os.path.realpath(path), _stat(path))) for path in paths]
    known = cache.get_many([s.key for s in shards]) if cache is not None else {}
    for shard in shards:
        shard.entries = _unpack_cached(known.get(shard.key))
        if shard.entries is None:
            _parse_shard(shard)
    return shards


def _unpack_cached(packed: bytes | None) -> list[TensorEntry] | None:
    if packed is None:
        return None
    try:
        return unpack_manifest(packed)
    except ValidationFailed:  # a damaged cache row is a miss; this run's put replaces it
        logger.warning("ignoring a damaged fingerprint cache entry")
        return None


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise InvalidSafetensors(f"{path}: cannot be read ({exc.strerror})") from exc


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InvalidSafetensors(f"{path}: cannot be read ({exc.strerror})") from exc


def _parse_shard(shard: _Shard) -> None:
    with _open(shard.path) as f:
        # Key the shard on the stat of the descriptor the header is read from, so hashing can
        # later prove it reads the same file version as the one validated here.
        st = os.fstat(f.fileno())
        shard.key = FileKey.of(shard.key.path, st)
        shard.header = parse_header(f.read, st.st_size, str(shard.path))


def _names(shard: _Shard) -> Iterator[str]:
    if shard.entries is not None:
        return (e.name for e in shard.entries)
    assert shard.header is not None
    return iter(shard.header.tensors)


def _check_names(shards: Sequence[_Shard]) -> None:
    seen: dict[str, Path] = {}
    for shard in shards:
        for name in _names(shard):
            if _CONTROL.search(name):
                raise InvalidSafetensors(
                    f"{shard.path}: tensor name {name[:80]!r} holds a control character, "
                    "which the fingerprint format cannot represent"
                )
            if name in seen:
                raise InvalidSafetensors(
                    f"tensor {name[:80]!r} appears in both {seen[name]} and {shard.path}"
                )
            seen[name] = shard.path


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may run on, not the machine's
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class _Counter:
    """Bytes hashed so far, added to by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _hash_shards(shards: Sequence[_Shard], workers: int, progress: Progress | None) -> None:
    tasks = [(s, info) for s in shards if s.header for info in s.header.tensors.values()]
    # Largest first: the pool then ends with small tensors and no thread is left alone at
    # the end with one big one.
    tasks.sort(key=lambda task: task[1].nbytes, reverse=True)
    total, counter = sum(info.nbytes for _, info in tasks), _Counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fingerprint") as pool:
        futures = [pool.submit(_hash_tensor, s, info, counter) for s, info in tasks]
        try:
            _wait(futures, counter, total, progress)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    digests = {(id(s), info.name): f.result() for (s, info), f in zip(tasks, futures, strict=True)}
    for shard in shards:
        assert shard.header is not None
        shard.entries = [
            TensorEntry(t.name, t.dtype, t.shape, digests[id(shard), t.name])
            for t in shard.header.tensors.values()
        ]


def _wait(
    futures: list[Future[str]], counter: _Counter, total: int, progress: Progress | None
) -> None:
    pending: set[Future[str]] = set(futures)
    while pending:
        done, pending = wait(pending, timeout=_PROGRESS_INTERVAL, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # re-raise the first failure now, not after every tensor is hashed
        if progress is not None:
            progress(counter.value, total)
    if progress is not None and not futures:
        progress(0, 0)


def _hash_tensor(shard: _Shard, info: TensorInfo, counter: _Counter) -> str:
    digest = hashlib.sha256()
    with _open(shard.path) as f:
        _ensure_unchanged(f.fileno(), shard)
        with mapped_range(f.fileno(), info.start, info.end) as view:
            # hashlib releases the GIL while it hashes a large buffer: threads run in parallel.
            for chunk in iter_chunks(view, DEFAULT_CHUNK):
                digest.update(chunk)
                counter.add(len(chunk))
        _ensure_unchanged(f.fileno(), shard)
    return digest.hexdigest()


def _ensure_unchanged(fileno: int, shard: _Shard) -> None:
    if FileKey.of(shard.key.path, os.fstat(fileno)) != shard.key:
        raise InvalidSafetensors(f"{shard.path}: the file changed while it was fingerprinted")


# --- comparing ------------------------------------------------------------------------------


def first_difference(
    expected: Sequence[TensorEntry], actual: Sequence[TensorEntry]
) -> tuple[str, str] | None:
    """``(tensor name, description)`` of the first differing tensor by sorted name, or None."""
    want, have = {e.name: e for e in expected}, {e.name: e for e in actual}
    for name in sorted(want.keys() | have.keys()):
        description = _describe(name, want.get(name), have.get(name))
        if description is not None:
            return name, description
    return None


def compare(expected: Sequence[TensorEntry], actual: Sequence[TensorEntry]) -> str | None:
    """A human description of the first differing tensor by sorted name, or None if equal."""
    found = first_difference(expected, actual)
    return found[1] if found else None


def _describe(name: str, want: TensorEntry | None, have: TensorEntry | None) -> str | None:
    if have is None:
        assert want is not None
        return f"tensor {name!r} is missing (expected {_kind(want)})"
    if want is None:
        return f"tensor {name!r} is not in the expected base ({_kind(have)})"
    if want.dtype != have.dtype:
        return f"tensor {name!r} has dtype {have.dtype}, expected {want.dtype}"
    if want.shape != have.shape:
        return (
            f"tensor {name!r} has shape {format_shape(have.shape)}, "
            f"expected {format_shape(want.shape)}"
        )
    if want.sha256 != have.sha256:
        return f"tensor {name!r} has different bytes (sha256 {have.sha256}, expected {want.sha256})"
    return None


def _kind(entry: TensorEntry) -> str:
    return f"{entry.dtype}{format_shape(entry.shape)}"


def ensure_matches(
    expected_digest: str,
    expected_entries: Sequence[TensorEntry] | None,
    actual: Fingerprint,
    *,
    expected_revision: str | None = None,
    actual_label: str = "",
) -> None:
    """Raise :class:`IncompatibleBase` unless ``actual`` has the expected fingerprint.

    The error names both fingerprints and, when the expected tensor manifest is known, the
    first differing tensor (``first_difference``/``differing_tensor`` extra fields).
    """
    if actual.digest == expected_digest:
        return
    tensor, description = _explain(expected_entries, actual)
    where = f" at {actual_label}" if actual_label else ""
    revision = f" (revision {expected_revision})" if expected_revision else ""
    extra: dict[str, Any] = {
        "expected_fingerprint": expected_digest,
        "actual_fingerprint": actual.digest,
        "first_difference": description,
        "differing_tensor": tensor,
    }
    if expected_revision:
        extra["expected_revision"] = expected_revision
    raise IncompatibleBase(
        f"base weights{where} have fingerprint {actual.digest}, but the registered base"
        f"{revision} has {expected_digest}: {description}",
        **extra,
    )


def _explain(
    expected_entries: Sequence[TensorEntry] | None, actual: Fingerprint
) -> tuple[str | None, str]:
    if expected_entries is None:
        return None, "no tensor manifest is recorded to name the differing tensor"
    found = first_difference(expected_entries, actual.tensors)
    if found is None:
        return None, "all tensors match the recorded manifest, so the recorded digest is wrong"
    return found


# --- manifests ------------------------------------------------------------------------------


def pack_manifest(entries: Iterable[TensorEntry]) -> bytes:
    """zlib-compressed canonical JSON of ``entries`` (sorted by name), for the database."""
    rows = [[e.name, e.dtype, list(e.shape), e.sha256] for e in _sorted_unique(entries)]
    doc = {"format": FINGERPRINT_FORMAT, "tensors": rows}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return zlib.compress(text.encode("utf-8"), 9)


def unpack_manifest(data: bytes) -> list[TensorEntry]:
    """The entries of a :func:`pack_manifest` blob; ValidationFailed if it is not one."""
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, MAX_MANIFEST_BYTES)
        if inflater.unconsumed_tail:  # refuse zip bombs rather than inflate them
            raise ValidationFailed(f"tensor manifest inflates past {MAX_MANIFEST_BYTES} bytes")
        doc = json.loads(raw.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationFailed(f"tensor manifest is not zlib-compressed JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FINGERPRINT_FORMAT:
        raise ValidationFailed(f"tensor manifest is not in the {FINGERPRINT_FORMAT} format")
    rows = doc.get("tensors")
    if not isinstance(rows, list):
        raise ValidationFailed("tensor manifest has no tensors list")
    return _sorted_unique(_entry(row) for row in rows)


def _entry(row: Any) -> TensorEntry:
    if (
        isinstance(row, list)
        and len(row) == 4
        and isinstance(row[0], str)
        and row[1] in DTYPE_BITS
        and isinstance(row[2], list)
        and all(type(d) is int and d >= 0 for d in row[2])
        and isinstance(row[3], str)
        and _SHA256_HEX.fullmatch(row[3])
    ):
        return TensorEntry(row[0], row[1], tuple(row[2]), row[3])
    raise ValidationFailed(f"tensor manifest has a malformed entry: {str(row)[:200]}")
