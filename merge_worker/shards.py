"""Low-level safetensors shard I/O for the streaming merge.

* :func:`read_shard` parses a shard's header into byte ranges (the tensors must tile the data
  area exactly, as the format requires), keeping the header bytes verbatim so an output shard
  with the same tensors can reuse it.
* :class:`ShardReader` gives zero-copy views of a shard's tensors through a private read-only
  use of a memory mapping, and drops ranges from the process's resident set once used (the page
  cache keeps them), so memory stays bounded however large the shard.
* :class:`Writer` writes on a background thread, so disk writes overlap the maths; a fixed set of
  reusable byte slots bounds memory and avoids fresh allocations (and page faults) per tensor;
  kernel-side copies need no slot.

The safetensors package has no API for byte offsets or incremental writing, hence this module;
the header format is 8 bytes of little-endian length, a JSON object, then the raw data.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from registry.errors import InvalidSafetensors

MAX_HEADER = 100 << 20
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Shard:
    name: str
    path: Path
    header: bytes  # the 8-byte length and the JSON header, verbatim
    entries: tuple[Entry, ...]  # in file order

    @property
    def data_size(self) -> int:
        return self.entries[-1].end - len(self.header) if self.entries else 0


def read_shard(path: Path) -> Shard:
    """Parse a safetensors header; its tensors must tile the data area exactly."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise InvalidSafetensors(f"{path.name}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER:
            raise InvalidSafetensors(f"{path.name}: header of {length} bytes is too large")
        raw = f.read(length)
    data_start = 8 + length
    try:
        header = json.loads(raw)
        entries = sorted(
            (Entry(k, v["dtype"], tuple(v["shape"]), data_start + v["data_offsets"][0],
                   data_start + v["data_offsets"][1])
             for k, v in header.items() if k != "__metadata__"),
            key=lambda e: e.start,
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise InvalidSafetensors(f"{path.name}: unreadable safetensors header ({exc})") from exc
    _check_tiling(path, data_start, entries)
    return Shard(path.name, path, prefix + raw, tuple(entries))


def _check_tiling(path: Path, data_start: int, entries: list[Entry]) -> None:
    position = data_start
    for e in entries:
        if e.dtype not in DTYPES:
            raise InvalidSafetensors(f"{path.name}: tensor {e.name} has unknown dtype {e.dtype}")
        if e.start != position or e.nbytes != math.prod(e.shape) * _itemsize(e.dtype):
            raise InvalidSafetensors(f"{path.name}: tensor {e.name} has bad data offsets")
        position = e.end
    if position != path.stat().st_size:
        raise InvalidSafetensors(f"{path.name}: file size does not match its header")


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


class ShardReader:
    """Views of one shard's bytes; never write through them."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._fd = os.open(shard.path, os.O_RDONLY)
        # ACCESS_COPY: a private mapping is writable as far as Python's buffer protocol is
        # concerned (torch.frombuffer wants that), yet reads share the page cache.
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)

    def tensor(self, entry: Entry) -> torch.Tensor:
        dtype = DTYPES[entry.dtype]
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        raw = torch.frombuffer(self._map, dtype=torch.uint8, count=entry.nbytes,
                               offset=entry.start)
        if entry.start % raw.new_empty((), dtype=dtype).element_size():
            raw = raw.clone()  # an unaligned tensor cannot be viewed as its dtype in place
        return raw.view(dtype).view(entry.shape)

    def copy_to(self, dst: int, start: int, end: int) -> None:
        """Copy ``[start, end)`` to the same offsets of ``dst``, inside the kernel if it can."""
        try:
            while start < end:
                count = os.copy_file_range(self._fd, dst, end - start, start, start)
                if count <= 0:
                    break
                start += count
        except OSError:  # e.g. EXDEV or a file system without copy_file_range
            pass
        if start < end:
            write_all_at(dst, memoryview(self._map)[start:end], start)

    def release(self, start: int, end: int) -> None:
        """Drop ``[start, end)`` from this process's memory; a later read re-reads the file."""
        aligned = start - start % mmap.PAGESIZE
        if end > aligned:
            self._map.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view is still alive; unmapped when collected
            self._map.close()
        os.close(self._fd)


def bytes_of(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous tensor, without copying."""
    if tensor.numel() == 0:
        return memoryview(b"")
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy().data).cast("B")


def write_all_at(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        count = os.pwrite(fd, view, offset)
        view, offset = view[count:], offset + count


class Writer:
    """Runs write jobs in order on one background thread.

    A job may hold one of ``slots`` reusable byte buffers (acquired with :meth:`slot`) until it
    has run, so at most ``slots`` tensors are in flight; jobs that need no buffer (kernel-side
    copies) take none and never wait. Use as a context manager: leaving it
    waits for every queued job and re-raises the first write error.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(slots):
            self._free.put(torch.empty(slot_bytes, dtype=torch.uint8))
        self._jobs: queue.Queue[tuple[Callable[[], object], torch.Tensor | None] | None] = (
            queue.Queue())
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="merge-writer", daemon=True)
        self._thread.start()

    def slot(self) -> torch.Tensor:
        """A free byte buffer (blocks while every slot is in flight)."""
        self._raise_error()
        return self._free.get()

    def submit(self, slot: torch.Tensor | None, job: Callable[[], object]) -> None:
        """Run ``job`` after every earlier job, then give ``slot`` (if any) back."""
        self._jobs.put((job, slot))

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._abort = kind is not None  # the main thread failed: skip what is still queued
        self._jobs.put(None)
        self._thread.join()
        if kind is None:
            self._raise_error()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, slot = item
            try:
                if self._error is None and not self._abort:
                    job()
            except BaseException as exc:  # handed to the main thread
                self._error = exc
            finally:
                if slot is not None:
                    self._free.put(slot)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
