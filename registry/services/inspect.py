"""Validation of an adapter's content at push, read straight from the blob store.

Only the config and the safetensors *header* are read (a few KiB): tensors are never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry import stored_json
from registry.blobs import BlobStore
from registry.errors import InvalidAdapter
from registry.lora_layout import AdapterLayout, analyze_adapter, parse_lora_config
from registry.manifest import FileEntry
from registry.safetensors_io import ADAPTER_LIMITS, Header, HeaderLimits, parse_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Inspection:
    config: dict[str, Any]
    header: Header
    layout: AdapterLayout

    @property
    def tensor_shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {n: (t.dtype, t.shape) for n, t in self.header.tensors.items()}


class _RangeReader:
    """``read(n)`` as ranged blob-store reads: only the bytes asked for are fetched."""

    def __init__(self, store: BlobStore, entry: FileEntry) -> None:
        self._store = store
        self._entry = entry
        self._pos = 0

    def read(self, n: int) -> bytes:
        end = min(self._pos + n, self._entry.size)
        if end <= self._pos:
            return b""
        data = b"".join(self._store.open(self._entry.digest, self._pos, end))
        self._pos += len(data)
        return data


def inspect_adapter(
    store: BlobStore, files: list[FileEntry], limits: HeaderLimits = ADAPTER_LIMITS
) -> Inspection:
    """Check that ``files`` form a PEFT LoRA adapter; raise InvalidAdapter otherwise.

    ``limits`` caps the safetensors header (Settings.safetensors_limits at push).
    """
    by_path = {f.path: f for f in files}
    if CONFIG_FILE not in by_path:
        raise InvalidAdapter(f"{CONFIG_FILE} is missing from the adapter files")
    if WEIGHTS_FILE not in by_path:
        hint = " (pickled .bin weights are refused; save with safe_serialization)" if (
            "adapter_model.bin" in by_path) else ""
        raise InvalidAdapter(f"{WEIGHTS_FILE} is missing from the adapter files{hint}")
    config = read_config(store, by_path[CONFIG_FILE])
    info = parse_lora_config(config)
    header = read_safetensors_header(store, by_path[WEIGHTS_FILE], limits)
    shapes = {n: (t.dtype, t.shape) for n, t in header.tensors.items()}
    layout = analyze_adapter(info, shapes)
    return Inspection(config=config, header=header, layout=layout)


def read_config(store: BlobStore, entry: FileEntry) -> dict[str, Any]:
    if entry.size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{entry.path} is larger than {MAX_CONFIG_BYTES} bytes")
    raw = b"".join(store.open(entry.digest))
    try:
        # Bounded and round-trippable: what is stored here is served in every version listing.
        config = stored_json.loads(raw)
    except stored_json.UnsafeJSON as exc:
        raise InvalidAdapter(f"{entry.path} {exc}") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{entry.path} must hold a JSON object")
    return config


def read_safetensors_header(
    store: BlobStore, entry: FileEntry, limits: HeaderLimits = ADAPTER_LIMITS
) -> Header:
    reader = _RangeReader(store, entry)
    return parse_header(reader.read, entry.size, entry.path, limits)
