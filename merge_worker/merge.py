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

Faster, same bits (:mod:`merge_worker.lora_math`): for plain linear/Conv1D modules ``B @ A``,
``* s`` and the add run by cache-sized blocks of rows of ``B @ A``, in reused buffers
(``matmul(out=)``, ``mul_``), and the mixed-dtype ``W += delta`` is done as
``wide.copy_(W); wide += delta; W.copy_(wide)`` (the same float32 sum and single rounding,
without torch's slow mixed-dtype kernel); for a bfloat16 ``W`` (the common case) the scaling, the
widening, the add, the rounding and the finite check are one compiled pass
(:mod:`merge_worker.kernels`, the same IEEE operations in the same order). A block has at
least ``MIN_BLOCK_ROWS`` (64) rows, the last one taking the remainder: MKL computes products of
1-3 rows with other kernels, whose float32 results differ from the whole product's in the last
bit, while larger row blocks give every element the whole product's dot product over r (tests,
and the benchmark at full size, check the output against PEFT bit for bit). The blocks of one
tensor are shared by one thread per CPU (at most 4; torch and the compiled pass release the GIL),
each running torch single-threaded (OpenMP teams in small ops scale badly, worst on a busy
machine); each block is checked finite while it is in cache.

Streaming (:mod:`merge_worker.shards`): merged tensors keep name, dtype and shape, so each output
shard has the base shard's exact header and tensor offsets. A writer thread writes the header,
then copies the untouched tensors (checked in 16 MiB pieces first, copied by the kernel with
``copy_file_range``) while the merged tensors are computed, then writes those in offset order
(overlapping disk writes with the maths). Base and adapter tensors are read through memory maps
and dropped from memory once used; merged tensors go through ``WRITE_SLOTS`` (4) reusable buffers,
so the maths can run ahead of the writer. Memory stays near four tensors plus the adapter
tensors in use (plus float32 scratch of one tensor for embeddings and DoRA). Shard file names, the
tensor->file map and the index are kept; every other non-weight file is copied. Everything is
written into a hidden sibling folder renamed to ``out_dir`` at the end, so ``out_dir`` is never
half-written (an existing non-empty ``out_dir`` is refused). Nothing is fsynced: the caller uploads
or fingerprints the result.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merge_worker.lora_math import Merger, ensure_finite
from merge_worker.shards import (
    DTYPES,
    Entry,
    Shard,
    ShardReader,
    Writer,
    bytes_of,
    read_shard,
    write_all_at,
)
from merge_worker.staging import staged_folder
from registry.compat import ensure_compatible_shapes, unmergeable_targets
from registry.errors import Conflict, IncompatibleBase, InvalidAdapter
from registry.lora_layout import (
    AdapterLayout,
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
COPY_CHUNK = 16 << 20  # untouched tensors are copied (and checked) in pieces of this size
WRITE_SLOTS = 4  # merged tensors in flight: the maths runs ahead while the writer catches up
# Weights in other formats would be stale (unmerged) copies: never carried over.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json",
                   "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx", ".*")


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
class _Plan:
    layout: AdapterLayout
    shards: tuple[Shard, ...]
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
    # read-only views of the adapter file's pages (no copy into fresh memory)
    with (closing(ShardReader(read_shard(adapter_dir / ADAPTER_WEIGHTS))) as adapter_file,
          _torch_threads.single(),
          Merger(plan.layout, {e.name: adapter_file.tensor(e) for e in adapter_file.shard.entries},
                 _releaser(adapter_file)) as merger, staged_folder(out_dir) as tmp):
        _write_shards(plan, merger, tmp, _Progress(plan, progress, should_cancel))
        _copy_other_files(base_dir, tmp, {s.name for s in plan.shards})
        if plan.index is not None:
            _write_index(plan, tmp)
    if progress:
        progress(1.0, "done")
    files = tuple(OutputFile(p.name, p.stat().st_size) for p in sorted(out_dir.iterdir())
                  if p.is_file())
    return MergeResult(files, merger.merged, merger.replaced)


def _releaser(reader: ShardReader) -> Callable[[str], None]:
    """Drops an adapter tensor's pages from memory once used (peak memory: the adapter's pages
    would otherwise all be resident by the end of the merge)."""
    entries = {e.name: e for e in reader.shard.entries}

    def release(key: str) -> None:
        entry = entries[key]
        reader.release(entry.start, entry.end)
    return release


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
    shard = read_shard(weights_path)
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


def _read_base(base_dir: Path) -> tuple[tuple[Shard, ...], dict[str, Any] | None]:
    index_path = base_dir / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise IncompatibleBase(f"{INDEX_NAME} is not valid JSON: {exc}") from exc
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise IncompatibleBase(f"{INDEX_NAME} has no weight_map")
        names = list(dict.fromkeys(str(v) for v in weight_map.values()))
        shards = tuple(read_shard(_inside(base_dir, n)) for n in names)
        _check_index(weight_map, shards)
        return shards, index
    if (base_dir / SINGLE_NAME).is_file():
        return (read_shard(base_dir / SINGLE_NAME),), None
    raise IncompatibleBase(f"{base_dir} has neither {SINGLE_NAME} nor {INDEX_NAME}")


def _inside(folder: Path, name: str) -> Path:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise IncompatibleBase(f"{INDEX_NAME} names a file outside the folder: {name!r}")
    return folder / name


def _check_index(weight_map: Mapping[str, Any], shards: tuple[Shard, ...]) -> None:
    actual = {e.name: s.name for s in shards for e in s.entries}
    if actual != {k: str(v) for k, v in weight_map.items()}:
        raise IncompatibleBase(f"{INDEX_NAME} does not match the tensors in its shards")


# --- output --------------------------------------------------------------------------------


class _TorchThreads:
    """Torch runs single-threaded while any merge runs (merges may share a process), and gets
    its previous thread count back after the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 1

    @contextmanager
    def single(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = torch.get_num_threads()
                torch.set_num_threads(1)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.set_num_threads(self._saved)


_torch_threads = _TorchThreads()


class _Progress:
    def __init__(self, plan: _Plan, report: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.total = max(1, sum(s.data_size for s in plan.shards))
        self.done = 0
        self.report = report
        self.cancel = cancel

    def step(self, entry: Entry, shard: str) -> None:
        if self.cancel is not None and self.cancel():
            raise MergeCancelled(f"merge cancelled before {entry.name}")
        if self.report is not None:
            self.report(self.done / self.total, f"{shard}: {entry.name}")
        self.done += entry.nbytes


def _write_shards(plan: _Plan, merger: Merger, tmp: Path, progress: _Progress) -> None:
    outputs: list[int] = []
    readers: list[ShardReader] = []
    try:
        with Writer(WRITE_SLOTS, _slot_bytes(plan, merger)) as writer:
            for shard in plan.shards:
                readers.append(ShardReader(shard))
                outputs.append(os.open(tmp / shard.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                       0o644))
                _write_shard(readers[-1], outputs[-1], merger, writer, progress)
    finally:
        # only once the writer thread has finished with them
        for fd in outputs:
            os.close(fd)
        for reader in readers:
            reader.close()


def _slot_bytes(plan: _Plan, merger: Merger) -> int:
    touched = [e.nbytes for s in plan.shards for e in s.entries if merger.touches(e.name)]
    return max(touched, default=0)


def _write_shard(reader: ShardReader, dst: int, merger: Merger, writer: Writer,
                 progress: _Progress) -> None:
    """Untouched tensors first: the writer thread copies them while the merged ones are
    computed, instead of the merge waiting for the last copies at the end."""
    shard = reader.shard
    writer.submit(None, functools.partial(write_all_at, dst, memoryview(shard.header), 0))
    touched = [merger.touches(entry.name) for entry in shard.entries]
    for entry, merged in zip(shard.entries, touched, strict=True):
        if not merged:
            progress.step(entry, shard.name)
            _copy_checked(reader, dst, entry, writer)
    for entry, merged in zip(shard.entries, touched, strict=True):
        if merged:
            progress.step(entry, shard.name)
            _write_merged(reader, dst, entry, merger, writer)


def _write_merged(reader: ShardReader, dst: int, entry: Entry, merger: Merger,
                  writer: Writer) -> None:
    slot = writer.slot()
    out = slot[:entry.nbytes].view(DTYPES[entry.dtype]).view(entry.shape)
    tensor = merger.build(entry.name, reader.tensor(entry), out).contiguous()
    reader.release(entry.start, entry.end)  # (build checked it is finite)
    data = bytes_of(tensor)  # keeps ``tensor`` alive until written
    writer.submit(slot, functools.partial(write_all_at, dst, data, entry.start))


def _copy_checked(reader: ShardReader, dst: int, entry: Entry, writer: Writer) -> None:
    """Copy an untouched tensor piece by piece, checking it is finite on the way."""
    for start in range(entry.start, entry.end, COPY_CHUNK):
        end = min(start + COPY_CHUNK, entry.end)
        piece = Entry(entry.name, entry.dtype, ((end - start) // _itemsize(entry),), start, end)
        ensure_finite(entry.name, reader.tensor(piece))
        reader.release(start, end)  # the copy below does not need these pages mapped
        writer.submit(None, functools.partial(_copy_piece, reader, dst, start, end))


def _copy_piece(reader: ShardReader, dst: int, start: int, end: int) -> None:
    reader.copy_to(dst, start, end)
    reader.release(start, end)


def _itemsize(entry: Entry) -> int:
    return torch.empty((), dtype=DTYPES[entry.dtype]).element_size()


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
