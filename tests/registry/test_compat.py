"""registry.compat: adapter <-> base shape checks, on real tiny PEFT adapters and headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.compat import check_against_base, ensure_compatible_shapes, unmergeable_targets
from registry.errors import IncompatibleBase
from registry.lora_layout import (
    AdapterLayout,
    LoraModule,
    Replacement,
    TensorInfo,
    analyze_adapter,
    parse_lora_config,
)
from tests.fixtures.models import TinyModels

QV = {"target_modules": ["q_proj", "v_proj"], "r": 4, "lora_alpha": 8}
GPT2_LORA = {"target_modules": ["c_attn", "c_proj"], "r": 4, "lora_alpha": 8,
             "fan_in_fan_out": True, "lora_bias": True}


def header(folder: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    out: dict[str, TensorInfo] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                piece = f.get_slice(key)
                out[key] = (piece.get_dtype(), tuple(piece.get_shape()))
    return out


def layout_of(adapter: Path) -> AdapterLayout:
    config = parse_lora_config(json.loads((adapter / "adapter_config.json").read_text()))
    return analyze_adapter(config, header(adapter))


@pytest.mark.parametrize(("family", "lora"), [("llama", QV), ("gpt2", GPT2_LORA)])
def test_right_base_passes(tiny_models: TinyModels, family: str, lora: dict[str, Any]) -> None:
    base = tiny_models.base(family)
    layout = layout_of(tiny_models.adapter(base, **lora))
    assert check_against_base(layout, header(base)) == []
    ensure_compatible_shapes(layout, header(base))


def test_different_shapes_refused_with_every_mismatch(tiny_models: TinyModels) -> None:
    layout = layout_of(tiny_models.adapter(tiny_models.base("llama"), **QV))
    other = tiny_models.base("llama", hidden_size=48, num_attention_heads=6,
                             num_key_value_heads=2)
    with pytest.raises(IncompatibleBase) as err:
        ensure_compatible_shapes(layout, header(other))
    mismatches = err.value.extra["mismatches"]
    assert len(mismatches) == 4
    assert any(m.startswith("model.layers.0.self_attn.q_proj.weight: base shape [48, 48], "
                            "adapter expects [32, 32] (out, in)") for m in mismatches)
    assert "4 mismatch(es)" in err.value.detail


def test_gpt2_conv1d_is_checked_transposed(tiny_models: TinyModels) -> None:
    base = tiny_models.base("gpt2")
    layout = layout_of(tiny_models.adapter(base, **GPT2_LORA))
    shapes = header(base)
    c_attn = "transformer.h.0.attn.c_attn.weight"
    assert shapes[c_attn][1] == (32, 96)  # Conv1D stores (in, out)
    as_linear = {**shapes, c_attn: ("F32", (96, 32))}
    mismatches = check_against_base(layout, as_linear)
    assert mismatches == [
        f"{c_attn}: base shape [96, 32], adapter expects [32, 96] (in, out) from A [4, 32] "
        "and B [96, 4] (it fits transposed: is fan_in_fan_out wrong? try false)"
    ]


def test_lora_bias_needs_a_base_bias(tiny_models: TinyModels) -> None:
    base = tiny_models.base("gpt2")
    layout = layout_of(tiny_models.adapter(base, **GPT2_LORA))
    shapes = header(base)
    del shapes["transformer.h.1.attn.c_proj.bias"]
    shapes["transformer.h.0.attn.c_attn.bias"] = ("F32", (32,))
    assert check_against_base(layout, shapes) == [
        "transformer.h.0.attn.c_attn.bias: base shape [32], adapter LoRA bias expects [96]",
        "transformer.h.1.attn.c_proj.bias: missing from the base, but the adapter has a LoRA "
        "bias (base_model.model.transformer.h.1.attn.c_proj.lora_B.bias)",
    ]


def module(name: str, out_f: int = 8, in_f: int = 8) -> LoraModule:
    return LoraModule(name=name, kind="linear", a_key=f"{name}.lora_A.weight",
                      b_key=f"{name}.lora_B.weight", a_shape=(2, in_f), b_shape=(out_f, 2),
                      rank=2, alpha=2, scaling=1.0)


def test_missing_tensors_replacements_and_first_ten_in_detail() -> None:
    modules = tuple(module(f"layer{i}") for i in range(11))
    replacement = Replacement("lm_head.weight", "base_model.model.lm_head.weight", "F32", (4, 8))
    layout = AdapterLayout(parse_lora_config({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                              "target_modules": "layer.*"}), modules,
                           (replacement,))
    base = {"lm_head.weight": ("F32", (5, 8)), "layer0.weight": ("F32", (8, 8))}
    mismatches = check_against_base(layout, base)
    assert len(mismatches) == 11
    assert mismatches[0] == "layer1.weight: missing from the base (adapter targets layer1)"
    assert mismatches[-1] == ("lm_head.weight: base shape [5, 8], adapter tensor "
                              "base_model.model.lm_head.weight has [4, 8]")
    with pytest.raises(IncompatibleBase) as err:
        ensure_compatible_shapes(layout, base)
    assert "layer10.weight" in err.value.detail and "(and 1 more)" in err.value.detail
    assert "lm_head" not in err.value.detail and len(err.value.extra["mismatches"]) == 11


def test_quantized_targets_are_reported() -> None:
    layout = AdapterLayout(parse_lora_config({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                              "target_modules": ["a", "b"]}),
                           (module("a"), module("b")))
    base = {"a.weight": ("I8", (8, 8)), "b.weight": ("BF16", (8, 8))}
    assert unmergeable_targets(layout, base) == ["a.weight has dtype I8"]
