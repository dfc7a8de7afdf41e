"""Safe, lazy reading of safetensors files: defensive header parsing and zero-copy tensor views.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned length
``N``, then ``N`` bytes of UTF-8 JSON (the header), then the data region. The header maps tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
region) plus an optional ``__metadata__`` object of string -> string.

:func:`parse_header` accepts exactly what the reference implementation accepts
(``SafeTensors::read_metadata`` and ``Metadata::validate`` in ``safetensors/src/tensor.rs``)
and is stricter where that is cheap and harmless:

* ``N`` is at most 100,000,000 (the reference ``MAX_HEADER_SIZE``) and ``8 + N`` fits in the file;
* the header is valid UTF-8 JSON whose top level is an object; duplicate keys (at any depth),
  ``NaN``/``Infinity`` and lone surrogates are refused (stricter: serde keeps the last duplicate);
* ``__metadata__``, when present, maps strings to strings;
* ``dtype`` is one of :data:`DTYPE_BITS`; ``shape`` is a list of non-negative integers;
* ``end - begin`` equals ``prod(shape) * bits / 8`` and that product is a whole number of bytes;
* sorted by ``(begin, end)``, the tensors tile the data region exactly: the first begins at 0,
  each begins where the previous one ends (no overlap, no hole), and the last ends at the end of
  the file (no trailing bytes).

On top of the format, :class:`HeaderLimits` caps the header length and the tensor count
(``LORAREG_MAX_SAFETENSORS_HEADER`` / ``_TENSORS`` at push). The length is refused from the
8-byte prefix, before one byte of the header is read; the tensor count is enforced while the
JSON is decoded, so at most ``max_tensors`` tensor objects are ever built. Parsing therefore
costs time and memory bounded by the limits, whatever the file claims (measured with
tracemalloc: 7.4 MiB at most at the 1 MiB / 8,192-tensor defaults; a fully decoded header of
tiny tensors takes ~12 bytes of Python objects per byte).

Reading goes through a ``read(n)`` callable and never asks for a byte past ``file_size``, so the
same code checks local files and blob-store objects (ranged reads) alike. Tensor data is only
touched through read-only ``mmap`` views of the tensor's own byte range.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import InvalidSafetensors

#: Bytes of the little-endian u64 header length that starts every file.
LEN_PREFIX = 8
#: The reference implementation's MAX_HEADER_SIZE (decimal, not MiB): no limit goes above it.
MAX_HEADER_LEN = 100_000_000
#: Default header cap for adapters. Measured: the header PEFT writes for a Llama-70B LoRA
#: (80 layers, all-linear targets, r=64, 1,120 tensors) is 153,680 bytes, Llama-405B's (1,764
#: tensors) 245,176 (tests/registry/test_safetensors_io.py rebuilds both byte for byte). 1 MiB is
#: 6.8x the 70B and 4.3x the 405B.
DEFAULT_MAX_HEADER = 1024 * 1024
#: Default tensor cap for adapters: 7.3x the 70B LoRA, 4.9x the same with DoRA (1,680 tensors).
DEFAULT_MAX_TENSORS = 8192
#: Default size of the memoryview chunks handed out by :func:`tensor_chunks`.
DEFAULT_CHUNK = 16 * 1024 * 1024
METADATA_KEY = "__metadata__"

#: Bits per element of every dtype the reference implementation defines (its ``Dtype`` enum and
#: ``Dtype::bitsize``, safetensors 0.6+). F4 and F6 pack several elements per byte.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
#: Bytes per element, for the dtypes whose elements are whole bytes (sub-byte dtypes are left
#: out on purpose: use :func:`tensor_nbytes`, which handles them).
DTYPE_SIZES: dict[str, int] = {d: b // 8 for d, b in DTYPE_BITS.items() if b % 8 == 0}

ReadFn = Callable[[int], bytes]


@dataclass(frozen=True)
class HeaderLimits:
    """How large a header :func:`parse_header` accepts.

    ``max_tensors`` of None means only the header length bounds the count (each tensor takes
    at least ~45 bytes of JSON).
    """

    max_header: int = DEFAULT_MAX_HEADER
    max_tensors: int | None = DEFAULT_MAX_TENSORS


#: What adapters get unless configured otherwise (the Settings defaults).
ADAPTER_LIMITS = HeaderLimits()
#: Only the format's own limit: for files already accepted once, or that are not adapters.
FORMAT_LIMITS = HeaderLimits(MAX_HEADER_LEN, None)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a file; ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_len: int
    file_size: int

    @property
    def data_start(self) -> int:
        """Absolute offset of the data region (``8 + header_len``)."""
        return LEN_PREFIX + self.header_len


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes taken by a tensor of ``dtype`` and ``shape``; ValueError if not whole bytes."""
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    if bits % 8:
        raise ValueError(f"{dtype}{_short(tuple(shape))} is not a whole number of bytes")
    return bits // 8


# --- header parsing -------------------------------------------------------------------------


def parse_header(
    read: ReadFn, file_size: int, name: str, limits: HeaderLimits = ADAPTER_LIMITS
) -> Header:
    """Parse and validate the header of a safetensors file of ``file_size`` bytes.

    ``read(n)`` returns the next (at most) ``n`` bytes; it is never asked for bytes beyond
    ``file_size``. Raises :class:`InvalidSafetensors` naming ``name`` and the problem.
    """
    header_len = _read_length(read, file_size, name, limits.max_header)
    raw = _read_exact(read, header_len, name)
    top = _decode_json(raw, name, limits.max_tensors)
    del raw  # the decoded objects are the larger copy; do not hold both while checking them
    metadata = _parse_metadata(top.pop(METADATA_KEY, None), name)
    _check_count(len(top), limits.max_tensors, name)
    data_start = LEN_PREFIX + header_len
    tensors = {
        key: _parse_tensor(key, value, data_start, file_size, name) for key, value in top.items()
    }
    _check_layout(list(tensors.values()), data_start, file_size, name)
    return Header(tensors=tensors, metadata=metadata, header_len=header_len, file_size=file_size)


def read_header(path: Path, limits: HeaderLimits = ADAPTER_LIMITS) -> Header:
    """Parse and validate the header of the safetensors file at ``path``."""
    with path.open("rb") as f:
        return parse_header(f.read, os.fstat(f.fileno()).st_size, str(path), limits)


def _read_length(read: ReadFn, file_size: int, name: str, max_header: int) -> int:
    if file_size < LEN_PREFIX:
        raise InvalidSafetensors(f"{name}: {file_size} bytes is too short for a safetensors file")
    header_len = int.from_bytes(_read_exact(read, LEN_PREFIX, name), "little")
    limit = min(max_header, MAX_HEADER_LEN)
    if header_len > limit:
        # Refused from the prefix alone: nothing of the claimed header is read or allocated.
        source = "the format's maximum" if limit == MAX_HEADER_LEN else (
            "LORAREG_MAX_SAFETENSORS_HEADER")
        raise InvalidSafetensors(
            f"{name}: header length {header_len} exceeds the {limit}-byte limit ({source})"
        )
    if LEN_PREFIX + header_len > file_size:
        raise InvalidSafetensors(
            f"{name}: header length {header_len} runs past the end of the {file_size}-byte file"
        )
    return header_len


def _read_exact(read: ReadFn, n: int, name: str) -> bytes:
    # Streams (blob stores, pipes) may return short reads; loop until n bytes or end of data.
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        part = read(remaining)
        if not part:
            raise InvalidSafetensors(f"{name}: file ended {remaining} bytes early in the header")
        parts.append(part[:remaining])
        remaining -= len(part)
    return b"".join(parts)


def _decode_json(raw: bytes, name: str, max_tensors: int | None) -> dict[str, Any]:
    hook = _unique_keys if max_tensors is None else _CountingHook(max_tensors, name)
    try:
        text = raw.decode("utf-8")
        top = json.loads(text, object_pairs_hook=hook, parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise InvalidSafetensors(f"{name}: header is not valid UTF-8 ({exc.reason})") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidSafetensors(f"{name}: header is not valid JSON ({exc})") from exc
    if not isinstance(top, dict):
        raise InvalidSafetensors(f"{name}: header must be a JSON object")
    return top


class _CountingHook:
    """``object_pairs_hook`` that stops the decoder once it has built too many objects.

    A valid header holds one object per tensor plus the top level and ``__metadata__``, and
    the decoder finishes inner objects first: counting them refuses a header of a million tiny
    tensors after ``max_tensors`` of them, not after building all of them.
    """

    def __init__(self, max_tensors: int, name: str) -> None:
        self._left = max_tensors + 2
        self._max, self._name = max_tensors, name

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self._left -= 1
        if self._left < 0:
            # Not a ValueError: it must not be reported as "not valid JSON".
            _check_count(self._max + 1, self._max, self._name)
        return _unique_keys(pairs)


def _check_count(count: int, max_tensors: int | None, name: str) -> None:
    if max_tensors is not None and count > max_tensors:
        raise InvalidSafetensors(
            f"{name}: header declares more than {max_tensors} tensors, the limit "
            "(LORAREG_MAX_SAFETENSORS_TENSORS)"
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_quote(key)}")
        _check_encodable(key)
        result[key] = value
    return result


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def _check_encodable(text: str) -> None:
    # JSON "\ud800" escapes decode to lone surrogates, which are not text (serde refuses them).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string {_quote(text)} holds a lone surrogate") from exc


def _parse_metadata(value: Any, name: str) -> dict[str, str]:
    if value is None:  # serde reads a missing or null __metadata__ as "no metadata"
        return {}
    if not isinstance(value, dict):
        raise InvalidSafetensors(f"{name}: {METADATA_KEY} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidSafetensors(f"{name}: {METADATA_KEY}[{_quote(key)}] is not a string")
        _encodable_or_fail(item, name)
    return dict(value)


def _encodable_or_fail(text: str, name: str) -> None:
    try:
        _check_encodable(text)
    except ValueError as exc:
        raise InvalidSafetensors(f"{name}: {exc}") from exc


def _parse_tensor(key: str, value: Any, data_start: int, file_size: int, name: str) -> TensorInfo:
    where = f"{name}: tensor {_quote(key)}"
    if not isinstance(value, dict):
        raise InvalidSafetensors(f"{where} must be an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidSafetensors(f"{where} has unknown dtype {_quote(str(dtype))}")
    dims = _parse_ints(shape, None, f"{where} shape")
    begin, end = _parse_ints(offsets, 2, f"{where} data_offsets")
    if begin > end:
        raise InvalidSafetensors(f"{where} data_offsets [{begin}, {end}] run backwards")
    if data_start + end > file_size:
        raise InvalidSafetensors(
            f"{where} data_offsets [{begin}, {end}] run past the end of the {file_size}-byte file"
        )
    _check_size(dtype, dims, end - begin, file_size, where)
    return TensorInfo(key, dtype, dims, data_start + begin, data_start + end)


def _parse_ints(value: Any, length: int | None, what: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and (length is None or len(value) == length)
    # bool is an int subclass in Python, but true/false is not a JSON integer.
    if not ok or not all(type(v) is int and v >= 0 for v in value):
        count = f"{length} " if length else ""
        raise InvalidSafetensors(f"{what} must be a list of {count}non-negative integers")
    return tuple(value)


def _check_size(dtype: str, dims: tuple[int, ...], nbytes: int, file_size: int, where: str) -> None:
    bits = _bounded_bits(dtype, dims, file_size * 8)
    if bits is None:
        raise InvalidSafetensors(
            f"{where}: {dtype}{_short(dims)} needs more bytes than the whole {file_size}-byte file"
        )
    if bits % 8:
        raise InvalidSafetensors(f"{where}: {dtype}{_short(dims)} is not a whole number of bytes")
    if bits != nbytes * 8:
        raise InvalidSafetensors(
            f"{where}: {dtype}{_short(dims)} needs {bits // 8} bytes but its offsets span {nbytes}"
        )


def _bounded_bits(dtype: str, dims: tuple[int, ...], limit: int) -> int | None:
    # Multiply step by step and give up past the limit: a hostile shape of many huge integers
    # must not make us build a gigantic product.
    if 0 in dims:
        return 0
    bits = DTYPE_BITS[dtype]
    for dim in dims:
        bits *= dim
        if bits > limit:
            return None
    return bits


def _check_layout(tensors: list[TensorInfo], data_start: int, file_size: int, name: str) -> None:
    # The reference implementation requires the sorted tensors to tile the data region exactly.
    expected, previous = data_start, None
    for info in sorted(tensors, key=lambda t: (t.start, t.end)):
        if info.start < expected and previous is not None:
            raise InvalidSafetensors(
                f"{name}: tensor {_quote(info.name)} overlaps tensor {_quote(previous.name)}"
            )
        if info.start != expected:
            raise InvalidSafetensors(
                f"{name}: {info.start - expected} bytes before tensor {_quote(info.name)} "
                "belong to no tensor"
            )
        expected, previous = info.end, info
    if expected != file_size:
        raise InvalidSafetensors(
            f"{name}: {file_size - expected} trailing bytes after the last tensor's data"
        )


def _quote(text: str, limit: int = 80) -> str:
    # Names come from untrusted files: keep error messages short and printable.
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _short(dims: tuple[int, ...], limit: int = 60) -> str:
    text = "[" + ",".join(map(str, dims)) + "]"
    return text if len(text) <= limit else text[: limit - 4] + "...]"


# --- tensor data ----------------------------------------------------------------------------


@contextmanager
def mapped_range(fileno: int, start: int, end: int) -> Iterator[memoryview]:
    """A read-only, zero-copy view of bytes ``[start, end)`` of an open file.

    Only that range is mapped. The view is released when the block exits; views sliced from it
    must be released first. Like every mmap reader (safetensors' own included), truncating the
    file while the view is in use makes the process die of SIGBUS: callers that cannot rule that
    out check the file's stat before and after.
    """
    if start == end:
        yield memoryview(b"")
        return
    base = start - start % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(fileno, end - base, access=mmap.ACCESS_READ, offset=base)
    try:
        if hasattr(mmap, "MADV_SEQUENTIAL"):  # Linux/BSD: read ahead harder on cold files
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(mapped) as whole, whole[start - base :] as view:
            yield view
    finally:
        mapped.close()


def iter_chunks(view: memoryview, chunk_size: int = DEFAULT_CHUNK) -> Iterator[memoryview]:
    """Slice ``view`` into chunks; each chunk is released when the caller asks for the next."""
    for offset in range(0, len(view), chunk_size):
        with view[offset : offset + chunk_size] as chunk:
            yield chunk


def tensor_chunks(
    path: Path, info: TensorInfo, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[memoryview]:
    """The bytes of one tensor as zero-copy chunks of an mmap (for hashing large files)."""
    with path.open("rb") as f, mapped_range(f.fileno(), info.start, info.end) as view:
        yield from iter_chunks(view, chunk_size)


def tensor_bytes(path: Path, info: TensorInfo) -> memoryview:
    """A read-only zero-copy view of one tensor's bytes.

    The mapping lives as long as the returned view (and views sliced from it).
    """
    if info.start == info.end:
        return memoryview(b"")
    with path.open("rb") as f:
        base = info.start - info.start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(f.fileno(), info.end - base, access=mmap.ACCESS_READ, offset=base)
    return memoryview(mapped)[info.start - base :]
