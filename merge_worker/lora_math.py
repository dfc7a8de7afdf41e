"""The tensor maths of the merge: each output tensor exactly as PEFT builds it.

The order of operations, and why each step is what it is, is the merge spec in
:mod:`merge_worker.merge`'s docstring; this module implements steps 1-5 of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from registry.lora_layout import AdapterLayout, LoraModule

BLOCK_ELEMENTS = 1 << 18  # rows of B @ A handled at once: 1 MiB of float32, cache-sized


class Merger:
    """Builds each output tensor exactly as PEFT's load + merge_and_unload would."""

    def __init__(self, layout: AdapterLayout, adapter: Mapping[str, torch.Tensor]) -> None:
        self.adapter = adapter
        self.weights = {m.base_weight: m for m in layout.modules}
        self.biases = {m.base_bias: m for m in layout.modules if m.bias_key}
        self.replacements = {r.base_name: r.key for r in layout.replacements}
        self.scratch = Scratch()
        self.merged = 0
        self.replaced = 0

    def touches(self, name: str) -> bool:
        return name in self.weights or name in self.biases or name in self.replacements

    def build(self, name: str, base: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        """The output tensor ``name``: from ``base`` (a read-only view of the base tensor, None
        when the adapter replaces it), written into ``out`` (a free buffer of its dtype and
        shape) where possible."""
        if name in self.replacements:
            base = self.adapter[self.replacements[name]].to(out.dtype)
            self.replaced += 1
        assert base is not None
        module = self.weights.get(name)
        if module is not None and module.magnitude_key is None and module.kind != "embedding":
            a, b = self._factor(module.a_key, out), self._factor(module.b_key, out)
            _add_lora(base, out, a, b, module.scaling, module.kind == "conv1d", self.scratch)
            weight = out
        else:
            weight = out.copy_(base)
            if module is not None:
                weight = self._merge_weight(weight, module)
        self.merged += module is not None
        if name in self.biases:
            bias_module = self.biases[name]
            weight += self._factor(bias_module.bias_key, weight) * bias_module.scaling
            self.merged += 1
        return weight

    def _factor(self, key: str | None, weight: torch.Tensor) -> torch.Tensor:
        assert key is not None
        compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return self.adapter[key].to(compute)

    def _merge_weight(self, weight: torch.Tensor, m: LoraModule) -> torch.Tensor:
        """Embeddings and DoRA, literally as PEFT's Embedding.merge / Dora*Variant.merge_unsafe."""
        a, b = self._factor(m.a_key, weight), self._factor(m.b_key, weight)
        embedding = m.kind == "embedding"
        fifo = m.kind == "conv1d"
        product = self.scratch.get(0, a.dtype, (b.shape[0], a.shape[1]))
        torch.matmul(b, a, out=product)  # lora_B @ lora_A
        product.mul_(m.scaling)  # "transpose(...) * scaling": the same values, in place
        delta = _transpose(product, embedding or fifo)
        if m.magnitude_key is not None:
            magnitude = self._factor(m.magnitude_key, weight)
            if embedding:
                return _dora_embedding(weight, delta, magnitude)
            return _dora_linear(weight, delta, magnitude, fifo)
        weight += delta.to(weight.dtype)  # Embedding.merge rounds the delta first
        return weight


def _add_lora(base: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              scaling: float, fifo: bool, scratch: Scratch) -> None:
    """Linear.merge's ``weight += transpose(B @ A, fifo) * scaling`` from ``base`` into ``out``,
    by blocks of rows of ``B @ A`` that stay in cache. Every element gets exactly PEFT's
    operations: its own dot product over r (row blocks of a matmul compute the same values),
    the float32 product with ``scaling``, the float32 sum with the weight and one rounding to
    the weight's dtype."""
    rows = max(1, BLOCK_ELEMENTS // a.shape[1])
    for start in range(0, b.shape[0], rows):
        b_rows = b[start:start + rows]
        product = scratch.get(0, a.dtype, (b_rows.shape[0], a.shape[1]))
        torch.matmul(b_rows, a, out=product)
        product.mul_(scaling)
        block = slice(start, start + rows)
        source, target = (base[:, block], out[:, block]) if fifo else (base[block], out[block])
        delta = _transpose(product, fifo)
        if target.dtype == delta.dtype:
            torch.add(source, delta, out=target)
        else:  # torch's mixed-dtype "weight += delta", without its slow kernel
            wide = scratch.get(1, delta.dtype, tuple(target.shape))
            wide.copy_(source)
            wide += delta
            target.copy_(wide)


class Scratch:
    """Float buffers reused across tensors: no allocation (and page faults) per tensor."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def get(self, slot: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get((slot, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[(slot, dtype)] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


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
