"""registry.lora_layout: config parsing and tensor-key analysis, from headers alone."""

from __future__ import annotations

import math
from typing import Any

import pytest

from registry.errors import InvalidAdapter
from registry.lora_layout import (
    TensorInfo,
    analyze_adapter,
    get_pattern_key,
    parse_lora_config,
    resolve_rank_alpha,
    unsupported_features,
)

P = "base_model.model."
Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.1.self_attn.v_proj"


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                            "target_modules": ["q_proj", "v_proj"]}
    base.update(overrides)
    return base


def pair(module: str, r: int = 4, in_f: int = 32, out_f: int = 32, prefix: str = P,
         adapter: str = "") -> dict[str, TensorInfo]:
    name = f".{adapter}" if adapter else ""
    return {f"{prefix}{module}.lora_A{name}.weight": ("F32", (r, in_f)),
            f"{prefix}{module}.lora_B{name}.weight": ("F32", (out_f, r))}


def analyze(tensors: dict[str, TensorInfo], **cfg: Any) -> Any:
    return analyze_adapter(parse_lora_config(config(**cfg)), tensors)


def test_parse_reads_every_field() -> None:
    info = parse_lora_config(config(
        use_rslora=True, use_dora=True, fan_in_fan_out=True, rank_pattern={"q_proj": 8},
        alpha_pattern={"v_proj": 2.5}, modules_to_save=["lm_head"], bias="lora_only",
        lora_bias=True, base_model_name_or_path="org/base", revision="abc",
    ))
    assert (info.r, info.lora_alpha, info.target_modules) == (4, 8, ("q_proj", "v_proj"))
    assert info.use_rslora and info.use_dora and info.fan_in_fan_out and info.lora_bias
    assert dict(info.rank_pattern) == {"q_proj": 8} and dict(info.alpha_pattern) == {"v_proj": 2.5}
    assert info.modules_to_save == ("lm_head",) and info.bias == "lora_only"
    assert (info.base_model_name_or_path, info.revision) == ("org/base", "abc")
    assert parse_lora_config(config(target_modules="all-linear")).target_modules == "all-linear"


@pytest.mark.parametrize("peft_type", ["IA3", "ADALORA", None])
def test_parse_refuses_other_peft_types(peft_type: str | None) -> None:
    with pytest.raises(InvalidAdapter, match="only LoRA"):
        parse_lora_config(config(peft_type=peft_type))


def test_parse_lists_every_problem() -> None:
    with pytest.raises(InvalidAdapter) as err:
        parse_lora_config(config(r=0, lora_alpha="x", bias="some", target_modules=None,
                                 use_dora="yes", rank_pattern={"(": 2}))
    problems = err.value.extra["problems"]
    assert len(problems) == 6
    for fragment in ("r must", "lora_alpha", "bias must", "target_modules", "use_dora",
                     "not a valid regex"):
        assert fragment in err.value.detail


def test_unsupported_features() -> None:
    assert unsupported_features(parse_lora_config(config())) == []
    info = parse_lora_config(config(
        layer_replication=[[0, 1]], target_parameters=["experts.gate_up_proj"],
        use_bdlora={"nblocks": 2}, init_lora_weights="pissa_niter_4",
    ))
    found = " ".join(unsupported_features(info))
    for fragment in ("layer_replication", "target_parameters", "use_bdlora", "pissa"):
        assert fragment in found


def test_keys_prefixed_unprefixed_or_with_adapter_name_map_alike() -> None:
    forms = [pair(Q), pair(Q, prefix=""), pair(Q, adapter="default")]
    layouts = [analyze(tensors) for tensors in forms]
    assert {layout.modules[0].name for layout in layouts} == {Q}
    module = layouts[0].modules[0]
    assert (module.base_weight, module.kind, module.rank, module.scaling) == (
        f"{Q}.weight", "linear", 4, 2.0)
    assert module.expected_base_shape == (32, 32)


@pytest.mark.parametrize(
    ("patterns", "module"),
    [
        ({"q_proj": 1, "v_proj": 2}, Q),
        ({"layers.1.self_attn.v_proj": 3, "v_proj": 2}, V),
        ({"proj": 5}, Q),  # "proj" is no whole name component: no match
        ({r"layers\.0\..*": 6, "q_proj": 1}, Q),  # regex; first match wins
        ({"model.layers.0.self_attn.q_proj": 7}, Q),
    ],
)
def test_pattern_matching_is_peft(patterns: dict[str, int], module: str) -> None:
    from peft.utils.other import get_pattern_key as peft_get_pattern_key

    peft_key = peft_get_pattern_key(list(patterns), module)
    ours = get_pattern_key(patterns, module)
    assert (ours if ours is not None else module) == peft_key
    info = parse_lora_config(config(rank_pattern=patterns, alpha_pattern=patterns))
    expected = patterns.get(peft_key, 4), patterns.get(peft_key, 8)
    assert resolve_rank_alpha(info, module) == expected


def test_rank_and_alpha_patterns_resolve_per_module_with_rslora() -> None:
    tensors = {**pair(Q, r=8), **pair(V, r=4)}
    layout = analyze(tensors, rank_pattern={"q_proj": 8}, alpha_pattern={"v_proj": 3},
                     use_rslora=True)
    q, v = sorted(layout.modules, key=lambda m: m.name)
    assert (q.rank, q.alpha, q.scaling) == (8, 8, 8 / math.sqrt(8))
    assert (v.rank, v.alpha, v.scaling) == (4, 3, 3 / 2)


def test_embedding_dora_lora_bias_and_conv1d() -> None:
    emb = "model.embed_tokens"
    tensors: dict[str, TensorInfo] = {
        f"{P}{emb}.lora_embedding_A": ("F32", (4, 128)),
        f"{P}{emb}.lora_embedding_B": ("F32", (32, 4)),
        f"{P}{emb}.lora_magnitude_vector": ("F32", (32,)),
        **pair(Q, out_f=48),
        f"{P}{Q}.lora_magnitude_vector": ("F32", (48,)),
    }
    layout = analyze(tensors, use_dora=True)
    by_name = {m.name: m for m in layout.modules}
    assert by_name[emb].kind == "embedding" and by_name[emb].expected_base_shape == (128, 32)
    assert by_name[Q].magnitude_key == f"{P}{Q}.lora_magnitude_vector"
    gpt = "transformer.h.0.attn.c_attn"
    biased = {**pair(gpt, out_f=96), f"{P}{gpt}.lora_B.bias": ("F32", (96,))}
    module = analyze(biased, lora_bias=True, fan_in_fan_out=True).modules[0]
    assert (module.kind, module.bias_key, module.expected_base_shape) == (
        "conv1d", f"{P}{gpt}.lora_B.bias", (32, 96))


def test_replacement_tensors() -> None:
    gpt = "transformer.h.0.attn.c_attn"
    tensors: dict[str, TensorInfo] = {
        **pair(gpt, out_f=96),
        f"{P}lm_head.weight": ("F32", (128, 32)),  # modules_to_save, current PEFT
        f"{P}score.modules_to_save.weight": ("F32", (2, 32)),  # older PEFT
        f"{P}{gpt}.base_layer.bias": ("F32", (96,)),
        f"{P}transformer.h.0.ln_1.bias": ("F32", (32,)),
    }
    layout = analyze(tensors, modules_to_save=["lm_head", "score"], bias="all")
    assert {r.base_name: r.key for r in layout.replacements} == {
        "lm_head.weight": f"{P}lm_head.weight",
        "score.weight": f"{P}score.modules_to_save.weight",
        f"{gpt}.bias": f"{P}{gpt}.base_layer.bias",
        "transformer.h.0.ln_1.bias": f"{P}transformer.h.0.ln_1.bias",
    }
    assert layout.base_names() >= {f"{gpt}.weight", "lm_head.weight"}


@pytest.mark.parametrize(
    ("tensors", "cfg", "fragment"),
    [
        ({f"{P}{Q}.lora_A.weight": ("F32", (4, 32))}, {}, "but no lora_B"),
        ({f"{P}{Q}.lora_B.weight": ("F32", (32, 4))}, {}, "but no lora_A"),
        ({f"{P}{Q}.lora_A.weight": ("F32", (4, 32)),
          f"{P}{Q}.lora_B.weight": ("F32", (32, 2))}, {}, "ranks differ"),
        (pair(Q, r=4), {"r": 8}, "rank 4 but the config gives r=8"),
        (pair(Q, r=4), {"rank_pattern": {"q_proj": 2}}, "r=2"),
        ({f"{P}{Q}.lora_A.weight": ("F32", (4, 32, 1, 1)),
          f"{P}{Q}.lora_B.weight": ("F32", (32, 4, 1, 1))}, {}, "must both be 2-D"),
        ({**pair(Q), f"{P}{Q}.something.weight": ("F32", (1,))}, {}, "unknown key"),
        ({**pair(Q), f"{P}{Q}.lora_A.bias": ("F32", (4,))}, {}, "unknown key"),
        ({**pair(Q), f"{P}{Q}.lora_magnitude_vector": ("F32", (32,))}, {}, "use_dora is false"),
        (pair(Q), {"use_dora": True}, "lora_magnitude_vector is missing"),
        ({**pair(Q), f"{P}{Q}.lora_magnitude_vector": ("F32", (16,))}, {"use_dora": True},
         "expected [32]"),
        (pair(Q), {"lora_bias": True}, "lora_B.bias is missing"),
        ({**pair(Q), **pair(Q, adapter="default")}, {}, "duplicate"),
        ({f"{P}{Q}.lora_A.weight": ("I8", (4, 32)),
          f"{P}{Q}.lora_B.weight": ("F32", (32, 4))}, {}, "float dtype"),
        ({f"{P}{Q}.lora_magnitude_vector": ("F32", (32,))}, {"use_dora": True}, "no lora_A"),
        ({}, {}, "no LoRA tensors"),
    ],
)
def test_bad_adapters_are_refused(
    tensors: dict[str, TensorInfo], cfg: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidAdapter) as err:
        analyze(tensors, **cfg)
    assert fragment in err.value.detail
    assert err.value.extra["problems"]


def test_every_problem_is_listed() -> None:
    tensors = {f"{P}{Q}.lora_A.weight": ("F32", (4, 32)), f"{P}other.weight": ("F32", (2,)),
               **pair(V, r=2)}
    with pytest.raises(InvalidAdapter) as err:
        analyze(tensors)
    assert len(err.value.extra["problems"]) == 3
