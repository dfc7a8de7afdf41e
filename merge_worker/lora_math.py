"""The tensor maths of the merge: each output tensor exactly as PEFT builds it.

The order of operations, and why each step is what it is, is the merge spec in
:mod:`merge_worker.merge`'s docstring; this module implements steps 1-5 of it.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import NoReturn

import torch

from merge_worker.kernels import add_scaled_bf16
from registry.errors import ValidationFailed
from registry.lora_layout import AdapterLayout, LoraModule

FINITE_CHECKED = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})
BLOCK_ELEMENTS = 1 << 18  # rows of B @ A handled at once: 1 MiB of float32, cache-sized
# MKL computes a product of fewer than 4 rows with other kernels, whose float32 results differ
# in the last bit from the same rows of a larger product; blocks stay far above that.
MIN_BLOCK_ROWS = 64
# Threads sharing one tensor's row blocks (the calling thread included): one per CPU this
# process may use, at most 4 (the writer thread needs CPU too).
COMPUTE_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else os.cpu_count() or 1))  # (no affinity API on macOS)


class Merger:
    """Builds each output tensor exactly as PEFT's load + merge_and_unload would."""

    def __init__(self, layout: AdapterLayout, adapter: Mapping[str, torch.Tensor],
                 release: Callable[[str], None] | None = None) -> None:
        """``adapter``: the adapter's tensors by key, only ever read; ``release(key)``, if given,
        is called once a tensor has been used (a memory-mapped adapter drops its pages: a later
        read re-reads the file, while a write into the mapping could be lost, hence read-only)."""
        self.adapter = adapter
        self.release = release
        self.weights = {m.base_weight: m for m in layout.modules}
        self.biases = {m.base_bias: m for m in layout.modules if m.bias_key}
        self.replacements = {r.base_name: r.key for r in layout.replacements}
        self.crew = Crew(COMPUTE_THREADS)
        self.scratch = self.crew.scratch[0]
        self.merged = 0
        self.replaced = 0

    def __enter__(self) -> Merger:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.crew.close()

    def touches(self, name: str) -> bool:
        return name in self.weights or name in self.biases or name in self.replacements

    def build(self, name: str, base: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        """The output tensor ``name``: from ``base`` (a read-only view of the base tensor, None
        when the adapter replaces it), written into ``out`` (a free buffer of its dtype and
        shape) where possible. Raises ValidationFailed if it is not finite."""
        try:
            return self._build(name, base, out)
        finally:
            if self.release is not None:
                for key in self._keys(name):
                    self.release(key)

    def _keys(self, name: str) -> list[str]:
        """The adapter tensors that the output tensor ``name`` is built from."""
        keys = [self.replacements[name]] if name in self.replacements else []
        if name in self.weights:
            m = self.weights[name]
            keys += filter(None, (m.a_key, m.b_key, m.magnitude_key))
        if name in self.biases:  # (only modules with a bias_key are in self.biases)
            keys += filter(None, (self.biases[name].bias_key,))
        return keys

    def _build(self, name: str, base: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        if name in self.replacements:
            base = self.adapter[self.replacements[name]].to(out.dtype)
            self.replaced += 1
        assert base is not None
        module = self.weights.get(name)
        checked = False  # the plain LoRA path checks block by block, while each is in cache
        if module is not None and module.magnitude_key is None and module.kind != "embedding":
            a, b = self._factor(module.a_key, out), self._factor(module.b_key, out)
            if not _add_lora(base, out, a, b, module.scaling, module.kind == "conv1d", self.crew):
                _refuse_non_finite(name)
            weight, checked = out, True
        else:
            weight = out.copy_(base)
            if module is not None:
                weight = self._merge_weight(weight, module)
        self.merged += module is not None
        if name in self.biases:
            bias_module = self.biases[name]
            weight += self._factor(bias_module.bias_key, weight) * bias_module.scaling
            self.merged, checked = self.merged + 1, False
        if not checked:
            ensure_finite(name, weight)
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
              scaling: float, fifo: bool, crew: Crew) -> bool:
    """Linear.merge's ``weight += transpose(B @ A, fifo) * scaling`` from ``base`` into ``out``,
    by blocks of rows of ``B @ A`` that stay in cache, shared by ``crew``'s threads. Every
    element gets exactly PEFT's operations: its own dot product over r (blocks of at least
    ``MIN_BLOCK_ROWS`` rows of a product compute the values of the whole product), the float32
    product with ``scaling``, the float32 sum with the weight and one rounding to the weight's
    dtype (for a bfloat16 weight, all but the product in one pass: :mod:`merge_worker.kernels`).
    Blocks write disjoint parts of ``out``.
    Returns whether every element of ``out`` is finite (checked block by block, in cache)."""
    rows = max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(1, a.shape[1]))
    # the last block takes the remainder, so no block has fewer than ``rows`` rows unless the
    # whole product has (and is then computed in one piece, exactly as PEFT computes it)
    count = max(1, b.shape[0] // rows) if b.shape[0] else 0
    fused = (not fifo and base.dtype == out.dtype == torch.bfloat16 and a.dtype == torch.float32
             and base.is_contiguous() and out.is_contiguous())
    broken: list[int] = []  # blocks with a NaN or inf (list.append is atomic)

    def block(index: int, scratch: Scratch) -> None:
        rows_of = slice(index * rows, b.shape[0] if index == count - 1 else (index + 1) * rows)
        b_rows = b[rows_of]
        product = scratch.get(0, a.dtype, (b_rows.shape[0], a.shape[1]))
        torch.matmul(b_rows, a, out=product)
        if fused:
            if not add_scaled_bf16(base[rows_of], product, scaling, out[rows_of]):
                broken.append(index)
            return
        product.mul_(scaling)
        source, target = (base[:, rows_of], out[:, rows_of]) if fifo else (base[rows_of],
                                                                            out[rows_of])
        delta = _transpose(product, fifo)
        if target.dtype == delta.dtype:
            torch.add(source, delta, out=target)
        else:  # torch's mixed-dtype "weight += delta", without its slow kernel
            wide = scratch.get(1, delta.dtype, tuple(target.shape))
            wide.copy_(source)
            wide += delta
            target.copy_(wide)
        if not _finite(target):
            broken.append(index)

    crew.run(count, block)
    return not broken


Job = Callable[[int, "Scratch"], None]


class Crew:
    """The calling thread and ``threads - 1`` helper threads run ``job(i, scratch)`` for the
    ``i`` of one task, each thread taking the next ``i`` when it is free (so a helper that the
    OS does not schedule, on a busy machine, delays nothing but its own block). Each thread has
    its own :class:`Scratch`. Torch releases the GIL inside its kernels, so the threads compute
    in parallel; each runs torch single-threaded."""

    def __init__(self, threads: int) -> None:
        self.scratch = [Scratch() for _ in range(threads)]
        self._tasks: list[queue.SimpleQueue[Callable[[Scratch], None] | None]] = []
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._helpers: list[threading.Thread] = []
        for scratch in self.scratch[1:]:
            tasks: queue.SimpleQueue[Callable[[Scratch], None] | None] = queue.SimpleQueue()
            helper = threading.Thread(target=self._serve, args=(tasks, scratch),
                                      name="merge-rows", daemon=True)
            helper.start()
            self._tasks.append(tasks)
            self._helpers.append(helper)

    def run(self, count: int, job: Job) -> None:
        """Run ``job(i, scratch)`` for every ``i`` in ``range(count)``; returns when all have
        run, raising the first error (the other threads then stop taking blocks)."""
        taken, lock, failed = itertools.count(), threading.Lock(), threading.Event()

        def drain(scratch: Scratch) -> None:
            while not failed.is_set():
                with lock:
                    index = next(taken)
                if index >= count:
                    return
                try:
                    job(index, scratch)
                except BaseException:
                    failed.set()
                    raise

        helpers = self._tasks[:max(0, count - 1)]
        for tasks in helpers:
            tasks.put(drain)
        errors: list[BaseException] = []
        try:
            drain(self.scratch[0])
        except BaseException as exc:
            errors.append(exc)
        for _ in helpers:
            error = self._done.get()
            if error is not None:
                errors.append(error)
        if errors:
            raise errors[0]

    def close(self) -> None:
        for tasks in self._tasks:
            tasks.put(None)
        for helper in self._helpers:
            helper.join()

    def _serve(self, tasks: queue.SimpleQueue[Callable[[Scratch], None] | None],
               scratch: Scratch) -> None:
        # OpenMP's thread count is per thread: without this, each torch op here would start
        # its own team of threads.
        torch.set_num_threads(1)
        while (task := tasks.get()) is not None:
            try:
                task(scratch)
            except BaseException as exc:  # handed to the thread that called run()
                self._done.put(exc)
            else:
                self._done.put(None)


def ensure_finite(name: str, tensor: torch.Tensor) -> None:
    if not _finite(tensor):
        _refuse_non_finite(name)


def _finite(tensor: torch.Tensor) -> bool:
    """NaN propagates through min/max and inf shows in them: one cheap pass, no mask."""
    if tensor.dtype not in FINITE_CHECKED or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(low) and math.isfinite(high)


def _refuse_non_finite(name: str) -> NoReturn:
    raise ValidationFailed(f"merged tensor {name} has NaN or infinite values; the adapter "
                           "(or the base) is broken", tensor=name)


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
