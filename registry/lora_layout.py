"""What a PEFT LoRA adapter is made of, read from its config and tensor header alone.

No torch here: the registry validates adapters at push time from ``adapter_config.json`` and the
safetensors header (name -> dtype, shape); the merge worker uses the same layout to merge.

Key naming follows PEFT's ``get_peft_model_state_dict`` (peft/utils/save_and_load.py): the
``base_model.model.`` prefix (absent when saved through the transformers integration), no adapter
name (``lora_A.weight``; ``lora_A.default.weight`` is accepted too), DoRA magnitudes saved as
``<module>.lora_magnitude_vector`` without ``.weight``, embedding factors as
``lora_embedding_A``/``lora_embedding_B`` parameters, LoRA biases as ``lora_B.bias``.

Per-module rank and alpha are resolved as PEFT's ``LoraModel._create_and_replace`` does: the
first ``rank_pattern``/``alpha_pattern`` key (in the config's order) that matches the module
name with ``re.match(rf"(.*\\.)?({key})$", module)`` wins (``peft.utils.other.get_pattern_key``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from registry.errors import InvalidAdapter

TensorInfo = tuple[str, tuple[int, ...]]
ModuleKind = Literal["linear", "conv1d", "embedding"]

PEFT_PREFIX = "base_model.model."
LORA_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# PEFT saves the input/output embeddings whole when it detects a resized vocabulary.
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
BIAS_MODES = ("none", "all", "lora_only")

# LoRA variants (LoraConfig fields tagged ``is_lora_variant``) and extras a merge cannot reproduce.
_UNSUPPORTED_FIELDS = {
    "arrow_config": "Arrow routing",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
    "use_qalora": "QA-LoRA",
    "trainable_token_indices": "trainable tokens",
    "megatron_config": "Megatron parallel layers",
}
# These initialisations rewrite the base weights; an unconverted adapter only fits that residual
# base (PEFT converts it with ``path_initial_model_for_weight_conversion``, saving init=True).
_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.(?P<adapter>(?!(?:weight|bias)$)[^.]+))?"
    r"(?:\.(?P<param>weight|bias))?$"
)
# (part, param) combinations PEFT writes; anything else under a lora_* name is unknown.
_VALID_PARTS = {
    ("lora_A", "weight"): "a",
    ("lora_B", "weight"): "b",
    ("lora_B", "bias"): "bias",
    ("lora_embedding_A", None): "emb_a",
    ("lora_embedding_B", None): "emb_b",
    ("lora_magnitude_vector", None): "magnitude",
    ("lora_magnitude_vector", "weight"): "magnitude",
}


@dataclass(frozen=True)
class LoraConfigInfo:
    """The parts of ``adapter_config.json`` that decide how an adapter merges."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"
    lora_bias: bool = False
    layer_replication: Any = None
    target_parameters: tuple[str, ...] = ()
    init_lora_weights: bool | str = True
    base_model_name_or_path: str | None = None
    revision: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LoraModule:
    """One LoRA-targeted base module and how its delta is built."""

    name: str
    kind: ModuleKind
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    rank: int
    alpha: float
    scaling: float
    magnitude_key: str | None = None
    magnitude_shape: tuple[int, ...] | None = None
    bias_key: str | None = None
    bias_shape: tuple[int, ...] | None = None

    @property
    def base_weight(self) -> str:
        return f"{self.name}.weight"

    @property
    def base_bias(self) -> str:
        return f"{self.name}.bias"

    @property
    def in_features(self) -> int:
        return self.a_shape[1]

    @property
    def out_features(self) -> int:
        return self.b_shape[0]

    @property
    def transposed(self) -> bool:
        """True when the base weight is stored (in, out): Conv1D and embeddings."""
        return self.kind != "linear"

    @property
    def expected_base_shape(self) -> tuple[int, int]:
        if self.transposed:
            return (self.in_features, self.out_features)
        return (self.out_features, self.in_features)


@dataclass(frozen=True)
class Replacement:
    """An adapter tensor that replaces a base tensor whole (modules_to_save, saved biases)."""

    base_name: str
    key: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AdapterLayout:
    config: LoraConfigInfo
    modules: tuple[LoraModule, ...]
    replacements: tuple[Replacement, ...] = ()

    def base_names(self) -> set[str]:
        """Every base tensor the merge changes."""
        names = {m.base_weight for m in self.modules}
        names |= {m.base_bias for m in self.modules if m.bias_key}
        return names | {r.base_name for r in self.replacements}


# --- config -------------------------------------------------------------------------------


def parse_lora_config(config: Mapping[str, Any]) -> LoraConfigInfo:
    """Validate ``adapter_config.json`` content; raise InvalidAdapter listing every problem."""
    if not isinstance(config, Mapping):
        raise InvalidAdapter("adapter_config.json must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapter(
            f"peft_type {peft_type!r} is not supported: only LoRA adapters (peft_type 'LORA')",
            problems=[f"peft_type is {peft_type!r}"],
        )
    problems: list[str] = []
    info = LoraConfigInfo(
        r=_positive_int(config.get("r"), "r", problems),
        lora_alpha=_number(config.get("lora_alpha", 8), "lora_alpha", problems),
        target_modules=_target_modules(config, problems),
        use_rslora=_flag(config, "use_rslora", problems),
        use_dora=_flag(config, "use_dora", problems),
        fan_in_fan_out=_flag(config, "fan_in_fan_out", problems),
        rank_pattern=_pattern(config.get("rank_pattern"), "rank_pattern", True, problems),
        alpha_pattern=_pattern(config.get("alpha_pattern"), "alpha_pattern", False, problems),
        modules_to_save=_str_tuple(config.get("modules_to_save"), "modules_to_save", problems),
        bias=_bias_mode(config.get("bias", "none"), problems),
        lora_bias=_flag(config, "lora_bias", problems),
        layer_replication=config.get("layer_replication"),
        target_parameters=_str_tuple(config.get("target_parameters"), "target_parameters",
                                     problems),
        init_lora_weights=_init(config.get("init_lora_weights", True), problems),
        base_model_name_or_path=_opt_str(config, "base_model_name_or_path", problems),
        revision=_opt_str(config, "revision", problems),
        raw=dict(config),
    )
    _raise_if(problems, "invalid adapter_config.json")
    return info


def unsupported_features(info: LoraConfigInfo) -> list[str]:
    """Features of a valid LoRA config that lorareg cannot merge (empty list: all supported).

    Quantization is a property of the base and is checked against it separately.
    """
    found: list[str] = []
    if info.layer_replication:
        found.append("layer_replication (the merged model would need duplicated layers)")
    if info.target_parameters:
        found.append("target_parameters (LoRA on raw nn.Parameter, e.g. MoE experts)")
    for name, label in _UNSUPPORTED_FIELDS.items():
        if info.raw.get(name):
            found.append(f"{name} ({label})")
    init = info.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
        found.append(
            f"init_lora_weights={init!r} (it rewrites the base weights; save the adapter with "
            "path_initial_model_for_weight_conversion to make it plain LoRA)"
        )
    return found


def get_pattern_key(pattern_keys: Mapping[str, Any], key_to_match: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first pattern matching the module name, else None."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return None


def resolve_rank_alpha(info: LoraConfigInfo, module: str) -> tuple[int, float]:
    """(r, lora_alpha) PEFT gives ``module`` (a base module name, e.g. ``model.layers.0.mlp``)."""
    r_key = get_pattern_key(info.rank_pattern, module)
    alpha_key = get_pattern_key(info.alpha_pattern, module)
    r = info.rank_pattern[r_key] if r_key is not None else info.r
    alpha = info.alpha_pattern[alpha_key] if alpha_key is not None else info.lora_alpha
    return r, alpha


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """PEFT's ``LoraLayer.update_layer``: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidAdapter(f"{what}: {shown}{more}", problems=problems)


def _positive_int(value: Any, name: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(f"{name} must be a positive integer, got {value!r}")
        return 1
    return value


def _number(value: Any, name: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{name} must be a finite number, got {value!r}")
        return 1.0
    return value


def _flag(config: Mapping[str, Any], name: str, problems: list[str]) -> bool:
    value = config.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false, got {value!r}")
        return False
    return value


def _str_tuple(value: Any, name: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{name} must be a list of strings, got {value!r}")
    return ()


def _target_modules(config: Mapping[str, Any], problems: list[str]) -> tuple[str, ...] | str:
    value = config.get("target_modules")
    if isinstance(value, str):
        return value
    if value is None and config.get("target_parameters"):
        return ()  # reported by unsupported_features
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"target_modules must be a module name list or a regex, got {value!r}")
    return ()


def _pattern(value: Any, name: str, want_int: bool, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{name} must be an object, got {value!r}")
        return {}
    out: dict[str, Any] = {}
    for key, val in value.items():
        try:
            re.compile(key)
        except re.error as exc:
            problems.append(f"{name} key {key!r} is not a valid regex ({exc})")
            continue
        out[key] = (_positive_int if want_int else _number)(val, f"{name}[{key!r}]", problems)
    return out


def _bias_mode(value: Any, problems: list[str]) -> str:
    if value not in BIAS_MODES:
        problems.append(f"bias must be one of {', '.join(BIAS_MODES)}, got {value!r}")
        return "none"
    return str(value)


def _init(value: Any, problems: list[str]) -> bool | str:
    if isinstance(value, bool | str):
        return value
    problems.append(f"init_lora_weights must be a boolean or a string, got {value!r}")
    return True


def _opt_str(config: Mapping[str, Any], name: str, problems: list[str]) -> str | None:
    value = config.get(name)
    if value is not None and not isinstance(value, str):
        problems.append(f"{name} must be a string, got {value!r}")
        return None
    return value


# --- tensors ------------------------------------------------------------------------------


def analyze_adapter(config: LoraConfigInfo, tensors: Mapping[str, TensorInfo]) -> AdapterLayout:
    """Map every adapter tensor to the base tensor it changes; raise InvalidAdapter listing
    every problem (unpaired factors, rank or shape disagreements, unknown keys)."""
    problems: list[str] = []
    parts: dict[str, dict[str, str]] = {}  # module -> role (a, b, bias, emb_a, ...) -> key
    others: list[str] = []
    for key in tensors:
        match = _LORA_KEY.match(_strip_prefix(key))
        if match is None:
            others.append(key)
            continue
        role = _VALID_PARTS.get((match["part"], match["param"]))
        if role is None:
            problems.append(f"unknown key {key!r}")
            continue
        found = parts.setdefault(match["module"], {})
        if role in found:
            problems.append(f"duplicate {role} tensors for {match['module']!r}: {found[role]!r}, "
                            f"{key!r}")
        found[role] = key
    modules = [m for name in sorted(parts)
               if (m := _build_module(config, name, parts[name], tensors, problems))]
    replacements = _replacements(config, others, {m.name for m in modules}, tensors, problems)
    if not modules and not problems:
        problems.append("no LoRA tensors (lora_A/lora_B) found")
    _raise_if(problems, "invalid LoRA adapter")
    return AdapterLayout(config, tuple(modules), tuple(replacements))


def _strip_prefix(key: str) -> str:
    return key.removeprefix(PEFT_PREFIX)


def _build_module(
    config: LoraConfigInfo, name: str, keys: dict[str, str],
    tensors: Mapping[str, TensorInfo], problems: list[str],
) -> LoraModule | None:
    embedding = "emb_a" in keys or "emb_b" in keys
    a_role, b_role = ("emb_a", "emb_b") if embedding else ("a", "b")
    if embedding and keys.keys() & {"a", "b", "bias"}:
        problems.append(f"{name!r} mixes lora_A/lora_B with lora_embedding_A/B")
        return None
    missing = [_ROLE_NAMES[role] for role in (a_role, b_role) if role not in keys]
    if missing:
        present = ", ".join(_ROLE_NAMES[role] for role in keys)
        problems.append(f"{name!r} has {present} but no {' or '.join(missing)}")
        return None
    r, alpha = resolve_rank_alpha(config, name)
    kind: ModuleKind = "embedding" if embedding else "conv1d" if config.fan_in_fan_out else "linear"
    module = LoraModule(
        name=name, kind=kind, a_key=keys[a_role], b_key=keys[b_role],
        a_shape=tensors[keys[a_role]][1], b_shape=tensors[keys[b_role]][1],
        rank=r, alpha=alpha, scaling=lora_scaling(alpha, r, config.use_rslora),
        magnitude_key=keys.get("magnitude"),
        magnitude_shape=tensors[keys["magnitude"]][1] if "magnitude" in keys else None,
        bias_key=keys.get("bias"),
        bias_shape=tensors[keys["bias"]][1] if "bias" in keys else None,
    )
    before = len(problems)
    _check_module(config, module, tensors, problems)
    return module if len(problems) == before else None


_ROLE_NAMES = {"a": "lora_A", "b": "lora_B", "emb_a": "lora_embedding_A",
               "emb_b": "lora_embedding_B", "bias": "lora_B.bias",
               "magnitude": "lora_magnitude_vector"}


def _check_module(
    config: LoraConfigInfo, m: LoraModule, tensors: Mapping[str, TensorInfo],
    problems: list[str],
) -> None:
    a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if m.kind == "embedding" else (
        "lora_A", "lora_B")
    for key in filter(None, (m.a_key, m.b_key, m.magnitude_key, m.bias_key)):
        if tensors[key][0] not in LORA_FLOAT_DTYPES:
            problems.append(f"{key!r} has dtype {tensors[key][0]}, expected a float dtype")
    if len(m.a_shape) != 2 or len(m.b_shape) != 2:
        problems.append(f"{m.name!r}: {a_name} {list(m.a_shape)} and {b_name} {list(m.b_shape)} "
                        "must both be 2-D (convolution LoRA is not supported)")
        return
    if m.a_shape[0] != m.b_shape[1]:
        problems.append(f"{m.name!r}: {a_name} {list(m.a_shape)} is (r, in) and {b_name} "
                        f"{list(m.b_shape)} is (out, r), but their ranks differ")
    elif m.a_shape[0] != m.rank:
        problems.append(f"{m.name!r}: tensors have rank {m.a_shape[0]} but the config gives "
                        f"r={m.rank} for this module")
    _check_extras(config, m, problems)


def _check_extras(config: LoraConfigInfo, m: LoraModule, problems: list[str]) -> None:
    out = (m.out_features,)
    if config.use_dora and m.magnitude_key is None:
        problems.append(f"{m.name!r}: use_dora is set but lora_magnitude_vector is missing")
    if m.magnitude_key and not config.use_dora:
        problems.append(f"{m.magnitude_key!r}: DoRA magnitude present but use_dora is false")
    if m.magnitude_shape is not None and m.magnitude_shape != out:
        problems.append(f"{m.magnitude_key!r} has shape {list(m.magnitude_shape)}, expected "
                        f"[{m.out_features}] (one per output feature)")
    if config.lora_bias and m.kind != "embedding" and m.bias_key is None:
        problems.append(f"{m.name!r}: lora_bias is set but lora_B.bias is missing")
    if m.bias_key and not config.lora_bias:
        problems.append(f"{m.bias_key!r}: LoRA bias present but lora_bias is false")
    if m.bias_shape is not None and m.bias_shape != out:
        problems.append(f"{m.bias_key!r} has shape {list(m.bias_shape)}, expected "
                        f"[{m.out_features}]")


def _replacements(
    config: LoraConfigInfo, keys: list[str], lora_modules: set[str],
    tensors: Mapping[str, TensorInfo], problems: list[str],
) -> list[Replacement]:
    out: dict[str, Replacement] = {}
    for key in sorted(keys):
        base_name = _replacement_target(config, key, lora_modules)
        if base_name is None:
            problems.append(f"unknown key {key!r}")
        elif base_name in out:
            problems.append(f"{key!r} and {out[base_name].key!r} both replace {base_name!r}")
        else:
            out[base_name] = Replacement(base_name, key, tensors[key][0], tensors[key][1])
    return list(out.values())


def _replacement_target(config: LoraConfigInfo, key: str, lora_modules: set[str]) -> str | None:
    """The base tensor a non-LoRA adapter tensor replaces, or None if PEFT would not save it."""
    path, _, param = _strip_prefix(key).rpartition(".")
    if not path:
        return None
    if path.endswith(".base_layer"):
        # a targeted module's own base tensors: saved embeddings, or biases (bias != "none")
        module = path.removesuffix(".base_layer")
        if module not in lora_modules or (param == "bias" and config.bias == "none"):
            return None
        return f"{module}.{param}" if param in ("weight", "bias") else None
    # older PEFT saved modules_to_save copies as "<module>.modules_to_save.<param path>"
    path = ".".join(c for c in path.split(".") if c != "modules_to_save")
    base_name = f"{path}.{param}"
    if _in_modules_to_save(config, path) or (config.bias == "all" and param == "bias"):
        return base_name
    if path.rpartition(".")[2] in EMBEDDING_LAYER_NAMES and param == "weight":
        return base_name
    return None


def _in_modules_to_save(config: LoraConfigInfo, path: str) -> bool:
    """PEFT wraps every module whose name ends with a modules_to_save entry (str.endswith)."""
    components = path.split(".")
    prefixes = (".".join(components[:i]) for i in range(1, len(components) + 1))
    return any(p.endswith(entry) for p in prefixes for entry in config.modules_to_save)
