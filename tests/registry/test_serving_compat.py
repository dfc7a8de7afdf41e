"""The serving rules (registry.services.serving_compat): pure unit tests, and the same configs
and target-module cases judged by vLLM's own code (PEFTHelper.validate_legal,
is_in_target_modules) in ./.venv-vllm, so the rules cannot drift from what vLLM refuses."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from registry.services import serving_compat as sc
from registry.services.serving_compat import Candidate, Engine
from registry.vllm_architectures import ARCHITECTURES
from tests.fixtures.adapters import HIDDEN, PREFIX, lora_config, lora_tensors
from tests.fixtures.vllm import VLLM_PYTHON

POOL = Engine(label="pool acme/gpu-a", max_lora_rank=16, max_loras=2, dtype="bfloat16",
              base_fingerprint="f" * 64)
VOCAB = 128


def shapes(tensors: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    names = {np.dtype("float32"): "F32", np.dtype("float16"): "F16",
             np.dtype("float64"): "F64"}
    return {k: (names[v.dtype], tuple(v.shape)) for k, v in tensors.items()}


def candidate(config: dict[str, Any] | None = None,
              tensors: dict[str, tuple[str, tuple[int, ...]]] | None = None,
              fingerprint: str = "f" * 64) -> Candidate:
    return Candidate("acme/bot@1", config or lora_config(), fingerprint, True,
                     tensors if tensors is not None else shapes(lora_tensors()))


def embedding_lora(module: str = "embed_tokens") -> dict[str, tuple[str, tuple[int, ...]]]:
    key = f"base_model.model.model.{module}" if module == "embed_tokens" else (
        f"base_model.model.{module}")
    return {**shapes(lora_tensors()), f"{key}.lora_embedding_A": ("F32", (4, VOCAB)),
            f"{key}.lora_embedding_B": ("F32", (HIDDEN, 4))}


def test_a_plain_adapter_passes() -> None:
    assert sc.version_problems(POOL, candidate()) == []
    assert sc.adapter_bytes(POOL, candidate().tensors or {}) == 2 * 2 * (4 * 32 + 32 * 4) * 2


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"use_dora": True}, "DoRA (use_dora) is not supported by vLLM"),
    ({"lora_bias": True}, "LoRA bias (lora_bias) is not supported"),
    ({"bias": "all"}, "bias='all' is not supported by vLLM"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head'] are not supported"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' rewrites the base weights"),
    ({"layer_replication": [[0, 1]]}, "layer_replication is not supported"),
    ({"alora_invocation_tokens": [1, 2]}, "activated LoRA"),
    ({"use_qalora": True}, "QA-LoRA"),
    ({"trainable_token_indices": [5]}, "vLLM ignores it and would serve the adapter without"),
    ({"rank_pattern": {"q_proj": 32}}, "rank 32 exceeds the max LoRA rank 16"),
    ({"target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters"),
])
def test_each_refusal_names_its_reason(overrides: dict[str, Any], expected: str) -> None:
    found = sc.config_problems(POOL, lora_config(**overrides))
    assert len(found) == 1 and expected in found[0], found


def test_what_vllm_accepts_is_not_refused() -> None:
    for overrides in ({"init_lora_weights": "gaussian"}, {"modules_to_save": ["score"]},
                      {"use_rslora": True}, {"rank_pattern": {"q_proj": 16}}):
        assert sc.config_problems(POOL, lora_config(**overrides)) == [], overrides


def test_base_and_tensor_header_are_required_by_a_pool_not_by_the_profile() -> None:
    other = candidate(fingerprint="e" * 64)
    assert sc.version_problems(POOL, other) == [
        f"it was trained on base {'e' * 64}, but pool acme/gpu-a serves base {'f' * 64}"]
    unknown = replace(candidate(), tensors=None)
    assert "tensor header is not recorded" in sc.version_problems(POOL, unknown)[0]
    assert sc.version_problems(sc.VLLM_PROFILE, unknown) == []


def test_embedding_lora_depends_on_the_architecture() -> None:
    embedding = candidate(tensors=embedding_lora())
    assert "names none" in sc.version_problems(POOL, embedding)[0]
    llama = replace(POOL, architecture="LlamaForCausalLM")
    qwen2 = replace(POOL, architecture="Qwen2ForCausalLM")
    assert sc.version_problems(llama, embedding) == []
    assert sc.version_problems(qwen2, embedding) == [
        "LoRA on embed_tokens is not served by vLLM for Qwen2ForCausalLM (it serves embedding "
        "LoRA on no module)"]


def test_whole_embeddings_of_a_resized_vocabulary_are_refused() -> None:
    resized = {**shapes(lora_tensors()),
               "base_model.model.model.embed_tokens.weight": ("F32", (VOCAB + 2, HIDDEN))}
    found = sc.version_problems(POOL, candidate(tensors=resized))
    assert found == ["it carries whole model.embed_tokens.weight weights (a resized "
                     "vocabulary): vLLM ignores them and would serve with the base's embeddings"]


def test_target_modules_restriction_and_packing() -> None:
    narrow = replace(POOL, target_modules=("qkv_proj",), architecture="LlamaForCausalLM")
    assert sc.version_problems(narrow, candidate()) == []  # q_proj, v_proj are packed in it
    # vLLM wraps qkv_proj when any module packed in it is named: v_proj is served too.
    assert sc.version_problems(replace(POOL, target_modules=("q_proj",)), candidate()) == []
    only_o = replace(POOL, target_modules=("o_proj", "gate_up_proj"))
    assert sc.version_problems(only_o, candidate()) == [
        "LoRA on q_proj (2 modules), v_proj (2 modules) is outside the target modules of pool "
        "acme/gpu-a (o_proj, gate_up_proj): vLLM would load the adapter and silently serve "
        "those modules without it"]


def test_dtypes_that_cannot_be_cast() -> None:
    f64 = {k: ("F64", s) for k, (_, s) in shapes(lora_tensors()).items()}
    assert sc.version_problems(POOL, candidate(tensors=f64)) == [
        "tensor dtype F64 cannot be cast to bfloat16 (vLLM serves F32, F16 and BF16 adapter "
        "tensors)"]


def test_the_set_as_a_whole() -> None:
    tensors = candidate().tensors
    members = [("acme/bot@1", tensors), ("acme/bot@2", tensors), ("acme/bot@3", None)]
    found = sc.set_problems(replace(POOL, max_adapter_memory=3000), members)
    assert found[0].startswith("the desired set would hold 3 versions, more than the 2")
    assert "4.0 KiB of adapter weights in bfloat16, more than the 2.9 KiB" in found[1]
    assert sc.set_problems(POOL, members[:2]) == []


def test_pool_settings_checks() -> None:
    modules = sc.base_modules([f"{PREFIX.format(i=0, m=m)}.weight".removeprefix(
        "base_model.model.") for m in ("q_proj", "k_proj", "v_proj")])
    assert sc.check_target_modules(["qkv_proj", "q_proj", "q_proj"], modules, None) == (
        "qkv_proj", "q_proj")
    with pytest.raises(sc.BadRequest, match="the base has no module 'gate_up_proj'"):
        sc.check_target_modules(["gate_up_proj"], modules, None)
    with pytest.raises(sc.BadRequest, match="is not a module name"):
        sc.check_target_modules(["q_proj;rm"], modules, None)
    assert sc.check_dtype("half") == "float16" and sc.check_slots(2, None) == (2, 2)


# --- judged by vLLM itself ------------------------------------------------------------------

VLLM_JUDGE = """
import json, sys
from vllm.config.lora import LoRAConfig
from vllm.lora.peft_helper import PEFTHelper
from vllm.lora.utils import is_in_target_modules
cases = json.load(sys.stdin)
out = {"configs": [], "targets": []}
for config in cases["configs"]:
    try:
        PEFTHelper.from_dict(config).validate_legal(LoRAConfig(max_lora_rank=16))
        out["configs"].append(None)
    except ValueError as exc:
        out["configs"].append(str(exc))
for runtime, targets, packed in cases["targets"]:
    out["targets"].append(is_in_target_modules(runtime, targets, packed))
print(json.dumps(out))
"""
CONFIGS = [{}, {"use_dora": True}, {"lora_bias": True}, {"bias": "lora_only"},
           {"modules_to_save": ["embed_tokens"]}, {"modules_to_save": ["classifier"]},
           {"init_lora_weights": "olora"}, {"init_lora_weights": "eva"},
           {"init_lora_weights": False}, {"layer_replication": [[0, 2]]},
           {"alora_invocation_tokens": [7]}, {"use_bdlora": {"x": 1}}, {"use_qalora": True},
           {"r": 16}, {"r": 32}, {"rank_pattern": {"v_proj": 64}}, {"use_rslora": True}]
# (adapter module, pool targets): vLLM asks whether the runtime (packed) module is wrapped.
TARGETS = [("model.layers.0.self_attn.q_proj", ["qkv_proj"]),
           ("model.layers.0.self_attn.q_proj", ["q_proj"]),
           ("model.layers.0.self_attn.v_proj", ["q_proj"]),
           ("model.layers.0.self_attn.v_proj", ["o_proj", "gate_proj"]),
           ("model.layers.0.mlp.up_proj", ["gate_up_proj"]),
           ("model.layers.0.mlp.up_proj", ["gate_proj"]),
           ("model.layers.0.mlp.up_proj", ["down_proj"]),
           ("model.layers.0.self_attn.o_proj", ["o_proj"]),
           ("model.layers.0.self_attn.o_proj", ["qkv_proj"])]


@pytest.mark.vllm
def test_the_rules_refuse_exactly_what_vllm_refuses() -> None:
    if not VLLM_PYTHON.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VLLM_PYTHON} is missing (CI=true: not skipping)")
        pytest.skip("vLLM is not installed (scripts/install-vllm)")
    packed = ARCHITECTURES["LlamaForCausalLM"].packed
    runtime = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
               "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
    # PEFT options vLLM does not know: it loads such adapters (and serves them without the
    # option), so the rules are stricter than vLLM here, on purpose.
    silent = [lora_config(**{key: [5]}) for key in sc.IGNORED_FIELDS]
    cases = {"configs": [lora_config(**c) for c in CONFIGS] + silent,
             "targets": [(m.rsplit(".", 1)[0] + "." + runtime.get(m.rsplit(".", 1)[1],
                                                                   m.rsplit(".", 1)[1]),
                          t, {k: list(v) for k, v in packed.items()}) for m, t in TARGETS]}
    judged = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_JUDGE], input=json.dumps(cases),
                            capture_output=True, text=True, timeout=600, check=True)
    verdicts = json.loads(judged.stdout.strip().splitlines()[-1])
    for config, refusal in zip(cases["configs"], verdicts["configs"], strict=True):
        ours = sc.config_problems(sc.VLLM_PROFILE, config)
        if config in silent:
            assert refusal is None and ours, (config, ours)
        else:
            assert bool(ours) == (refusal is not None), (config, ours, refusal)
    for (module, targets), wrapped in zip(TARGETS, verdicts["targets"], strict=True):
        assert sc.in_targets(module, targets, packed) == wrapped, (module, targets)
