"""Streaming merge of a PEFT LoRA adapter into safetensors base weights.

Spec
====

Input: a base folder (``model.safetensors``, or shards listed by ``model.safetensors.index.json``,
plus config/tokenizer files) and a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``). Output: a folder that ``AutoModelForCausalLM.from_pretrained``
loads, holding the tensors ``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` holds,
bit for bit (DoRA: the same operations, compared to within 1e-6 relative in tests).

Supported: plain LoRA, rsLoRA, ``rank_pattern``/``alpha_pattern``, ``nn.Linear``, transformers
``Conv1D`` (``fan_in_fan_out``), ``nn.Embedding``, DoRA (linear, Conv1D, embedding), ``lora_bias``,
``modules_to_save`` and saved biases (``bias="all"|"lora_only"``). Refused before anything is
written (:class:`~registry.errors.InvalidAdapter`): other ``peft_type`` values, layer_replication,
target_parameters, other LoRA variants, base-rewriting initialisations (PiSSA, OLoRA, ...),
unknown tensor keys, and quantized bases (``quantization_config`` in config.json, or a targeted
tensor that is not F16/BF16/F32/F64). Shape mismatches raise
:class:`~registry.errors.IncompatibleBase`.

Order of operations (PEFT 0.21, ``peft/tuners/lora/layer.py`` and ``variants.py``)
----------------------------------------------------------------------------------
PeftModel.from_pretrained keeps adapter weights in float32 (``autocast_adapter_dtype=True``
upcasts fp16/bf16/fp8 adapter weights; a float64 base keeps float64), so ``get_delta_weight``
never takes its fp16/bf16-on-CPU cast branch. With ``W`` the base tensor in its own dtype, ``A``,
``B``, ``m`` (magnitude), ``b`` (LoRA bias) in that compute dtype and ``s`` = alpha / r
(alpha / sqrt(r) with rsLoRA), per tensor:

1. replacement: ``W = adapter_tensor.to(W.dtype)`` (``load_state_dict`` copies into the base
   parameter) -- modules_to_save copies, saved biases, a saved embedding ``base_layer.weight``;
2. linear / Conv1D: ``delta = transpose(B @ A, fan_in_fan_out) * s``; ``W += delta`` in place:
   the add runs in float32 and rounds once to ``W.dtype``;
3. embedding: ``delta = (B @ A).T * s``; ``W += delta.to(W.dtype)`` (rounded before the add);
4. DoRA, linear: ``n = norm(transpose(W, fifo) + 1 * transpose(delta, fifo), dim=1)``,
   ``W = (transpose((m / n).view(-1, 1), fifo) * (W + delta)).to(W.dtype)``;
   embedding: ``n = norm(W.T + 1 * delta.T, dim=1)``, ``W = ((m / n).view(1, -1) * (W + delta))``
   ``.to(W.dtype)``;
5. LoRA bias: ``bias += b * s`` (in place, float32 add, as in step 2).

Every output tensor must be finite (else :class:`~registry.errors.ValidationFailed` naming it).

Streaming: merged tensors keep name, dtype and shape, so each output shard has the base shard's
exact header and tensor offsets. The header is copied, then tensors are written in offset order,
one at a time: memory stays near one tensor (untouched tensors go through a fixed-size buffer)
plus the adapter. Shard file names, the tensor->file map and the index are kept; every other
non-weight file is copied. Everything is written into a hidden sibling folder renamed to
``out_dir`` at the end, so ``out_dir`` is never half-written (an existing non-empty ``out_dir``
is refused).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from registry.compat import ensure_compatible_shapes, unmergeable_targets
from registry.errors import (
    Conflict,
    IncompatibleBase,
    InvalidAdapter,
    InvalidSafetensors,
    ValidationFailed,
)
from registry.lora_layout import (
    AdapterLayout,
    LoraModule,
    analyze_adapter,
    parse_lora_config,
    unsupported_features,
)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
COPY_CHUNK = 64 << 20
MAX_HEADER = 100 << 20
# Weights in other formats would be stale (unmerged) copies: never carried over.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json",
                   "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx", ".*")

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
FINITE_CHECKED = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class MergeCancelled(Exception):
    """should_cancel() returned True; nothing was left behind."""


@dataclass(frozen=True)
class OutputFile:
    name: str
    size: int


@dataclass(frozen=True)
class MergeResult:
    files: tuple[OutputFile, ...]
    tensors_merged: int
    tensors_replaced: int


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


@dataclass(frozen=True)
class _Shard:
    name: str
    path: Path
    header: bytes  # the 8-byte length and the JSON header, verbatim
    entries: tuple[_Entry, ...]  # in file order

    @property
    def data_size(self) -> int:
        return self.entries[-1].end - len(self.header) if self.entries else 0


@dataclass(frozen=True)
class _Plan:
    layout: AdapterLayout
    shards: tuple[_Shard, ...]
    index: dict[str, Any] | None


def merge_adapter(
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> MergeResult:
    """Merge the adapter in ``adapter_dir`` into the base in ``base_dir``, writing ``out_dir``
    (see the module docstring for the exact spec)."""
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    plan = _prepare(base_dir, adapter_dir, out_dir)
    adapter = load_file(adapter_dir / ADAPTER_WEIGHTS)
    merger = _Merger(plan.layout, adapter)
    with _staging(out_dir) as tmp:
        _write_shards(plan, merger, tmp, progress or _no_progress, should_cancel or _never)
        _copy_other_files(base_dir, tmp, {s.name for s in plan.shards})
        if plan.index is not None:
            _write_index(plan, tmp)
    if progress:
        progress(1.0, "done")
    files = tuple(OutputFile(p.name, p.stat().st_size) for p in sorted(out_dir.iterdir())
                  if p.is_file())
    return MergeResult(files, merger.merged, merger.replaced)


def _no_progress(fraction: float, message: str) -> None:
    return None


def _never() -> bool:
    return False


# --- preparation: every refusal happens here, before any output exists ----------------------


def _prepare(base_dir: Path, adapter_dir: Path, out_dir: Path) -> _Plan:
    layout = _read_adapter_layout(adapter_dir)
    _refuse_quantized_config(base_dir)
    shards, index = _read_base(base_dir)
    base_tensors = {e.name: (e.dtype, e.shape) for s in shards for e in s.entries}
    ensure_compatible_shapes(layout, base_tensors)
    unmergeable = unmergeable_targets(layout, base_tensors)
    if unmergeable:
        raise InvalidAdapter("quantized bases cannot be merged into: " + "; ".join(unmergeable),
                             problems=unmergeable)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise Conflict(f"output folder {out_dir} already exists and is not empty")
    return _Plan(layout, shards, index)


def _read_adapter_layout(adapter_dir: Path) -> AdapterLayout:
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidAdapter(f"{adapter_dir} needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        raw = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAdapter(f"{ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    info = parse_lora_config(raw)
    unsupported = unsupported_features(info)
    if unsupported:
        raise InvalidAdapter("unsupported adapter features: " + "; ".join(unsupported),
                             problems=unsupported)
    shard = _read_shard(weights_path)
    return analyze_adapter(info, {e.name: (e.dtype, e.shape) for e in shard.entries})


def _refuse_quantized_config(base_dir: Path) -> None:
    config_path = base_dir / "config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise IncompatibleBase(f"base config.json is not valid JSON: {exc}") from exc
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
        raise InvalidAdapter(f"the base is quantized ({method}); merge into the unquantized base")


def _read_base(base_dir: Path) -> tuple[tuple[_Shard, ...], dict[str, Any] | None]:
    index_path = base_dir / INDEX_NAME
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise IncompatibleBase(f"{INDEX_NAME} has no weight_map")
        names = list(dict.fromkeys(str(v) for v in weight_map.values()))
        shards = tuple(_read_shard(_inside(base_dir, n)) for n in names)
        _check_index(weight_map, shards)
        return shards, index
    if (base_dir / SINGLE_NAME).is_file():
        return (_read_shard(base_dir / SINGLE_NAME),), None
    raise IncompatibleBase(f"{base_dir} has neither {SINGLE_NAME} nor {INDEX_NAME}")


def _inside(folder: Path, name: str) -> Path:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise IncompatibleBase(f"{INDEX_NAME} names a file outside the folder: {name!r}")
    return folder / name


def _check_index(weight_map: Mapping[str, Any], shards: tuple[_Shard, ...]) -> None:
    actual = {e.name: s.name for s in shards for e in s.entries}
    if actual != {k: str(v) for k, v in weight_map.items()}:
        raise IncompatibleBase(f"{INDEX_NAME} does not match the tensors in its shards")


def _read_shard(path: Path) -> _Shard:
    """Parse a safetensors header; its tensors must tile the data area exactly."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise InvalidSafetensors(f"{path.name}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER:
            raise InvalidSafetensors(f"{path.name}: header of {length} bytes is too large")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        entries = sorted(
            (_Entry(k, v["dtype"], tuple(v["shape"]), 8 + length + v["data_offsets"][0],
                    8 + length + v["data_offsets"][1])
             for k, v in header.items() if k != "__metadata__"),
            key=lambda e: e.start,
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise InvalidSafetensors(f"{path.name}: unreadable safetensors header ({exc})") from exc
    _check_tiling(path, 8 + length, entries)
    return _Shard(path.name, path, prefix + raw, tuple(entries))


def _check_tiling(path: Path, data_start: int, entries: list[_Entry]) -> None:
    position = data_start
    for e in entries:
        if e.start != position or e.end - e.start != _nbytes(e):
            raise InvalidSafetensors(f"{path.name}: tensor {e.name} has bad data offsets")
        position = e.end
    if position != path.stat().st_size:
        raise InvalidSafetensors(f"{path.name}: file size does not match its header")


def _nbytes(e: _Entry) -> int:
    count = 1
    for dim in e.shape:
        count *= dim
    size = torch.empty((), dtype=DTYPES[e.dtype]).element_size() if e.dtype in DTYPES else -1
    return count * size if size > 0 else -1


# --- the tensor maths ----------------------------------------------------------------------


class _Merger:
    """Builds each output tensor exactly as PEFT's load + merge_and_unload would."""

    def __init__(self, layout: AdapterLayout, adapter: Mapping[str, torch.Tensor]) -> None:
        self.adapter = adapter
        self.weights = {m.base_weight: m for m in layout.modules}
        self.biases = {m.base_bias: m for m in layout.modules if m.bias_key}
        self.replacements = {r.base_name: r.key for r in layout.replacements}
        self.merged = 0
        self.replaced = 0

    def touches(self, name: str) -> bool:
        return name in self.weights or name in self.biases or name in self.replacements

    def needs_base(self, name: str) -> bool:
        return name not in self.replacements

    def build(self, name: str, dtype: torch.dtype, base: torch.Tensor | None) -> torch.Tensor:
        """The output tensor ``name`` (of ``dtype``); ``base`` is None when it is replaced."""
        if name in self.replacements:
            weight = self.adapter[self.replacements[name]].to(dtype)
            self.replaced += 1
        else:
            assert base is not None
            weight = base
        if name in self.weights:
            weight = self._merge_weight(weight, self.weights[name])
            self.merged += 1
        if name in self.biases:
            module = self.biases[name]
            weight += self._factor(module.bias_key, weight) * module.scaling
            self.merged += 1
        return weight

    def _factor(self, key: str | None, weight: torch.Tensor) -> torch.Tensor:
        assert key is not None
        compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return self.adapter[key].to(compute)

    def _merge_weight(self, weight: torch.Tensor, m: LoraModule) -> torch.Tensor:
        a, b = self._factor(m.a_key, weight), self._factor(m.b_key, weight)
        embedding = m.kind == "embedding"
        fifo = m.kind == "conv1d"
        delta = _transpose(b @ a, embedding or fifo) * m.scaling
        if m.magnitude_key is not None:
            magnitude = self._factor(m.magnitude_key, weight)
            if embedding:
                return _dora_embedding(weight, delta, magnitude)
            return _dora_linear(weight, delta, magnitude, fifo)
        if embedding:
            weight += delta.to(weight.dtype)
        else:
            weight += delta
        return weight


def _transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


def _weight_norm(weight: torch.Tensor, lora_weight: torch.Tensor, fifo: bool) -> torch.Tensor:
    # DoraLinearLayer.get_weight_norm with scaling=1
    weight = _transpose(weight, fifo)
    weight = weight + 1 * lora_weight
    norm: torch.Tensor = torch.linalg.norm(weight, dim=1)
    return norm.to(weight.dtype)


def _dora_linear(w: torch.Tensor, delta: torch.Tensor, mag: torch.Tensor,
                 fifo: bool) -> torch.Tensor:
    weight_norm = _weight_norm(w, _transpose(delta, fifo), fifo)
    dora_factor = _transpose((mag / weight_norm).view(-1, 1), fifo)
    return (dora_factor * (w + delta)).to(w.dtype)


def _dora_embedding(w: torch.Tensor, delta: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    weight_norm = _weight_norm(w, delta.T, True)
    dora_factor = (mag / weight_norm).view(1, -1)
    return (dora_factor * (w + delta)).to(w.dtype)


# --- output --------------------------------------------------------------------------------


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder, renamed to ``out_dir`` on success and removed on failure."""
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


class _Progress:
    def __init__(self, plan: _Plan, report: ProgressFn, cancel: CancelFn) -> None:
        self.total = max(1, sum(s.data_size for s in plan.shards))
        self.done = 0
        self.report = report
        self.cancel = cancel

    def step(self, entry: _Entry, shard: str) -> None:
        if self.cancel():
            raise MergeCancelled(f"merge cancelled before {entry.name}")
        self.report(self.done / self.total, f"{shard}: {entry.name}")
        self.done += entry.end - entry.start


def _write_shards(plan: _Plan, merger: _Merger, tmp: Path, report: ProgressFn,
                  cancel: CancelFn) -> None:
    progress = _Progress(plan, report, cancel)
    buffer = torch.empty(COPY_CHUNK, dtype=torch.uint8)
    for shard in plan.shards:
        src = os.open(shard.path, os.O_RDONLY)
        dst = os.open(tmp / shard.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(dst, memoryview(shard.header))
            for entry in shard.entries:
                progress.step(entry, shard.name)
                if merger.touches(entry.name):
                    _write_merged(src, dst, entry, merger)
                else:
                    _copy_checked(src, dst, entry, buffer)
        finally:
            os.close(src)
            os.close(dst)


def _write_merged(src: int, dst: int, entry: _Entry, merger: _Merger) -> None:
    base = _read_tensor(src, entry) if merger.needs_base(entry.name) else None
    tensor = merger.build(entry.name, DTYPES[entry.dtype], base).contiguous()
    _ensure_finite(entry.name, tensor)
    _write_all(dst, _bytes_of(tensor))


def _read_tensor(fd: int, entry: _Entry) -> torch.Tensor:
    tensor = torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    _read_exact(fd, _bytes_of(tensor), entry.start)
    return tensor


def _copy_checked(src: int, dst: int, entry: _Entry, buffer: torch.Tensor) -> None:
    """Copy an untouched tensor through ``buffer``, checking it is finite on the way."""
    dtype = DTYPES.get(entry.dtype)
    step = COPY_CHUNK - COPY_CHUNK % 8
    for offset in range(entry.start, entry.end, step):
        size = min(step, entry.end - offset)
        chunk = _bytes_of(buffer)[:size]
        _read_exact(src, chunk, offset)
        if dtype in FINITE_CHECKED:
            _ensure_finite(entry.name, buffer[:size].view(dtype))
        _write_all(dst, chunk)


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    if tensor.numel() == 0:
        return memoryview(b"")
    array = tensor.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array.data).cast("B")


def _read_exact(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        count = os.preadv(fd, [view], offset)
        if count <= 0:
            raise InvalidSafetensors("base shard ended early")
        view, offset = view[count:], offset + count


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view):]


def _ensure_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype in FINITE_CHECKED and not bool(torch.isfinite(tensor).all()):
        raise ValidationFailed(f"merged tensor {name} has NaN or infinite values; the adapter "
                               "(or the base) is broken", tensor=name)


def _copy_other_files(base_dir: Path, tmp: Path, shard_names: set[str]) -> None:
    ignore = shutil.ignore_patterns(*WEIGHT_PATTERNS)
    skipped = ignore(str(base_dir), [p.name for p in base_dir.iterdir()])
    for path in sorted(base_dir.iterdir()):
        if path.name in skipped or path.name in shard_names:
            continue
        if path.is_dir():
            shutil.copytree(path, tmp / path.name, ignore=ignore)
        else:
            shutil.copy2(path, tmp / path.name)


def _write_index(plan: _Plan, tmp: Path) -> None:
    assert plan.index is not None
    index = dict(plan.index)
    metadata = dict(index.get("metadata") or {})
    metadata["total_size"] = sum(e.end - e.start for s in plan.shards for e in s.entries)
    index["metadata"] = metadata
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=False) + "\n")
