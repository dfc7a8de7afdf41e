"""Composition of LoRA adapters into a new adapter, equal to PEFT's ``add_weighted_adapter``.

Spec
====

Input: N PEFT LoRA adapters of one base (each an ``adapter_config.json`` mapping and an
``adapter_model.safetensors`` file), one weight per adapter, a method among ``cat``, ``linear``,
``svd``, ``ties``, ``ties_svd``, ``dare_linear``, ``dare_ties``, ``dare_linear_svd``,
``dare_ties_svd``, ``magnitude_prune``, ``magnitude_prune_svd`` and its options (density,
majority sign rule, svd rank/clamp/full matrices, seed). Output: an adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) holding what
``torch.manual_seed(seed); model.add_weighted_adapter(...)`` on the adapters loaded PEFT's
default way (``PeftModel.from_pretrained`` then ``load_adapter``, in input order) and
``save_pretrained`` would write. The base model is never loaded: only its dtype matters (PEFT
allocates the ``cat`` result like the base layer).

What is refused, and PEFT's rules for ranks and target modules: :mod:`merge_worker.compose_plan`.
The maths: :mod:`merge_worker.compose_methods`. The dare draws: :mod:`merge_worker.compose_rng`.

Equality with PEFT (tests/merge_worker/test_compose.py): the tensors are bit for bit PEFT's for
every method, with the same torch build and thread count (LAPACK's SVD results depend on both,
and the rank truncation amplifies last-bit differences when singular values near the cut are
close); dare draws are PEFT's when ``module_order`` is the base's. The safetensors file is byte for
byte what PEFT's ``save_pretrained`` writes, except ``cat``'s zero padding (PEFT's is
``init * 0.0``, whose sign follows its random init: -0.0 or +0.0; ours is +0.0). The config is
PEFT's, with a list ``target_modules`` sorted (PEFT writes a set in hash order).

PEFT is needed but its package is only imported for the dare methods' replay and for configs
another PEFT version wrote: its ``merge_utils`` runs from its own file (the package's
``__init__`` would import transformers, some 170 MiB and seconds per process).

Streaming: one target module at a time, in order; per module, the inputs' factors are read
through memory maps and dropped from memory once used, the composed factors written at their
offsets in the output file (its header is known up front). Memory is bounded by one module's
tensors across the inputs (for the svd methods, the inputs' deltas and the SVD's factors), not
by the number of modules or the size of the adapters. Everything is written into a hidden
sibling folder renamed to ``out_dir`` at the end; an existing non-empty ``out_dir`` is refused.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from merge_worker.compose_methods import (
    Factors,
    Pruning,
    SvdOptions,
    compose_cat,
    compose_factors,
    compose_svd,
)
from merge_worker.compose_plan import (
    RANDOM_METHODS,
    SVD_METHODS,
    ComposeInput,
    ComposeOptions,
    ModulePlan,
    Plan,
    describe,
    plan_composition,
)
from merge_worker.compose_rng import PeftRandom
from merge_worker.shards import DTYPES, ShardReader, bytes_of, read_shard, write_all_at
from merge_worker.staging import CancelFn, OutputFile, ProgressFn, listing, staged_folder
from registry.errors import Conflict

# safetensors orders tensors by dtype (descending, in its Dtype enum's order), then by name
DTYPE_ORDER = {"F16": 0, "BF16": 1, "F32": 2, "F64": 3}
DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
               torch.float64: "F64"}
LIBRARIES = ("torch", "peft", "safetensors")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ComposeCancelled(Exception):
    """should_cancel() returned True; nothing was left behind."""


@dataclass(frozen=True)
class ComposeResult:
    files: tuple[OutputFile, ...]
    parameters: dict[str, Any]  # how it was made: method, weights, options, rank, versions
    energy: dict[str, float]  # svd methods: module -> share of the delta's energy kept


@dataclass(frozen=True)
class _Slot:
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset in the data region


def compose_adapters(
    inputs: Sequence[ComposeInput],
    options: ComposeOptions,
    out_dir: Path,
    *,
    base_dtype: torch.dtype = torch.float32,
    module_order: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> ComposeResult:
    """Compose ``inputs`` into a new adapter folder ``out_dir`` (see the module docstring).
    ``base_dtype`` is the dtype of the base's targeted weights; ``module_order`` the base
    model's ``named_modules()`` names (needed for PEFT's dare draws; sorted names otherwise)."""
    plan = plan_composition(inputs, options, module_order)
    out_dir = Path(out_dir)
    if base_dtype not in DTYPE_NAMES:
        raise ValueError(f"base_dtype must be a float dtype, got {base_dtype}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise Conflict(f"output folder {out_dir} already exists and is not empty")
    config = composed_config(plan)
    with ExitStack() as stack:
        readers = [stack.enter_context(closing(ShardReader(read_shard(item.weights))))
                   for item in plan.inputs]
        tmp = stack.enter_context(staged_folder(out_dir))
        (tmp / ADAPTER_CONFIG).write_text(config_json(config))
        run = _Run(plan, readers, base_dtype, config)
        energy = run.write(tmp / ADAPTER_WEIGHTS, progress, should_cancel)
    if progress:
        progress(1.0, "done")
    return ComposeResult(listing(out_dir), _parameters(plan, base_dtype), energy)


# --- the config -------------------------------------------------------------------------------


def composed_config(plan: Plan) -> dict[str, Any]:
    """The composed adapter's config, as ``add_weighted_adapter`` makes it and
    ``save_pretrained`` writes it: the first input's config (as PEFT's ``LoraConfig`` holds it)
    with the new rank as ``r`` and ``lora_alpha``, the new target modules, no rank/alpha
    patterns, ``inference_mode`` true. A config written by the installed PEFT version is
    already in that form; any other goes through PEFT's ``LoraConfig`` (which adds the fields an
    older PEFT did not write and drops those it does not know)."""
    config = dict(plan.first_config)
    if config.get("peft_version") != version("peft"):
        config = _through_peft(config)
    config.pop("runtime_config", None)  # LoraConfig.to_dict drops it
    targets = plan.target_modules
    config.update(r=plan.rank, lora_alpha=plan.rank, alpha_pattern={}, rank_pattern={},
                  inference_mode=True,
                  target_modules=targets if isinstance(targets, str) else list(targets))
    if isinstance(config.get("exclude_modules"), list):  # a set in LoraConfig
        config["exclude_modules"] = sorted(set(config["exclude_modules"]))
    return config


def _through_peft(raw: dict[str, Any]) -> dict[str, Any]:
    from peft import PeftConfig

    loader: Any = PeftConfig  # its classmethods are untyped
    values: dict[str, Any] = loader.from_peft_type(**loader.check_kwargs(**raw)).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in values.items()}


def config_json(config: dict[str, Any]) -> str:
    """``PeftConfig.save_pretrained``'s text (sets are written sorted; PEFT: hash order)."""
    return json.dumps(config, indent=2, sort_keys=True)


# --- the tensors ------------------------------------------------------------------------------


class _Run:
    """One composition's streaming pass over the modules."""

    def __init__(self, plan: Plan, readers: list[ShardReader], base_dtype: torch.dtype,
                 config: dict[str, Any]) -> None:
        self.plan, self.readers, self.base_dtype, self.config = plan, readers, base_dtype, config
        # PEFT's loaded adapters are float32 (autocast_adapter_dtype), float64 on a float64 base
        self.compute = torch.float64 if base_dtype == torch.float64 else torch.float32
        self.out_dtype = base_dtype if plan.options.method == "cat" else self.compute
        self.entries = [{e.name: e for e in reader.shard.entries} for reader in readers]
        self.random = (PeftRandom(plan.options.seed) if plan.options.method in RANDOM_METHODS
                       and plan.options.seed is not None else None)

    def write(self, path: Path, progress: ProgressFn | None,
              cancel: CancelFn | None) -> dict[str, float]:
        slots, header = self._layout()
        if self.random is not None:
            self.random.replay_initialisation(self.plan.modules, self.config, self.plan.rank)
        energy: dict[str, float] = {}
        total = len(self.plan.modules)
        with _output(path, header) as (fd, data_start):
            for done, module in enumerate(self.plan.modules):
                if cancel is not None and cancel():
                    raise ComposeCancelled(f"composition cancelled before {module.name}")
                if progress is not None:
                    progress(done / total, module.name)
                a, b, kept = self._module(module)
                if kept is not None:
                    energy[module.name] = kept
                for key, tensor in ((module.a_key, a), (module.b_key, b)):
                    _write(fd, data_start + slots[key].start, tensor)
            for carried in self.plan.carried:
                tensor = self._read(carried.input, carried.source_key).to(self.base_dtype)
                _write(fd, data_start + slots[carried.key].start, tensor)
        return energy

    def _layout(self) -> tuple[dict[str, _Slot], bytes]:
        shapes: list[tuple[str, str, tuple[int, ...]]] = []
        out = DTYPE_NAMES[self.out_dtype]
        for m in self.plan.modules:
            shapes.append((m.a_key, out, (self.plan.rank, m.in_features)))
            shapes.append((m.b_key, out, (m.out_features, self.plan.rank)))
        base = DTYPE_NAMES[self.base_dtype]
        for c in self.plan.carried:
            shapes.append((c.key, base, self.entries[c.input][c.source_key].shape))
        return safetensors_layout(shapes)

    def _module(self, module: ModulePlan) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """The composed (A, B) of one module, and the energy kept (svd methods)."""
        weights = self.plan.options.weights
        parts = [Factors(self._read(p.input, p.a_key), self._read(p.input, p.b_key),
                         p.scaling, weights[p.input]) for p in module.parts]
        with self.random.active() if self.random is not None else nullcontext():
            result = self._combine(module, parts)
        for p in module.parts:  # the inputs' pages of this module are not needed again
            self._release(p.input, p.a_key)
            self._release(p.input, p.b_key)
        return result

    def _combine(self, module: ModulePlan,
                 parts: list[Factors]) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        options = self.plan.options
        pruning = Pruning(options.density, options.majority_sign_method)
        if options.method == "cat":
            return (*compose_cat(parts, self.plan.rank, self.out_dtype), None)
        if options.method not in SVD_METHODS:
            return (*compose_factors(options.method, parts, pruning), None)
        # PEFT transposes the delta back for Conv1D (fan_in_fan_out) layers and embeddings
        transposed = module.kind == "embedding" or bool(self.config.get("fan_in_fan_out"))
        svd = SvdOptions(self.plan.rank, options.svd_clamp, bool(options.svd_full_matrices),
                         transposed)
        return compose_svd(options.method, parts, pruning, svd)

    def _read(self, index: int, key: str) -> torch.Tensor:
        """As PEFT holds it after loading: copied into a float32 (float64) parameter."""
        return self.readers[index].tensor(self.entries[index][key]).to(self.compute)

    def _release(self, index: int, key: str) -> None:
        entry = self.entries[index][key]
        self.readers[index].release(entry.start, entry.end)


def safetensors_layout(tensors: list[tuple[str, str, tuple[int, ...]]]
                       ) -> tuple[dict[str, _Slot], bytes]:
    """Offsets and header bytes exactly as ``safetensors.torch.save_file`` lays them out:
    tensors by dtype (descending) then name, the JSON compact with ``__metadata__`` first,
    padded with spaces to a multiple of 8 bytes."""
    ordered = sorted(tensors, key=lambda t: (-DTYPE_ORDER[t[1]], t[0]))
    slots: dict[str, _Slot] = {}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dtype, shape in ordered:
        size = _nbytes(dtype, shape)
        slots[key] = _Slot(key, dtype, shape, offset)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset,
                                                                              offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return slots, struct.pack("<Q", len(raw)) + raw


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty((), dtype=DTYPES[dtype]).element_size()


@contextmanager
def _output(path: Path, header: bytes) -> Iterator[tuple[int, int]]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all_at(fd, memoryview(header), 0)
        yield fd, len(header)
    finally:
        os.close(fd)


def _write(fd: int, offset: int, tensor: torch.Tensor) -> None:
    write_all_at(fd, bytes_of(tensor.contiguous()), offset)


def _parameters(plan: Plan, base_dtype: torch.dtype) -> dict[str, Any]:
    return {**describe(plan), "base_dtype": DTYPE_NAMES[base_dtype],
            "torch_threads": torch.get_num_threads(),
            "libraries": {name: version(name) for name in LIBRARIES}}
