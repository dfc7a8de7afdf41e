"""The fused bfloat16 pass gives torch's bits (PEFT's ``bf16_weight += f32_delta``) on values
chosen to catch every way it could differ: double rounding, ties, overflow, subnormals, signs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from merge_worker import kernels, lora_math
from merge_worker.lora_math import Crew

BF16_MAX = float(torch.finfo(torch.bfloat16).max)


def peft_order(weight: torch.Tensor, product: torch.Tensor, scale: float) -> torch.Tensor:
    """What PEFT does: ``delta = product * scale`` in float32, then ``weight += delta`` (float32
    sum, one rounding to bfloat16) -- with torch's own kernels."""
    delta = product * scale
    merged = weight.clone()
    merged += delta
    return merged


def fused(weight: torch.Tensor, product: torch.Tensor, scale: float
          ) -> tuple[torch.Tensor, bool]:
    out = torch.empty_like(weight)
    return out, kernels.add_scaled_bf16(weight, product, scale, out)


def assert_same_bits(weight: torch.Tensor, product: torch.Tensor, scale: float) -> None:
    expected = peft_order(weight, product, scale)
    out, finite = fused(weight, product, scale)
    assert finite == bool(torch.isfinite(expected).all())
    nan = torch.isnan(expected)  # a NaN's bits differ by torch code path; it fails a merge anyway
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out.view(torch.int16)[~nan], expected.view(torch.int16)[~nan])


@pytest.mark.parametrize("scale", [2.0, 0.5, 32 / math.sqrt(16), 16 / math.sqrt(7), 1 / 3, 1e-3])
def test_random_values_of_every_magnitude(scale: float) -> None:
    generator = torch.Generator().manual_seed(int(scale * 1000))
    n = 1 << 18
    exponents = torch.randint(-130, 40, (n,), generator=generator).float()
    weight = (torch.randn(n, generator=generator) * 2.0 ** exponents).bfloat16()
    product = torch.randn(n, generator=generator) * 2.0 ** (exponents - torch.randint(
        -8, 24, (n,), generator=generator).float())
    assert_same_bits(weight, product, scale)


def test_no_fused_multiply_add() -> None:
    """PEFT rounds ``p * s`` to float32 before the add; a fused multiply-add would not. Values
    where that changes the bfloat16 result: ``round(p * s)`` = 2**-8 + 2**-24, so ``1 + round(p *
    s)`` is a float32 tie that goes to the even 1 + 2**-8, itself a bfloat16 tie that goes to 1.0;
    the exact ``1 + p * s`` lies above the first tie, which an FMA rounds up to a float32 above the
    bfloat16 tie: 1 + 2**-7."""
    scale, weight = 3.0, torch.ones(1, dtype=torch.bfloat16)
    target = 2.0 ** -8 + 2.0 ** -24
    p = np.float32(target / scale)
    while np.float32(p * np.float32(scale)) != np.float32(target) or float(p) * scale <= target:
        p = np.nextafter(p, np.float32(1))
    product = torch.tensor([float(p)], dtype=torch.float32)
    fma = np.float32(1.0 + float(p) * scale)  # exact in float64, then one rounding
    assert float(torch.tensor(float(fma)).bfloat16()) == 1.0 + 2.0 ** -7
    out, finite = fused(weight, product, scale)
    assert finite and float(out) == 1.0
    assert_same_bits(weight, product, scale)


def test_ties_round_to_even() -> None:
    ulp = 2.0 ** -7  # of 1.0 in bfloat16
    weight = torch.tensor([1.0, 1.0 + ulp, -1.0, -(1.0 + ulp), 1.0, 1.0], dtype=torch.bfloat16)
    product = torch.tensor([ulp / 2, ulp / 2, -ulp / 2, -ulp / 2, ulp / 2 * 1.0001, ulp / 2.0001])
    out, finite = fused(weight, product, 1.0)
    assert finite
    assert out.float().tolist() == [1.0, 1.0 + 2 * ulp, -1.0, -(1.0 + 2 * ulp), 1.0 + ulp, 1.0]
    assert_same_bits(weight, product, 1.0)


def test_overflow_to_infinity_is_reported() -> None:
    weight = torch.tensor([BF16_MAX, BF16_MAX, -BF16_MAX, 1.0], dtype=torch.bfloat16)
    # half a bfloat16 ulp above the largest value rounds to inf; a little less does not
    half_ulp = 2.0 ** (127 - 8)
    product = torch.tensor([half_ulp, half_ulp * 0.99, 0.0, 0.0])
    out, finite = fused(weight, product, 1.0)
    assert not finite
    assert math.isinf(float(out[0])) and float(out[1]) == BF16_MAX
    assert_same_bits(weight, product, 1.0)
    out, finite = fused(weight[1:], product[1:], 1.0)
    assert finite  # the largest finite values are fine


@pytest.mark.parametrize(("weight", "product"), [
    (math.nan, 0.0), (0.0, math.nan), (math.inf, 0.0), (-math.inf, 1.0), (0.0, math.inf),
    (math.inf, -math.inf), (1.0, 3e38),
])
def test_non_finite_inputs_are_reported(weight: float, product: float) -> None:
    weights = torch.tensor([1.0, weight, 2.0], dtype=torch.bfloat16)
    products = torch.tensor([0.5, product, 0.25])
    out, finite = fused(weights, products, 2.0)
    assert not finite
    assert out.float()[[0, 2]].tolist() == [2.0, 2.5]
    assert_same_bits(weights, products, 2.0)


def nan_with_bits(bits: int) -> float:
    return float(torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32))


@pytest.mark.parametrize("bits", [0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8000, 0xFFFF8000, 0x7F800001])
def test_nan_payloads_that_would_carry_out_are_reported(bits: int) -> None:
    """Rounding adds 0x7FFF to the float32 bits: for these NaNs that carries into the sign bit or
    out of the word (0x7FFFFFFF would round to -0.0); torch tests for NaN first, so does ours."""
    product = torch.tensor([0.5, 0.0, 0.25])
    product[1] = nan_with_bits(bits)  # (x86 keeps a NaN's payload through mul and add)
    weights = torch.tensor([1.0, 1.0, 2.0], dtype=torch.bfloat16)
    out, finite = fused(weights, product, 2.0)
    assert not finite
    assert math.isnan(float(out[1])) and out.float()[[0, 2]].tolist() == [2.0, 2.5]
    assert_same_bits(weights, product, 2.0)


def test_a_nan_payload_in_the_adapter_fails_the_block() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(16, 1000), torch.randn(128, 16)
    a[3, 7] = nan_with_bits(0xFFFFFFFF)
    base = torch.randn(128, 1000).bfloat16()
    crew = Crew(2)
    try:
        assert not lora_math._add_lora(base, torch.empty_like(base), a, b, 0.7, False, crew)
    finally:
        crew.close()


def test_mismatched_sizes_or_dtypes_are_refused() -> None:
    weight, product = torch.ones(16, dtype=torch.bfloat16), torch.ones(16)
    for args in ((weight, product, torch.empty(8, dtype=torch.bfloat16)),  # out too short
                 (weight, product[:8], torch.empty_like(weight)),
                 (weight.float(), product, torch.empty_like(weight)),
                 (weight, product.double(), torch.empty_like(weight))):
        with pytest.raises(ValueError, match="one size"):
            kernels.add_scaled_bf16(args[0], args[1], 1.0, args[2])


def test_signed_zeros_and_subnormals() -> None:
    tiny = 2.0 ** -140  # a float32 subnormal, and a bfloat16 one (same exponent range)
    weight = torch.tensor([-0.0, -0.0, 0.0, tiny, -tiny, 2.0 ** -126], dtype=torch.bfloat16)
    product = torch.tensor([0.0, -0.0, -0.0, tiny, tiny / 3, -(2.0 ** -127)])
    for scale in (1.0, 0.5, 3.0):
        assert_same_bits(weight, product, scale)
    out, _ = fused(weight, product, 1.0)
    assert out.view(torch.int16)[:3].tolist() == [0, -32768, 0]  # +0, -0, +0 as IEEE says


def test_only_contiguous_views() -> None:
    weight = torch.ones(4, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError):
        kernels.add_scaled_bf16(weight.T, torch.ones(4, 4), 1.0, torch.empty_like(weight))


def test_bf16_row_blocks_use_the_fused_pass_and_keep_the_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks of 64 rows (remainder joined) through the fused pass equal PEFT's whole-tensor
    ``weight += (B @ A) * s``; a NaN in one block is reported."""
    monkeypatch.setattr(lora_math, "BLOCK_ELEMENTS", 64 * 1000)
    calls: list[int] = []
    original = lora_math.add_scaled_bf16

    def counting(*args: object) -> bool:
        calls.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(lora_math, "add_scaled_bf16", counting)
    torch.manual_seed(1)
    a, b = torch.randn(16, 1000), torch.randn(130, 16)
    base = torch.randn(130, 1000).bfloat16()
    expected = peft_order(base, b @ a, 0.7)
    crew = Crew(2)
    try:
        out = torch.empty_like(base)
        assert lora_math._add_lora(base, out, a, b, 0.7, False, crew)
        assert torch.equal(out.view(torch.int16), expected.view(torch.int16))
        assert len(calls) == 2  # 64 rows, then 66
        b[100, 3] = math.nan
        assert not lora_math._add_lora(base, out, a, b, 0.7, False, crew)
    finally:
        crew.close()
