"""What a composition of LoRA adapters will do, decided before any tensor is read.

A composition combines N PEFT LoRA adapters of one base into a new adapter exactly as PEFT's
``LoraModel.add_weighted_adapter`` does (PEFT 0.21, ``peft/tuners/lora/model.py``). This module
reads only each input's ``adapter_config.json`` and safetensors header (no torch), refuses, with
the reason, everything PEFT refuses or cannot compose faithfully, and plans the work per target
module. :mod:`merge_worker.compose` runs the plan.

PEFT's rules reproduced here (``_check_add_weighted_adapter`` and ``add_weighted_adapter``):

* one input: the method becomes ``linear`` whatever was asked;
* an input's rank is ``max(r, *rank_pattern.values())``; ``linear``, ``ties``, ``dare_linear``,
  ``dare_ties`` and ``magnitude_prune`` need one rank across inputs (and it is the new rank),
  ``cat`` takes their sum, the ``*_svd`` methods ``svd_rank`` or the largest;
* ``target_modules`` must be all lists or all regex strings; lists are united, strings joined as
  ``(re1)|(re2)``; ``all-linear`` is the set of the input's own modules (PEFT expands it against
  the model before composing);
* the new config is the first input's with ``r`` and ``lora_alpha`` set to the new rank and
  empty ``rank_pattern``/``alpha_pattern`` (so with an rsLoRA first input the composed adapter
  scales by ``sqrt(rank)`` where the others scale by 1: PEFT's behaviour, kept);
* a module some inputs lack is composed from those that have it (``cat`` pads with zero rows).

Refused beyond PEFT's own refusals, because PEFT would write an adapter whose tensors do not
match its config or silently drop what an input carries: DoRA (the composed magnitude would be a
fresh initialisation from the base), ``lora_bias``, ``bias`` other than ``none``,
``modules_to_save`` (PEFT composes a copy of the base module, not the inputs'), per-module ranks
other than the new rank for the equal-rank methods, ``svd_rank`` above a module's smaller side,
inputs disagreeing on how modules are selected (``layers_to_transform``, ``layers_pattern``,
``exclude_modules``, ``fan_in_fan_out``) and inputs of different bases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from registry.errors import BadRequest, IncompatibleBase, InvalidAdapter
from registry.lora_layout import (
    EMBEDDING_LAYER_NAMES,
    AdapterLayout,
    LoraModule,
    ModuleKind,
    Replacement,
    analyze_adapter,
    parse_lora_config,
    unsupported_features,
)
from registry.safetensors_io import FORMAT_LIMITS, read_header

METHODS = ("cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
           "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANK_METHODS = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
SVD_METHODS = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
DENSITY_METHODS = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                   "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
SIGN_METHODS = ("ties", "ties_svd", "dare_ties", "dare_ties_svd")
RANDOM_METHODS = ("dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd")
SIGN_RULES = ("total", "frequency")
ALL_LINEAR = "all-linear"
PEFT_PREFIX = "base_model.model."
# Config fields that decide which modules a config targets: PEFT matches the composed config
# (the first input's fields) against the model, which only equals the union of the inputs'
# modules when every input selects modules the same way.
SELECTION_FIELDS = ("layers_to_transform", "layers_pattern", "exclude_modules", "fan_in_fan_out")
MAX_SEED = 2**64 - 1  # torch.manual_seed's range (negative seeds alias these)


@dataclass(frozen=True)
class ComposeInput:
    """One adapter to compose: its config, its weights file, and the base it was made for."""

    label: str  # how errors name it, e.g. "acme/tone@3"
    config: Mapping[str, Any]
    weights: Path  # adapter_model.safetensors
    base_fingerprint: str | None = None


@dataclass(frozen=True)
class ComposeOptions:
    """``add_weighted_adapter``'s arguments (``seed`` stands for ``torch.manual_seed(seed)``
    called just before it). Options a method does not use are recorded as None."""

    method: str
    weights: tuple[float, ...]
    density: float | None = None
    majority_sign_method: str | None = "total"
    svd_rank: int | None = None
    svd_clamp: float | None = None
    svd_full_matrices: bool | None = True
    svd_driver: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Part:
    """One input's factors for one module."""

    input: int  # index into Plan.inputs
    a_key: str
    b_key: str
    rank: int
    scaling: float


@dataclass(frozen=True)
class ModulePlan:
    name: str  # base module name, e.g. "model.layers.0.self_attn.q_proj"
    kind: ModuleKind
    in_features: int
    out_features: int
    parts: tuple[Part, ...]  # in input order, inputs lacking the module left out

    @property
    def a_key(self) -> str:
        part = "lora_embedding_A" if self.kind == "embedding" else "lora_A.weight"
        return f"{PEFT_PREFIX}{self.name}.{part}"

    @property
    def b_key(self) -> str:
        part = "lora_embedding_B" if self.kind == "embedding" else "lora_B.weight"
        return f"{PEFT_PREFIX}{self.name}.{part}"


@dataclass(frozen=True)
class CarriedTensor:
    """A saved embedding matrix (base weights PEFT saves next to an embedding's LoRA): the
    composed adapter carries the last input's copy, as loading the inputs in order leaves it."""

    key: str
    input: int
    source_key: str


@dataclass(frozen=True)
class Plan:
    inputs: tuple[ComposeInput, ...]
    options: ComposeOptions  # effective: the method after PEFT's one-input rule, unused = None
    rank: int
    target_modules: tuple[str, ...] | str  # a sorted union, or PEFT's joined regex
    modules: tuple[ModulePlan, ...]  # in processing order
    carried: tuple[CarriedTensor, ...]
    base_order: bool  # modules are in the base model's order (PEFT's own), not sorted by name
    first_config: Mapping[str, Any]


def plan_composition(inputs: Sequence[ComposeInput], options: ComposeOptions,
                     module_order: Sequence[str] | None = None) -> Plan:
    """Check everything and plan the composition; raise BadRequest, InvalidAdapter or
    IncompatibleBase (with the reason) for anything that cannot be composed like PEFT does."""
    inputs = tuple(inputs)
    options = _effective_options(options, len(inputs))
    _check_bases(inputs)
    layouts = [_layout(item) for item in inputs]
    _check_modules_to_save(inputs, layouts)
    _check_selection(inputs, layouts)
    rank = _new_rank(options, layouts)
    modules = _modules(inputs, layouts, options.method, rank)
    ordered, base_order = _order(modules, module_order)
    return Plan(inputs, options, rank, _target_modules(layouts), ordered,
                _carried(inputs, layouts), base_order, dict(inputs[0].config))


# --- options --------------------------------------------------------------------------------


def _effective_options(options: ComposeOptions, count: int) -> ComposeOptions:
    problems = _option_problems(options, count)
    if problems:
        raise BadRequest("invalid composition: " + "; ".join(problems), problems=problems)
    method = "linear" if count == 1 else options.method
    svd = method in SVD_METHODS
    return replace(
        options, method=method, weights=tuple(float(w) for w in options.weights),
        density=options.density if method in DENSITY_METHODS else None,
        majority_sign_method=options.majority_sign_method if method in SIGN_METHODS else None,
        svd_rank=options.svd_rank if svd else None,
        svd_clamp=options.svd_clamp if svd else None,
        svd_full_matrices=options.svd_full_matrices if svd else None,
        svd_driver=None, seed=options.seed if method in RANDOM_METHODS else None)


def _option_problems(options: ComposeOptions, count: int) -> list[str]:
    problems: list[str] = []
    if count == 0:
        problems.append("no adapters to compose")
    if options.method not in METHODS:
        problems.append(f"method {options.method!r} is not one of {', '.join(METHODS)}")
    if len(options.weights) != count:
        problems.append(f"{len(options.weights)} weights for {count} adapters")
    if not all(_finite(w) for w in options.weights):
        problems.append(f"weights must be finite numbers, got {list(options.weights)}")
    method = "linear" if count == 1 else options.method
    problems += _density_problems(options, method)
    problems += _svd_problems(options) if method in SVD_METHODS else []
    if method in RANDOM_METHODS and not _seed_ok(options.seed):
        problems.append(f"{method} draws random masks: give a seed (an integer from 0 to "
                        f"2**64-1), got {options.seed!r}")
    return problems


def _density_problems(options: ComposeOptions, method: str) -> list[str]:
    problems: list[str] = []
    density = options.density
    if method in DENSITY_METHODS and not (_finite(density) and 0 < float(density or 0) <= 1):
        problems.append(f"{method} needs a density in (0, 1], got {density!r}")
    if method in SIGN_METHODS and options.majority_sign_method not in SIGN_RULES:
        problems.append(f"majority_sign_method must be one of {', '.join(SIGN_RULES)}, got "
                        f"{options.majority_sign_method!r}")
    return problems


def _svd_problems(options: ComposeOptions) -> list[str]:
    problems: list[str] = []
    rank = options.svd_rank
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        problems.append(f"svd_rank must be a positive integer, got {rank!r}")
    clamp = options.svd_clamp
    if clamp is not None and not (_finite(clamp) and 0 <= clamp <= 1):
        problems.append(f"svd_clamp is a quantile in [0, 1], got {clamp!r}")
    if options.svd_driver is not None:
        problems.append("svd_driver selects a cuSOLVER routine (CUDA only); composition runs "
                        "on the CPU, where torch accepts none")
    if not isinstance(options.svd_full_matrices, bool):
        problems.append(f"svd_full_matrices must be true or false, got "
                        f"{options.svd_full_matrices!r}")
    return problems


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _seed_ok(seed: Any) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


# --- inputs ---------------------------------------------------------------------------------


def _check_bases(inputs: tuple[ComposeInput, ...]) -> None:
    first = inputs[0]
    for other in inputs[1:]:
        if other.base_fingerprint != first.base_fingerprint:
            raise IncompatibleBase(
                f"{first.label} is for base {first.base_fingerprint} but {other.label} is for "
                f"base {other.base_fingerprint}: only adapters of one base can be composed",
                fingerprints=[first.base_fingerprint, other.base_fingerprint])


def _layout(item: ComposeInput) -> AdapterLayout:
    if not Path(item.weights).is_file():
        raise InvalidAdapter(f"{item.label}: no weights file {item.weights}",
                             adapter=item.label)
    try:
        info = parse_lora_config(item.config)
        header = read_header(item.weights, FORMAT_LIMITS)
        layout = analyze_adapter(info, {k: (t.dtype, t.shape) for k, t in header.tensors.items()})
    except InvalidAdapter as exc:
        raise type(exc)(f"{item.label}: {exc.detail}", **exc.extra) from exc
    problems = unsupported_features(info) + _compose_refusals(layout)
    if problems:
        raise InvalidAdapter(f"{item.label} cannot be composed: " + "; ".join(problems),
                             problems=problems, adapter=item.label)
    return layout


def _compose_refusals(layout: AdapterLayout) -> list[str]:
    config, problems = layout.config, []
    if config.use_dora:
        problems.append("DoRA (add_weighted_adapter composes lora_A/lora_B only; the composed "
                        "magnitude vector would be a fresh initialisation from the base weights)")
    if config.lora_bias:
        problems.append("lora_bias (add_weighted_adapter does not compose lora_B biases)")
    if config.bias != "none":
        problems.append(f"bias={config.bias!r} (the adapter carries trained base biases, which "
                        "a composition cannot combine)")
    kinds = {m.name: m.kind for m in layout.modules}
    problems += [f"{r.key} replaces the base tensor {r.base_name} (only saved embedding "
                 "matrices are carried)" for r in layout.replacements
                 if not _is_saved_embedding(r, kinds) and not config.modules_to_save]
    return problems


def _is_saved_embedding(r: Replacement, kinds: Mapping[str, ModuleKind]) -> bool:
    module = r.base_name.rpartition(".")[0]
    return (kinds.get(module) == "embedding"
            or module.rpartition(".")[2] in EMBEDDING_LAYER_NAMES) and r.base_name.endswith(
        ".weight")


def _check_modules_to_save(inputs: tuple[ComposeInput, ...],
                           layouts: list[AdapterLayout]) -> None:
    owners: dict[str, list[str]] = {}
    for item, layout in zip(inputs, layouts, strict=True):
        for entry in layout.config.modules_to_save:
            owners.setdefault(entry, []).append(item.label)
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    if shared:  # PEFT's own refusal (_check_add_weighted_adapter)
        raise BadRequest("cannot compose adapters that target the same module with "
                         f"modules_to_save: {shared}", problems=sorted(shared))
    if owners:
        raise InvalidAdapter(
            f"modules_to_save in {sorted({o for v in owners.values() for o in v})}: "
            "add_weighted_adapter gives the composed adapter a copy of the base module, not "
            "the adapter's trained one, so the composition would silently drop it",
            problems=sorted(owners))


def _check_selection(inputs: tuple[ComposeInput, ...], layouts: list[AdapterLayout]) -> None:
    kinds = {isinstance(_targets(layout), str) for layout in layouts}
    if len(kinds) > 1:
        raise BadRequest("all adapter configs should follow the same target modules type: "
                         "lists and regex strings cannot be mixed (PEFT refuses it)")
    first = layouts[0].config.raw
    for item, layout in zip(inputs[1:], layouts[1:], strict=True):
        differ = [f for f in SELECTION_FIELDS
                  if _selection(layout.config.raw, f) != _selection(first, f)]
        if differ:
            raise BadRequest(
                f"{item.label} and {inputs[0].label} select modules differently "
                f"({', '.join(differ)}); the composed adapter would follow the first one's",
                problems=differ)


def _selection(raw: Mapping[str, Any], field: str) -> Any:
    """A selection field as PEFT uses it: unset, false and empty alike; lists as sets."""
    value = raw.get(field)
    if not value:
        return None
    return tuple(sorted(map(str, value))) if isinstance(value, list | tuple) else value


def _targets(layout: AdapterLayout) -> frozenset[str] | str:
    targets = layout.config.target_modules
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:  # PEFT expands it to the modules it wraps
            return frozenset(m.name for m in layout.modules)
        return targets
    return frozenset(targets)


def _target_modules(layouts: list[AdapterLayout]) -> tuple[str, ...] | str:
    targets = [_targets(layout) for layout in layouts]
    if isinstance(targets[0], str):
        return "|".join(f"({t})" for t in targets)
    return tuple(sorted(frozenset().union(*targets)))


def _input_rank(layout: AdapterLayout) -> int:
    config = layout.config
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def _new_rank(options: ComposeOptions, layouts: list[AdapterLayout]) -> int:
    ranks = [_input_rank(layout) for layout in layouts]
    method = options.method
    if method in EQUAL_RANK_METHODS:
        if len(set(ranks)) != 1:
            raise BadRequest(f"{method} needs adapters of one rank (PEFT's rule: linear, ties, "
                             f"dare_* and magnitude_prune add the factors), got ranks {ranks}; "
                             "use cat or an svd method", ranks=ranks)
        return ranks[0]
    if method == "cat":
        return sum(ranks)
    return options.svd_rank or max(ranks)


# --- modules --------------------------------------------------------------------------------


def _modules(inputs: tuple[ComposeInput, ...], layouts: list[AdapterLayout], method: str,
             rank: int) -> list[ModulePlan]:
    found: dict[str, list[tuple[int, LoraModule]]] = {}
    for index, layout in enumerate(layouts):
        for module in layout.modules:
            found.setdefault(module.name, []).append((index, module))
    plans = [_module(name, entries, inputs) for name, entries in found.items()]
    problems = [p for plan in plans for p in _rank_problems(plan, method, rank)]
    if problems:
        raise BadRequest(f"{method} to rank {rank}: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                         problems=problems)
    return plans


def _module(name: str, entries: list[tuple[int, LoraModule]],
            inputs: tuple[ComposeInput, ...]) -> ModulePlan:
    first_index, first = entries[0]
    for index, module in entries[1:]:
        if (module.kind, module.in_features, module.out_features) != (
                first.kind, first.in_features, first.out_features):
            raise IncompatibleBase(
                f"{name} is a {first.kind} {first.in_features}->{first.out_features} in "
                f"{inputs[first_index].label} but a {module.kind} {module.in_features}->"
                f"{module.out_features} in {inputs[index].label}: not one base")
    parts = tuple(Part(i, m.a_key, m.b_key, m.rank, m.scaling) for i, m in entries)
    return ModulePlan(name, first.kind, first.in_features, first.out_features, parts)


def _rank_problems(plan: ModulePlan, method: str, rank: int) -> list[str]:
    if method in EQUAL_RANK_METHODS:
        return [f"{plan.name} has rank {p.rank} in input {p.input + 1} (rank_pattern)"
                for p in plan.parts if p.rank != rank]
    if method in SVD_METHODS and rank > min(plan.in_features, plan.out_features):
        return [f"{plan.name} is {plan.out_features}x{plan.in_features}, so its delta has no "
                f"rank-{rank} decomposition"]
    return []


def _order(modules: list[ModulePlan],
           module_order: Sequence[str] | None) -> tuple[tuple[ModulePlan, ...], bool]:
    if module_order is None:
        return tuple(sorted(modules, key=lambda m: _natural(m.name))), False
    position = {name.removeprefix(PEFT_PREFIX): i for i, name in enumerate(module_order)}
    missing = sorted(m.name for m in modules if m.name not in position)
    if missing:
        raise IncompatibleBase(f"the base has no module {missing[0]!r} (and "
                               f"{len(missing) - 1} more)" if len(missing) > 1 else
                               f"the base has no module {missing[0]!r}", modules=missing[:20])
    return tuple(sorted(modules, key=lambda m: position[m.name])), True


def _natural(name: str) -> list[tuple[int, int | str]]:
    """layers.2 before layers.10."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]


def _carried(inputs: tuple[ComposeInput, ...],
             layouts: list[AdapterLayout]) -> tuple[CarriedTensor, ...]:
    last: dict[str, CarriedTensor] = {}
    for index, layout in enumerate(layouts):
        for r in layout.replacements:  # only saved embeddings get this far
            key = r.key if r.key.startswith(PEFT_PREFIX) else PEFT_PREFIX + r.key
            last[key] = CarriedTensor(key, index, r.key)
    return tuple(last[k] for k in sorted(last))


def describe(plan: Plan) -> dict[str, Any]:
    """The plan's parameters as plain JSON (for lineage records)."""
    o = plan.options
    return {"method": o.method, "weights": list(o.weights), "density": o.density,
            "majority_sign_method": o.majority_sign_method, "svd_rank": o.svd_rank,
            "svd_clamp": o.svd_clamp, "svd_full_matrices": o.svd_full_matrices,
            "seed": o.seed, "rank": plan.rank, "modules": len(plan.modules),
            "module_order": "base" if plan.base_order else "sorted"}
