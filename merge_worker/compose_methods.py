"""The per-module maths of a composition: PEFT's ``add_weighted_adapter`` operations, in order.

Each function takes one target module's factors from the inputs that have it (in input order,
as PEFT loads them: float32, or float64 on a float64 base) and returns the composed
``(lora_A, lora_B)``. The expressions are PEFT 0.21's (``peft/tuners/lora/model.py``), written the
same way so that torch runs the same kernels in the same order; the combinations are PEFT's own
functions (``peft.utils.merge_utils``), not copies:

* ``cat``: ``A_i * weight_i * scaling_i`` stacked along the rank, ``B_i`` side by side, written
  into zeros of the new rank in the new adapter's dtype (the base's: PEFT allocates the new
  adapter like the base layer and copies into it);
* ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: ``A`` and ``B``
  combined apart, with weights ``sqrt(|w * s|)`` (the sign on ``A``'s side only) as float32
  tensors, cast back to the first input's dtype;
* ``*_svd``: ``delta_i = transpose(B_i @ A_i, fan_in_fan_out) * s_i`` (``get_delta_weight``),
  combined with the raw weights, transposed back for Conv1D and embeddings, then
  ``torch.linalg.svd``; ``B = U[:, :r] @ diag(S[:r])``, ``A = Vh[:r]``, optionally clamped at a
  quantile. The energy kept is ``sum(S[:r]^2) / sum(S^2)`` (computed in float64).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch

Pair = tuple[torch.Tensor, torch.Tensor]
PEFT_MERGE_UTILS = "peft.utils.merge_utils"


def _peft_merge_utils() -> ModuleType:
    """PEFT's own ``peft/utils/merge_utils.py``, executed without importing the ``peft``
    package: its ``__init__`` imports transformers (~170 MiB and seconds per process), while
    merge_utils needs nothing but torch. The installed PEFT's file, so PEFT's own functions;
    the one already imported when the process has imported peft."""
    loaded = sys.modules.get(PEFT_MERGE_UTILS)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("peft")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("composition needs PEFT installed (its merge_utils)")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "merge_utils.py"
    file_spec = importlib.util.spec_from_file_location("_lorareg_peft_merge_utils", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


merge_utils = _peft_merge_utils()


@dataclass(frozen=True)
class Factors:
    """One input's factors for a module, as PEFT holds them after loading."""

    a: torch.Tensor  # (r, in): lora_A.weight, or lora_embedding_A (r, num_embeddings)
    b: torch.Tensor  # (out, r)
    scaling: float  # alpha / r, or alpha / sqrt(r) with rsLoRA
    weight: float  # the user's weight for this input


@dataclass(frozen=True)
class Pruning:
    density: float | None
    majority_sign_method: str | None


@dataclass(frozen=True)
class SvdOptions:
    rank: int
    clamp: float | None
    full_matrices: bool
    transposed: bool  # Conv1D (fan_in_fan_out) or embedding: PEFT transposes the delta back


def combine(method: str, tensors: list[torch.Tensor], weights: torch.Tensor,
            pruning: Pruning) -> torch.Tensor:
    """PEFT's combination for ``method`` (``x_svd`` combines like ``x``; ``svd`` like
    ``linear``), called exactly as ``add_weighted_adapter`` calls it."""
    base = method.removesuffix("_svd") if method != "svd" else "linear"
    result: torch.Tensor
    if base == "linear":
        result = merge_utils.task_arithmetic(tensors, weights)
        return result
    density = pruning.density
    if density is None:
        raise ValueError(f"{method} needs a density")
    sign: Literal["total", "frequency"] = (
        "frequency" if pruning.majority_sign_method == "frequency" else "total")
    if base == "magnitude_prune":
        result = merge_utils.magnitude_prune(tensors, weights, density)
    elif base == "dare_linear":
        result = merge_utils.dare_linear(tensors, weights, density)
    elif base == "ties":
        result = merge_utils.ties(tensors, weights, density, sign)
    elif base == "dare_ties":
        result = merge_utils.dare_ties(tensors, weights, density, sign)
    else:
        raise ValueError(f"unknown composition method {method!r}")
    return result


def compose_cat(parts: Sequence[Factors], rank: int, dtype: torch.dtype) -> Pair:
    loras_a = torch.cat([p.a * p.weight * p.scaling for p in parts], dim=0)
    loras_b = torch.cat([p.b for p in parts], dim=1)
    a = torch.zeros((rank, loras_a.shape[1]), dtype=dtype)
    b = torch.zeros((loras_b.shape[0], rank), dtype=dtype)
    a[: loras_a.shape[0], :] = loras_a
    b[:, : loras_b.shape[1]] = loras_b
    return a, b


def compose_factors(method: str, parts: Sequence[Factors], pruning: Pruning) -> Pair:
    """``_generalized_task_arithmetic_weighted_adapter``: A and B combined apart."""
    weights_a, weights_b = [], []
    for p in parts:
        # negative weights: sqrt of the magnitude on both sides, the sign on A's only
        weight_with_scaling = p.weight * p.scaling
        sign = 1 if weight_with_scaling >= 0 else -1
        weights_a.append(math.sqrt(abs(weight_with_scaling)) * sign)
        weights_b.append(math.sqrt(abs(weight_with_scaling)))
    dtype = parts[0].a.dtype
    a = combine(method, [p.a for p in parts], torch.tensor(weights_a), pruning)
    b = combine(method, [p.b for p in parts], torch.tensor(weights_b), pruning)
    return a.to(dtype), b.to(dtype)


def compose_svd(method: str, parts: Sequence[Factors], pruning: Pruning,
                svd: SvdOptions) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``_svd_generalized_task_arithmetic_weighted_adapter``; also returns the energy kept."""
    deltas = [_transpose(p.b @ p.a, svd.transposed) * p.scaling for p in parts]
    delta = combine(method, deltas, torch.tensor([p.weight for p in parts]), pruning)
    del deltas  # the inputs' dense deltas: not needed during the SVD (PEFT keeps them)
    if svd.transposed:
        delta = delta.T
    u, s, vh = torch.linalg.svd(delta, full_matrices=svd.full_matrices, driver=None)
    energy = kept_energy(s, svd.rank)
    u = u[:, : svd.rank]
    s = s[: svd.rank]
    u = u @ torch.diag(s)
    vh = vh[: svd.rank, :]
    if svd.clamp is not None:
        dist = torch.cat([u.flatten(), vh.flatten()])
        hi_val = torch.quantile(dist, svd.clamp)
        low_val = -hi_val
        u = u.clamp(low_val, hi_val)
        vh = vh.clamp(low_val, hi_val)
    return vh, u, energy


def kept_energy(singular_values: torch.Tensor, rank: int) -> float:
    """Share of the delta's squared Frobenius norm the rank-``rank`` truncation keeps (1.0 for
    an all-zero delta: nothing is lost)."""
    squares = singular_values.to(torch.float64) ** 2
    total = float(squares.sum())
    return float(squares[:rank].sum()) / total if total > 0 else 1.0


def _transpose(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    return weight.T if transposed else weight
