"""One fused pass for the commonest merge: a bfloat16 weight plus a float32 LoRA delta.

PEFT's ``W += delta`` on a bfloat16 ``W`` (with ``delta = (B @ A) * s`` in float32) computes,
per element, the float32 product ``p * s`` (rounded), the float32 sum with ``W`` widened to
float32 (rounded) and one rounding of that sum to bfloat16, to nearest, ties to even. In torch
that is five passes over each block (the scaling, the widening, the add, the narrowing, and the
finite check); :func:`add_scaled_bf16` does all of it in one pass over the block, with the same
IEEE operations in the same order (no fused multiply-add: numba does not contract ``a * b + c``
unless asked to with fastmath), so its output is bit for bit torch's, and PEFT's.

bfloat16 is the upper half of a float32: widening is a 16-bit shift, and the rounding is torch's
own (``c10::BFloat16``'s round_to_nearest_even: a NaN becomes the quiet NaN ``0x7FC0``, anything
else gets ``0x7FFF`` plus the lowest kept bit added, then the shift). The NaN test must come
first: a NaN's payload can carry that addition into the sign bit or out of the word (``0x7FFFFFFF``
would round to ``-0.0``). torch's vectorised copy writes ``0xFFFF`` for a NaN instead; a NaN fails
the merge either way, so only NaN-ness has to match.

Compiled when this module is imported (numba caches the machine code on disk where it can), so a
worker pays it once, at start, not in its first merge.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

BF16_EXPONENT = 0x7F80  # all exponent bits set: inf or NaN


@intrinsic  # type: ignore[untyped-decorator]
def _float_from_bits(typingctx: object, bits: types.Type) -> tuple[types.Signature, object]:
    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: list[ir.Value]
                ) -> ir.Value:
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic  # type: ignore[untyped-decorator]
def _bits_from_float(typingctx: object, value: types.Type) -> tuple[types.Signature, object]:
    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: list[ir.Value]
                ) -> ir.Value:
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


_SIGNATURE = types.uint32(types.uint16[::1], types.float32[::1], types.float32,
                          types.uint16[::1])


def _add_scaled_bf16(weight, product, scale, out):  # type: ignore[no-untyped-def]
    worst = np.uint32(0)
    for i in range(weight.size):
        wide = _float_from_bits(np.uint32(weight[i]) << np.uint32(16))
        total = _bits_from_float(wide + product[i] * scale)
        rounded = (total + np.uint32(0x7FFF) + ((total >> np.uint32(16)) & np.uint32(1))
                   ) >> np.uint32(16)
        if (total & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN
            rounded = np.uint32(0x7FC0)
        worst = max(worst, rounded & np.uint32(0x7FFF))
        out[i] = np.uint16(rounded)
    return worst


def _compile(cache: bool) -> Callable[..., np.uint32]:
    jit = numba.njit(_SIGNATURE, cache=cache, nogil=True, boundscheck=False,
                     error_model="numpy")
    return jit(_add_scaled_bf16)  # type: ignore[no-any-return]


try:
    _fused = _compile(cache=True)
except (RuntimeError, OSError):  # nowhere writable to cache it (or no room): compile in memory
    _fused = _compile(cache=False)


def add_scaled_bf16(weight: torch.Tensor, product: torch.Tensor, scale: float,
                    out: torch.Tensor) -> bool:
    """``out = bfloat16(float32(weight) + product * scale)``, element by element, with PEFT's
    roundings; returns whether every element of ``out`` is finite. ``weight`` and ``out`` are
    contiguous bfloat16 tensors, ``product`` a contiguous float32 tensor, all of one size
    (anything else raises ValueError: the loop itself checks no bounds)."""
    if not (weight.dtype == out.dtype == torch.bfloat16 and product.dtype == torch.float32
            and weight.numel() == product.numel() == out.numel()):
        raise ValueError("add_scaled_bf16 needs bfloat16 weight and out and a float32 product "
                         "of one size")
    worst = _fused(_u16(weight), product.view(-1).numpy(), np.float32(scale), _u16(out))
    return int(worst) < BF16_EXPONENT


def _u16(tensor: torch.Tensor) -> np.ndarray:
    return tensor.view(-1).view(torch.int16).numpy().view(np.uint16)
