"""The dare methods' random draws, reproducing PEFT's own bit for bit.

PEFT's ``dare_linear``/``dare_ties`` (``peft.utils.merge_utils.random_pruning``) draw their masks
with ``torch.bernoulli`` from torch's global CPU generator. "The same seed" therefore means: what
``torch.manual_seed(seed)`` followed by ``model.add_weighted_adapter(...)`` draws. Between the two,
PEFT first creates the new adapter in every target module (``inject_adapter``), and that
initialisation draws from the same generator (``nn.Linear`` construction and, with
``init_lora_weights=True``, a second Kaiming init of ``lora_A``; ``torch.randn`` for embeddings);
then it walks the modules in the model's ``named_modules()`` order, drawing, per module, one mask
per input for ``lora_A`` then one per input for ``lora_B`` (the ``*_svd`` methods: one per
input's delta).

:class:`PeftRandom` replays exactly that: a generator seeded as ``torch.manual_seed(seed)`` seeds
the default one, the initialisation replayed by building PEFT's own LoRA layers, one module at a
time, around stand-in base layers on the ``meta`` device (so only the adapter's own tensors are
made, and only they draw), then the per-module draws by PEFT's own ``merge_utils`` functions.
This equals PEFT's draws when the modules come in the base model's order (give
``module_order``, e.g. from :func:`module_order_from_config`); sorted by name instead (no base
config at hand), the result is still reproducible by seed but not PEFT's draws.

PEFT's functions use the process-wide generator, so each use swaps this composition's state in
and out under a lock (``torch.random.fork_rng`` restores the caller's). Other threads of the
process must not draw from torch's global generator meanwhile (nothing in the worker does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from merge_worker.compose_plan import ModulePlan

_LOCK = threading.Lock()
_SCRATCH_ADAPTER = "composed"


class PeftRandom:
    """torch's global CPU generator as ``add_weighted_adapter`` sees it after
    ``torch.manual_seed(seed)``, kept apart from the process's own."""

    def __init__(self, seed: int) -> None:
        self._state = torch.Generator().manual_seed(seed).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the body with this state as torch's global CPU generator."""
        with _LOCK, torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._state)
            try:
                yield
            finally:
                self._state = torch.get_rng_state()

    def replay_initialisation(self, modules: Iterable[ModulePlan], config: Mapping[str, Any],
                              rank: int) -> None:
        """Draw what PEFT's ``inject_adapter`` draws for the new adapter (``config``: its
        ``adapter_config.json`` content), module by module in the given order."""
        from peft import PeftConfig

        loader: Any = PeftConfig  # its classmethods are untyped
        peft_config = loader.from_peft_type(**config)
        with self.active():
            for module in modules:
                _build_peft_layer(module, peft_config, rank)


def _build_peft_layer(module: ModulePlan, config: Any, rank: int) -> None:
    from peft.tuners.lora.layer import Embedding, Linear

    # The base layer is on the meta device: it draws nothing and holds no memory; PEFT creates
    # the adapter's own tensors on the CPU (drawing), then moves them to the base's device.
    if module.kind == "embedding":
        base: nn.Module = nn.Embedding(module.in_features, module.out_features, device="meta")
        Embedding(base, _SCRATCH_ADAPTER, config=config, r=rank, lora_alpha=rank)
    else:
        base = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        Linear(base, _SCRATCH_ADAPTER, config=config, r=rank, lora_alpha=rank)


def module_order_from_config(config: Mapping[str, Any]) -> list[str]:
    """The base model's ``named_modules()`` order, from its ``config.json`` alone (the model is
    built on the meta device: no weights are read or allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    model_config = AutoConfig.for_model(values.pop("model_type"), **values)
    auto: Any = AutoModelForCausalLM  # from_config is untyped
    with torch.device("meta"):
        model = auto.from_config(model_config)
    return [name for name, _ in model.named_modules() if name]
