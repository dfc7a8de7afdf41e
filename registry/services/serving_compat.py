"""The serving rules of an inference engine, in one place: can an engine configured like this
serve this version, and can it hold this whole desired set? Used by ``lorareg check`` (a pool
or the ``vllm`` profile), by promotion and pinning (a version entering a pool's desired set),
by pool changes, and by export. Pure: no database, no blob store.

What vLLM does, read from its source (vLLM 0.32: ``vllm/lora/peft_helper.py``,
``vllm/lora/worker_manager.py``, ``vllm/lora/lora_model.py``, ``vllm/lora/model_manager.py``,
``vllm/config/lora.py``), and the rule each behaviour gives:

* It refuses to load an adapter whose largest rank (``r`` or any ``rank_pattern`` value) exceeds
  ``--max-lora-rank`` (default 16; one of 1, 8, 16, 32, 64, 128, 256, 320, 512), DoRA,
  ``lora_bias``, ``bias`` other than ``none``, ``modules_to_save`` other than a classification
  head (``classifier``/``score``), base-rewriting inits (PiSSA, OLoRA, CorDA, LoftQ), aLoRA,
  ``layer_replication``, BD-LoRA and QA-LoRA: each is a problem here.
* It loads a LoRA onto every linear module of the model and onto the architecture's
  ``embedding_modules`` only (:mod:`registry.vllm_architectures`); an adapter with a LoRA on
  another embedding is refused. Linear targets were checked against the base's tensor
  manifest at push (:mod:`registry.compat`).
* With ``--lora-target-modules`` it wraps only those modules (a packed runtime module such as
  ``qkv_proj`` is wrapped when it or any of ``q_proj``/``k_proj``/``v_proj`` is named, and then
  serves all three), **but still loads** adapters that target others and serves them without
  those deltas: silently the base model's output there. A problem here.
* It ignores whole ``embed_tokens``/``lm_head`` weights saved with an adapter (a resized
  vocabulary), and PEFT options it does not know (trainable tokens, Arrow, ...): the adapter
  would serve without them. Problems here.
* It casts adapter tensors to the LoRA dtype (the model's ``--dtype`` by default): F32, F16 and
  BF16 tensors are castable; other dtypes are refused here.
* It keeps at most ``--max-cpu-loras`` adapters in memory (default ``--max-loras``, default 1)
  and evicts the least recently used: a desired set larger than that would be reloaded from
  disk over and over, so it is a problem here; so is one whose weights, in the engine's dtype,
  exceed the pool's declared ``max_adapter_memory``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.errors import BadRequest, InvalidAdapter
from registry.lora_layout import (
    AdapterLayout,
    LoraModule,
    TensorInfo,
    analyze_adapter,
    parse_lora_config,
)
from registry.units import human_size
from registry.vllm_architectures import (
    ARCHITECTURES,
    DEFAULT_MAX_LORA_RANK,
    MAX_LORA_RANKS,
    VLLM_VERSION,
    Architecture,
)

ENGINES = ("vllm",)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
DTYPE_ALIASES = {"bf16": "bfloat16", "half": "float16", "fp16": "float16", "float": "float32",
                 "fp32": "float32"}
CASTABLE = frozenset({"F32", "F16", "BF16"})
CLASSIFIER_HEADS = frozenset({"classifier", "score"})
EMBEDDINGS = frozenset({"embed_tokens", "lm_head", "wte"})
# init_lora_weights values that only set initial weights (vLLM's PEFTHelper._init_is_supported)
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
# Config fields vLLM refuses outright (peft_helper.py), with how the refusal reads.
REFUSED_FIELDS = {
    "use_dora": "DoRA (use_dora) is not supported by vLLM",
    "lora_bias": "LoRA bias (lora_bias) is not supported by vLLM",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported by "
                               "vLLM",
    "layer_replication": "layer_replication is not supported by vLLM",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported by vLLM",
    "use_qalora": "QA-LoRA (use_qalora) is not supported by vLLM",
}
# PEFT options vLLM does not read at all: it would serve the adapter without them.
IGNORED_FIELDS = {
    "trainable_token_indices": "trainable tokens",
    "arrow_config": "Arrow routing",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
    "megatron_config": "Megatron parallel layers",
}
# The packing most architectures share, for pools whose architecture is not named.
GENERIC = Architecture(packed={"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                               "gate_up_proj": ("gate_proj", "up_proj")})
MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,127}\Z")
MAX_TARGETS = 64


@dataclass(frozen=True)
class Engine:
    """What the rules know of an engine: a pool's settings, or the ``vllm`` profile's.

    ``dtype`` None: any castable dtype will do (the profile does not know the model's).
    ``base_fingerprint`` None: the base is not checked. ``require_tensors``: a version whose
    tensor header is not at hand is refused rather than checked from its config alone.
    """

    label: str
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_loras: int = 1
    max_cpu_loras: int | None = None
    dtype: str | None = None
    target_modules: tuple[str, ...] | None = None
    architecture: str | None = None
    base_fingerprint: str | None = None
    max_adapter_memory: int | None = None
    require_tensors: bool = True

    @property
    def cpu_slots(self) -> int:
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.architecture] if self.architecture else GENERIC


VLLM_PROFILE = Engine(label="profile vllm", require_tensors=False)
"""``vllm serve``'s own defaults (max rank 16, one adapter at a time), without a base."""


@dataclass(frozen=True)
class Candidate:
    """A version as the rules see it. ``tensors`` None: its header is not at hand."""

    ref: str
    peft_config: Mapping[str, Any]
    base_fingerprint: str | None
    verified: bool
    tensors: Mapping[str, TensorInfo] | None


# --- one version ----------------------------------------------------------------------------


def version_problems(engine: Engine, c: Candidate) -> list[str]:
    """Why ``engine`` cannot serve ``c`` correctly, one line each (empty: it can)."""
    found = base_problems(engine, c) + config_problems(engine, c.peft_config)
    if c.tensors is None:
        if engine.require_tensors:
            found.append("its tensor header is not recorded and the blob store was not read: "
                         "check it with `lorareg check REF --pool NS/POOL`")
        return found
    try:
        layout = analyze_adapter(parse_lora_config(c.peft_config), c.tensors)
    except InvalidAdapter as exc:
        return [*found, f"it is not a LoRA adapter lorareg can read: {exc.detail}"]
    return found + tensor_problems(engine, layout, c.tensors)


def base_problems(engine: Engine, c: Candidate) -> list[str]:
    if engine.base_fingerprint is None:
        return []
    if not c.verified or c.base_fingerprint is None:
        return ["it is not verified against a registered base (register its base first)"]
    if c.base_fingerprint != engine.base_fingerprint:
        return [f"it was trained on base {c.base_fingerprint}, but {engine.label} serves base "
                f"{engine.base_fingerprint}"]
    return []


def config_problems(engine: Engine, config: Mapping[str, Any]) -> list[str]:
    """What vLLM refuses or ignores, read from ``adapter_config.json`` alone."""
    found = [text for key, text in REFUSED_FIELDS.items() if config.get(key)]
    found += [f"{key} ({label}): vLLM ignores it and would serve the adapter without it"
              for key, label in IGNORED_FIELDS.items() if config.get(key)]
    rank = max_rank(config)
    if rank > engine.max_lora_rank:
        found.append(f"rank {rank} exceeds the max LoRA rank {engine.max_lora_rank} of "
                     f"{engine.label} (vLLM --max-lora-rank)")
    if (config.get("bias") or "none") != "none":
        found.append(f"bias={config.get('bias')!r} is not supported by vLLM (needs 'none')")
    extra = sorted(set(_strings(config.get("modules_to_save"))) - CLASSIFIER_HEADS)
    if extra:
        found.append(f"modules_to_save {extra} are not supported by vLLM (only a "
                     "classification head: 'classifier' or 'score')")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        found.append(f"init_lora_weights={init!r} rewrites the base weights, which vLLM does "
                     "not do (convert the adapter with PEFT's "
                     "path_initial_model_for_weight_conversion)")
    if config.get("target_parameters"):
        found.append("target_parameters (LoRA on raw parameters such as MoE experts) is not "
                     "checked against engines by lorareg yet")
    return found


def max_rank(config: Mapping[str, Any]) -> int:
    """The largest rank vLLM compares with --max-lora-rank: ``r`` and every rank_pattern value."""
    values = [config.get("r"), *dict(config.get("rank_pattern") or {}).values()]
    return max((v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)


def tensor_problems(engine: Engine, layout: AdapterLayout,
                    tensors: Mapping[str, TensorInfo]) -> list[str]:
    """What vLLM refuses or drops, read from the tensors: dtypes, targets, replacements."""
    found = _dtype_problems(engine, tensors)
    found += _embedding_problems(engine, layout.modules)
    found += _target_problems(engine, layout.modules)
    found += _experts_problems(layout.modules)
    resized = sorted(r.base_name for r in layout.replacements
                     if _suffix(r.base_name.rsplit(".", 1)[0]) in EMBEDDINGS)
    if resized:
        found.append(f"it carries whole {', '.join(resized)} weights (a resized vocabulary): "
                     "vLLM ignores them and would serve with the base's embeddings")
    return found


def _dtype_problems(engine: Engine, tensors: Mapping[str, TensorInfo]) -> list[str]:
    bad = sorted({dtype for dtype, _ in tensors.values()} - CASTABLE)
    if not bad:
        return []
    target = engine.dtype or "the engine's dtype"
    return [f"tensor dtype {', '.join(bad)} cannot be cast to {target} (vLLM serves F32, F16 "
            "and BF16 adapter tensors)"]


def _embedding_problems(engine: Engine, modules: Sequence[LoraModule]) -> list[str]:
    suffixes = sorted({_suffix(m.name) for m in modules
                       if m.kind == "embedding" or _suffix(m.name) in EMBEDDINGS})
    allowed = set(engine.arch.embeddings)
    refused = [s for s in suffixes if s not in allowed]
    if not refused:
        return []
    if engine.architecture is None:
        return [f"LoRA on {', '.join(refused)}: vLLM serves embedding LoRA only for some "
                f"architectures, and {engine.label} names none (check against a pool that "
                "names its architecture)"]
    return [f"LoRA on {', '.join(refused)} is not served by vLLM for {engine.architecture} "
            f"(it serves embedding LoRA on {', '.join(allowed) or 'no module'})"]


def _target_problems(engine: Engine, modules: Sequence[LoraModule]) -> list[str]:
    if engine.target_modules is None:
        return []
    outside: dict[str, int] = {}
    for m in modules:
        if not in_targets(m.name, engine.target_modules, engine.arch.packed):
            outside[_suffix(m.name)] = outside.get(_suffix(m.name), 0) + 1
    if not outside:
        return []
    names = ", ".join(f"{s} ({n} module{'s' if n > 1 else ''})" for s, n in sorted(outside.items()))
    return [f"LoRA on {names} is outside the target modules of {engine.label} "
            f"({', '.join(engine.target_modules)}): vLLM would load the adapter and silently "
            "serve those modules without it"]


def _experts_problems(modules: Sequence[LoraModule]) -> list[str]:
    if any(".experts." in f".{m.name}." for m in modules):
        return ["LoRA on MoE experts is not checked against engines by lorareg yet"]
    return []


def in_targets(module: str, targets: Iterable[str], packed: Mapping[str, Sequence[str]]
               ) -> bool:
    """Whether vLLM applies an adapter's LoRA on ``module`` under ``--lora-target-modules``:
    vLLM's ``is_in_target_modules``, asked about the runtime module holding it (``q_proj``
    lives in ``qkv_proj``, which is wrapped when it or any module packed in it is a target)."""
    wanted = set(targets)
    prefix, _, suffix = module.rpartition(".")
    parent = next((p for p, parts in packed.items() if suffix in parts), suffix)
    runtime = f"{prefix}.{parent}" if prefix else parent
    if parent in wanted or runtime in wanted or module in wanted:
        return True
    if any(child in wanted for child in packed.get(parent, ())):
        return True
    return any(parent in parts and p in wanted for p, parts in packed.items())


def _suffix(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


# --- a whole desired set --------------------------------------------------------------------


def adapter_bytes(engine: Engine, tensors: Mapping[str, TensorInfo]) -> int:
    """Bytes of the adapter's tensors once cast to the engine's dtype (4 bytes when unknown)."""
    size = DTYPE_BYTES.get(engine.dtype or "float32", 4)
    return sum(math.prod(shape) for _, shape in tensors.values()) * size


def set_problems(engine: Engine, members: Sequence[tuple[str, Mapping[str, TensorInfo] | None]]
                 ) -> list[str]:
    """Why ``engine`` cannot hold all of ``members`` (``(ref, tensors)``) at once."""
    found: list[str] = []
    if len(members) > engine.cpu_slots:
        found.append(f"the desired set would hold {len(members)} versions, more than the "
                     f"{engine.cpu_slots} adapters {engine.label} keeps in memory "
                     "(--max-cpu-loras): vLLM would keep evicting and reloading them")
    if engine.max_adapter_memory is not None:
        known = [t for _, t in members if t is not None]
        total = sum(adapter_bytes(engine, t) for t in known)
        if total > engine.max_adapter_memory:
            found.append(f"the desired set would take {human_size(total)} of adapter weights "
                         f"in {engine.dtype}, more than the {human_size(engine.max_adapter_memory)}"
                         f" {engine.label} declares (max_adapter_memory)")
    return found


# --- engine settings ------------------------------------------------------------------------


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise BadRequest(f"engine must be one of {', '.join(ENGINES)}")
    return engine


def check_rank(rank: int) -> int:
    if rank not in MAX_LORA_RANKS:
        raise BadRequest(f"max_lora_rank must be one of {', '.join(map(str, MAX_LORA_RANKS))} "
                         "(vLLM's --max-lora-rank choices)")
    return rank


def check_dtype(dtype: str) -> str:
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPE_BYTES:
        raise BadRequest(f"dtype must be one of {', '.join(DTYPE_BYTES)} (what the engine was "
                         "started with; 'auto' depends on the model, so name it)")
    return name


def check_slots(max_loras: int, max_cpu_loras: int | None) -> tuple[int, int]:
    if not 1 <= max_loras <= 4096:
        raise BadRequest("max_loras must be between 1 and 4096")
    cpu = max_loras if max_cpu_loras is None else max_cpu_loras
    if not max_loras <= cpu <= 65536:
        raise BadRequest(f"max_cpu_loras must be between max_loras ({max_loras}) and 65536, as "
                         "vLLM requires")
    return max_loras, cpu


def check_architecture(name: str | None) -> str | None:
    if name is not None and name not in ARCHITECTURES:
        raise BadRequest(f"architecture {name!r} is not one vLLM {VLLM_VERSION} serves LoRA "
                         "for (e.g. LlamaForCausalLM, Qwen2ForCausalLM; the model's "
                         "config.json 'architectures')")
    return name


def check_target_modules(targets: Sequence[str] | None, base_modules: set[str],
                         architecture: str | None) -> tuple[str, ...] | None:
    """A pool's ``--lora-target-modules``: each must name a module (suffix or full name) the
    base has, a packed module holding one, or an embedding the architecture serves."""
    if targets is None:
        return None
    if not 1 <= len(targets) <= MAX_TARGETS:
        raise BadRequest(f"target_modules takes 1..{MAX_TARGETS} module names")
    arch = ARCHITECTURES[architecture] if architecture else GENERIC
    suffixes = {_suffix(m) for m in base_modules}
    problems = []
    for target in targets:
        if not MODULE_NAME_RE.match(target):
            problems.append(f"{target!r} is not a module name")
        elif not (target in suffixes or target in base_modules or target in arch.embeddings
                  or set(arch.packed.get(target, ())) & suffixes):
            problems.append(f"the base has no module {target!r} (nor one packed into it)")
    if problems:
        raise BadRequest("invalid target modules: " + "; ".join(problems), problems=problems)
    return tuple(dict.fromkeys(targets))


def base_modules(tensor_names: Iterable[str]) -> set[str]:
    """Module names of a base's tensors (``model.layers.0.mlp.up_proj.weight`` ->
    ``model.layers.0.mlp.up_proj``)."""
    return {name.rsplit(".", 1)[0] for name in tensor_names if "." in name}
