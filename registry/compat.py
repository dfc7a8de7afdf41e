"""Adapter <-> base compatibility, from tensor names and shapes alone.

A LoRA module ``m`` with ``lora_A`` (r, in) and ``lora_B`` (out, r) needs the base tensor
``m.weight`` shaped (out, in) for ``nn.Linear``, and (in, out) where the base stores the weight
transposed: transformers' ``Conv1D`` (GPT-2, PEFT's ``fan_in_fan_out``) and ``nn.Embedding``
((num_embeddings, embedding_dim), with ``lora_embedding_A`` (r, num_embeddings)). DoRA magnitudes
and LoRA biases are one value per output feature (checked against ``lora_B`` by
:mod:`registry.lora_layout`, so against the base through the weight); a LoRA bias also needs the
base bias ``m.bias`` of that length. Replacement tensors (modules_to_save, saved biases) must have
exactly the base tensor's shape.
"""

from __future__ import annotations

from collections.abc import Mapping

from registry.errors import IncompatibleBase
from registry.lora_layout import AdapterLayout, LoraModule, Replacement, TensorInfo

MAX_DETAILED = 10
# dtypes a merge can add a float delta to; anything else means a quantized or packed base
MERGEABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def check_against_base(layout: AdapterLayout, base_tensors: Mapping[str, TensorInfo]) -> list[str]:
    """Every way the adapter does not fit the base, one readable line each (empty: fits)."""
    mismatches: list[str] = []
    for module in layout.modules:
        mismatches.extend(_module_mismatches(module, base_tensors))
    for replacement in layout.replacements:
        mismatches.extend(_replacement_mismatches(replacement, base_tensors))
    return mismatches


def ensure_compatible_shapes(
    layout: AdapterLayout, base_tensors: Mapping[str, TensorInfo]
) -> None:
    """Raise IncompatibleBase (detail: the first mismatches; ``mismatches``: all) unless the
    adapter fits the base."""
    mismatches = check_against_base(layout, base_tensors)
    if not mismatches:
        return
    shown = "\n".join(f"- {m}" for m in mismatches[:MAX_DETAILED])
    more = len(mismatches) - MAX_DETAILED
    tail = f"\n(and {more} more)" if more > 0 else ""
    raise IncompatibleBase(
        f"the adapter does not fit this base: {len(mismatches)} mismatch(es)\n{shown}{tail}",
        mismatches=mismatches,
    )


def unmergeable_targets(layout: AdapterLayout, base_tensors: Mapping[str, TensorInfo]) -> list[str]:
    """Targeted base tensors whose dtype cannot take a float delta (quantized bases)."""
    return [
        f"{name} has dtype {base_tensors[name][0]}"
        for name in sorted(layout.base_names())
        if name in base_tensors and base_tensors[name][0] not in MERGEABLE_DTYPES
    ]


def _module_mismatches(m: LoraModule, base: Mapping[str, TensorInfo]) -> list[str]:
    found = base.get(m.base_weight)
    if found is None:
        return [f"{m.base_weight}: missing from the base (adapter targets {m.name})"]
    shape = found[1]
    expected = m.expected_base_shape
    out: list[str] = []
    if shape != expected:
        out.append(_weight_mismatch(m, shape))
    if m.bias_key is not None:
        out.extend(_lora_bias_mismatch(m, base))
    return out


def _weight_mismatch(m: LoraModule, shape: tuple[int, ...]) -> str:
    layout = "(in, out)" if m.transposed else "(out, in)"
    msg = (
        f"{m.base_weight}: base shape {list(shape)}, adapter expects "
        f"{list(m.expected_base_shape)} {layout} from A {list(m.a_shape)} and B {list(m.b_shape)}"
    )
    if m.kind != "embedding" and shape == m.expected_base_shape[::-1]:
        flag = "false" if m.transposed else "true"
        msg += f" (it fits transposed: is fan_in_fan_out wrong? try {flag})"
    return msg


def _lora_bias_mismatch(m: LoraModule, base: Mapping[str, TensorInfo]) -> list[str]:
    found = base.get(m.base_bias)
    if found is None:
        return [f"{m.base_bias}: missing from the base, but the adapter has a LoRA bias "
                f"({m.bias_key})"]
    if found[1] != (m.out_features,):
        return [f"{m.base_bias}: base shape {list(found[1])}, adapter LoRA bias expects "
                f"[{m.out_features}]"]
    return []


def _replacement_mismatches(r: Replacement, base: Mapping[str, TensorInfo]) -> list[str]:
    found = base.get(r.base_name)
    if found is None:
        return [f"{r.base_name}: missing from the base (adapter tensor {r.key} replaces it)"]
    if found[1] != r.shape:
        return [f"{r.base_name}: base shape {list(found[1])}, adapter tensor {r.key} has "
                f"{list(r.shape)}"]
    return []
