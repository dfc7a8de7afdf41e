"""merge_worker.compose against PEFT's own add_weighted_adapter, on tiny real models.

PEFT's side is always the default way: ``PeftModel.from_pretrained`` with the first adapter,
``load_adapter`` for the others (in input order), ``torch.manual_seed(seed)`` (dare methods),
``add_weighted_adapter``, ``save_pretrained``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from merge_worker import compose as compose_module
from merge_worker.compose import ComposeCancelled, ComposeResult, compose_adapters
from merge_worker.compose_plan import (
    METHODS,
    SVD_METHODS,
    ComposeInput,
    ComposeOptions,
)
from merge_worker.compose_rng import module_order_from_config
from merge_worker.merge import merge_adapter
from registry.errors import BadRequest, Conflict, IncompatibleBase, InvalidAdapter
from tests.fixtures.models import TinyModels, load_model, read_folder, torch_dtype

WEIGHTS = (0.6, -0.4)
SEED = 1234
DENSITY = 0.5
QV = ["q_proj", "v_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


@dataclass(frozen=True)
class Case:
    family: str
    base_dtype: str
    adapters: tuple[dict[str, Any], ...]
    adapter_dtype: str | None = None


CASES = {
    "llama": Case("llama", "fp32", (
        {"r": 4, "lora_alpha": 8, "target_modules": QV},
        {"r": 4, "lora_alpha": 16, "target_modules": QV})),
    "gpt2_fan_in_fan_out": Case("gpt2", "fp32", (
        {"r": 4, "lora_alpha": 8, "target_modules": GPT2_TARGETS, "fan_in_fan_out": True},
        {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj"],
         "fan_in_fan_out": True})),
    "bf16_adapters": Case("llama", "fp32", (
        {"r": 4, "lora_alpha": 8, "target_modules": QV},
        {"r": 4, "lora_alpha": 16, "target_modules": QV}), adapter_dtype="bf16"),
    "bf16_base_and_adapters": Case("llama", "bf16", (
        {"r": 4, "lora_alpha": 8, "target_modules": QV},
        {"r": 4, "lora_alpha": 16, "target_modules": ["v_proj", "down_proj"]}),
        adapter_dtype="bf16"),
    # the first input's rsLoRA goes into the composed config (PEFT's rule, kept)
    "rslora_different_targets": Case("llama", "fp32", (
        {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "use_rslora": True},
        {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "down_proj"]},
        {"r": 4, "lora_alpha": 4, "target_modules": ["up_proj"], "use_rslora": True})),
    "all_linear": Case("llama", "fp32", (
        {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        {"r": 4, "lora_alpha": 16, "target_modules": QV})),
    "embedding": Case("llama", "fp32", (
        {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "q_proj"]},
        {"r": 4, "lora_alpha": 16, "target_modules": ["embed_tokens", "v_proj"]})),
}
DIFFERENT_RANKS = Case("llama", "fp32", (
    {"r": 4, "lora_alpha": 8, "target_modules": QV},
    {"r": 8, "lora_alpha": 8, "target_modules": QV},
    {"r": 2, "lora_alpha": 4, "target_modules": QV,
     "rank_pattern": {r"layers\.1\.self_attn\.q_proj": 6}}))


def weights_for(adapters: Sequence[Any]) -> tuple[float, ...]:
    return (0.6, -0.4, 0.3)[: len(adapters)]


def method_options(method: str, weights: Sequence[float] = WEIGHTS,
                   **extra: Any) -> dict[str, Any]:
    """add_weighted_adapter's keyword arguments for ``method`` (ours take the same names)."""
    options: dict[str, Any] = {}
    if method not in ("cat", "linear", "svd"):
        options["density"] = DENSITY
    if method.startswith(("ties", "dare_ties")):
        options["majority_sign_method"] = "frequency" if "svd" in method else "total"
    return {**options, **extra}


def build(tiny_models: TinyModels, case: Case) -> tuple[Path, list[Path]]:
    base = tiny_models.base(case.family, case.base_dtype)
    return base, [tiny_models.adapter(base, adapter_dtype=case.adapter_dtype, **lora)
                  for lora in case.adapters]


def inputs_of(adapters: Sequence[Path], fingerprints: Sequence[str] | None = None
              ) -> list[ComposeInput]:
    prints = fingerprints or ["sha256:tiny"] * len(adapters)
    return [ComposeInput(f"acme/a{i}@1", json.loads((a / "adapter_config.json").read_text()),
                         a / "adapter_model.safetensors", fp)
            for i, (a, fp) in enumerate(zip(adapters, prints, strict=True))]


def base_order(base: Path) -> list[str]:
    return module_order_from_config(json.loads((base / "config.json").read_text()))


def ours(base: Path, adapters: Sequence[Path], out: Path, method: str,
         weights: Sequence[float] = WEIGHTS, *, order: bool = True,
         **options: Any) -> ComposeResult:
    dtype = json.loads((base / "config.json").read_text())["dtype"]
    seed = options.pop("seed", SEED if method.startswith("dare") else None)
    return compose_adapters(
        inputs_of(adapters), ComposeOptions(method, tuple(weights), seed=seed, **options), out,
        base_dtype=getattr(torch, dtype), module_order=base_order(base) if order else None)


def peft_loaded(base: Path, adapters: Sequence[Path]) -> Any:
    model = PeftModel.from_pretrained(load_model(base), str(adapters[0]), adapter_name="a0")
    for i, adapter in enumerate(adapters[1:], start=1):
        model.load_adapter(str(adapter), adapter_name=f"a{i}")
    return model


def peft_compose(base: Path, adapters: Sequence[Path], out: Path, method: str,
                 weights: Sequence[float] = WEIGHTS, **options: Any) -> Path:
    model = peft_loaded(base, adapters)
    seed = options.pop("seed", SEED if method.startswith("dare") else None)
    if seed is not None:
        torch.manual_seed(seed)
    names = [f"a{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(names, list(weights), "composed", combination_type=method,
                               **options)
    model.save_pretrained(out, selected_adapters=["composed"])
    return out / "composed"


def assert_same_tensors(ours_dir: Path, peft_dir: Path) -> None:
    mine = load_file(ours_dir / "adapter_model.safetensors")
    theirs = load_file(peft_dir / "adapter_model.safetensors")
    assert sorted(mine) == sorted(theirs)
    for key, tensor in theirs.items():
        assert mine[key].dtype == tensor.dtype and mine[key].shape == tensor.shape, key
        assert torch.equal(mine[key], tensor), key


def config_of(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / "adapter_config.json").read_text())
    if isinstance(config["target_modules"], list):  # PEFT writes a set in hash order
        config["target_modules"] = sorted(config["target_modules"])
    return config


def assert_equals_peft(ours_dir: Path, peft_dir: Path, method: str) -> None:
    assert_same_tensors(ours_dir, peft_dir)
    assert config_of(ours_dir) == config_of(peft_dir)
    mine = (ours_dir / "adapter_model.safetensors").read_bytes()
    theirs = (peft_dir / "adapter_model.safetensors").read_bytes()
    if method != "cat":  # cat: PEFT's zero padding is init * 0.0, i.e. signed zeros
        assert mine == theirs


def nothing_created(folder: Path) -> None:
    assert list(folder.iterdir()) == [], "a refused composition left files behind"


# --- equality with PEFT -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
def test_composed_tensors_equal_peft(tiny_models: TinyModels, tmp_path: Path, case: str,
                                     method: str) -> None:
    """Every method, bit for bit, on every case (dare: given the seed, modules in the base's
    order); the file is PEFT's byte for byte but for cat's signed zero padding."""
    base, adapters = build(tiny_models, CASES[case])
    options, weights = method_options(method), weights_for(adapters)
    result = ours(base, adapters, tmp_path / "ours", method, weights, **options)
    reference = peft_compose(base, adapters, tmp_path / "peft", method, weights, **options)
    assert_equals_peft(tmp_path / "ours", reference, method)
    assert result.parameters["method"] == method
    assert bool(result.energy) == (method in SVD_METHODS)


@pytest.mark.parametrize("method", ["cat", "svd", "ties_svd", "dare_linear_svd"])
def test_different_ranks(tiny_models: TinyModels, tmp_path: Path, method: str) -> None:
    """cat sums the ranks (4 + 8 + max(2, 6)); the svd methods take the largest or svd_rank;
    rank_pattern inputs included."""
    base, adapters = build(tiny_models, DIFFERENT_RANKS)
    weights = (0.5, 0.3, -0.7)
    for rank in (None, 3) if method != "cat" else (None,):
        extra = {} if rank is None else {"svd_rank": rank}
        options = method_options(method, **extra)
        out = tmp_path / f"ours-{rank}"
        result = ours(base, adapters, out, method, weights, **options)
        reference = peft_compose(base, adapters, tmp_path / f"peft-{rank}", method, weights,
                                 **options)
        assert_equals_peft(out, reference, method)
        assert result.parameters["rank"] == {"cat": 18}.get(method, rank or 8)


def test_svd_clamp_and_reduced_matrices(tiny_models: TinyModels, tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["gpt2_fan_in_fan_out"])
    options = {"svd_clamp": 0.9, "svd_full_matrices": False, "svd_rank": 3}
    ours(base, adapters, tmp_path / "ours", "svd", **options)
    reference = peft_compose(base, adapters, tmp_path / "peft", "svd", **options)
    assert_equals_peft(tmp_path / "ours", reference, "svd")


def test_one_input_is_linear_whatever_the_method(tiny_models: TinyModels, tmp_path: Path) -> None:
    """PEFT composes a single adapter with linear, even when svd is asked for."""
    base, adapters = build(tiny_models, CASES["llama"])
    result = ours(base, adapters[:1], tmp_path / "ours", "svd", (0.7,))
    reference = peft_compose(base, adapters[:1], tmp_path / "peft", "svd", (0.7,))
    assert_equals_peft(tmp_path / "ours", reference, "linear")
    assert result.parameters["method"] == "linear" and result.energy == {}


# --- the composed adapter in use ---------------------------------------------------------------


@pytest.mark.parametrize(("case", "method"), [
    ("llama", "linear"), ("rslora_different_targets", "cat"), ("gpt2_fan_in_fan_out", "ties_svd"),
    ("bf16_base_and_adapters", "cat"), ("llama", "dare_ties")])
def test_loads_in_peft_with_peft_logits(tiny_models: TinyModels, tmp_path: Path, case: str,
                                        method: str) -> None:
    base, adapters = build(tiny_models, CASES[case])
    options, weights = method_options(method), weights_for(adapters)
    ours(base, adapters, tmp_path / "ours", method, weights, **options)
    reference = peft_compose(base, adapters, tmp_path / "peft", method, weights, **options)
    tokens = torch.arange(1, 17).reshape(2, 8)
    logits = []
    for folder in (tmp_path / "ours", reference):
        model = PeftModel.from_pretrained(load_model(base), str(folder)).eval()
        with torch.no_grad():
            logits.append(model(input_ids=tokens).logits)
    assert torch.equal(logits[0], logits[1])
    with torch.no_grad():
        plain = load_model(base).eval()(input_ids=tokens).logits
    assert not torch.equal(logits[0], plain)  # the composition does change the model


@pytest.mark.parametrize(("case", "method"), [
    ("llama", "linear"), ("gpt2_fan_in_fan_out", "cat"), ("bf16_base_and_adapters", "svd")])
def test_merges_like_peft_merges_its_composition(tiny_models: TinyModels, tmp_path: Path,
                                                 case: str, method: str) -> None:
    """The merge worker's merge of our composition == PEFT's merge_and_unload of its own."""
    base, adapters = build(tiny_models, CASES[case])
    ours(base, adapters, tmp_path / "ours", method)
    reference = peft_compose(base, adapters, tmp_path / "peft", method)
    merge_adapter(base, tmp_path / "ours", tmp_path / "merged")
    merged = PeftModel.from_pretrained(load_model(base), str(reference)).merge_and_unload()
    expected = merged.state_dict()
    tensors = read_folder(tmp_path / "merged")
    assert tensors.keys() == read_folder(base).keys()
    for name, tensor in tensors.items():
        assert tensor.dtype == torch_dtype(CASES[case].base_dtype)
        assert torch.equal(tensor, expected[name]), name


# --- determinism and what is reported ------------------------------------------------------


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties_svd"])
def test_dare_is_reproducible_by_seed(tiny_models: TinyModels, tmp_path: Path,
                                      method: str) -> None:
    """Same inputs + seed: same bytes, also in sorted module order (no base config at hand);
    another seed draws other masks. Only the base's order gives PEFT's own draws (here the
    orders differ: self_attn before mlp, up_proj before down_proj)."""
    base, adapters = build(tiny_models, CASES["rslora_different_targets"])
    options, weights = method_options(method), weights_for(adapters)
    files = {}
    for name, seed, order in (("a", 7, True), ("b", 7, True), ("c", 8, True),
                              ("d", 7, False), ("e", 7, False)):
        result = ours(base, adapters, tmp_path / name, method, weights, order=order, seed=seed,
                      **options)
        files[name] = (tmp_path / name / "adapter_model.safetensors").read_bytes()
        assert result.parameters["seed"] == seed
        assert result.parameters["module_order"] == ("base" if order else "sorted")
    assert files["a"] == files["b"] and files["d"] == files["e"]
    assert files["a"] != files["c"] and files["a"] != files["d"]
    reference = peft_compose(base, adapters, tmp_path / "peft", method, weights, seed=7,
                             **options)
    assert (reference / "adapter_model.safetensors").read_bytes() == files["a"]


def test_the_callers_random_state_is_untouched(tiny_models: TinyModels, tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["llama"])
    torch.manual_seed(99)
    expected = torch.rand(4)
    torch.manual_seed(99)
    ours(base, adapters, tmp_path / "ours", "dare_ties", **method_options("dare_ties"))
    assert torch.equal(torch.rand(4), expected)


def test_svd_energy_per_module(tiny_models: TinyModels, tmp_path: Path) -> None:
    """Energy kept = sum(S[:r]^2) / sum(S^2) of the combined delta, per module; a rank that
    keeps every singular value keeps all of it."""
    base, adapters = build(tiny_models, CASES["llama"])
    low = ours(base, adapters, tmp_path / "low", "svd", svd_rank=2)
    full = ours(base, adapters, tmp_path / "full", "svd", svd_rank=8)  # 2 inputs x rank 4
    tensors = [load_file(a / "adapter_model.safetensors") for a in adapters]
    assert set(low.energy) == {f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in QV}
    for module, kept in low.energy.items():
        key = f"base_model.model.{module}"
        delta = sum(w * (t[f"{key}.lora_B.weight"] @ t[f"{key}.lora_A.weight"]).double() * s
                    for w, t, s in zip(WEIGHTS, tensors, (8 / 4, 16 / 4), strict=True))
        squares = torch.linalg.svdvals(delta) ** 2
        assert kept == pytest.approx(float(squares[:2].sum() / squares.sum()), rel=1e-5)
        assert 0 < kept < 1
        assert full.energy[module] == pytest.approx(1.0, abs=1e-9)


def test_progress_follows_the_base_order_and_cancel_leaves_nothing(
        tiny_models: TinyModels, tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["rslora_different_targets"])
    seen: list[str] = []
    compose_adapters(inputs_of(adapters), ComposeOptions("linear", (0.5, 0.5, 0.5)),
                     tmp_path / "again", module_order=base_order(base),
                     progress=lambda fraction, module: seen.append(module))
    order = [m for m in base_order(base) if m in seen]
    assert seen[:-1] == order and seen[-1] == "done" and len(order) == 8
    calls = iter(range(100))
    with pytest.raises(ComposeCancelled):
        compose_adapters(inputs_of(adapters), ComposeOptions("linear", (0.5, 0.5, 0.5)),
                         tmp_path / "cancelled" / "out", should_cancel=lambda: next(calls) == 3)
    nothing_created(tmp_path / "cancelled")


def test_inputs_are_released_module_by_module(tiny_models: TinyModels, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each input tensor's pages are dropped once its module is composed (memory is bounded by
    one module's tensors), and dropping them changes no bits."""
    base, adapters = build(tiny_models, CASES["rslora_different_targets"])
    released: list[tuple[int, str]] = []
    original = compose_module._Run._release

    def recording(run: Any, index: int, key: str) -> None:
        released.append((index, key))
        original(run, index, key)

    monkeypatch.setattr(compose_module._Run, "_release", recording)
    ours(base, adapters, tmp_path / "ours", "svd", weights_for(adapters))
    keys = [(i, k) for i, a in enumerate(adapters)
            for k in load_file(a / "adapter_model.safetensors")]
    assert sorted(released) == sorted(keys)


# --- refusals: a clear error, before any work, nothing created --------------------------------


def refused(tmp_path: Path, adapters: Sequence[Path], options: ComposeOptions,
            fingerprints: Sequence[str] | None = None) -> Exception:
    folder = tmp_path / "refused"
    folder.mkdir(parents=True)
    with pytest.raises((BadRequest, Conflict)) as info:
        compose_adapters(inputs_of(adapters, fingerprints), options, folder / "out")
    nothing_created(folder)
    return info.value


def test_refuses_inputs_of_different_bases(tiny_models: TinyModels, tmp_path: Path) -> None:
    _, adapters = build(tiny_models, CASES["llama"])
    error = refused(tmp_path, adapters, ComposeOptions("linear", WEIGHTS),
                    ["sha256:aaaa", "sha256:bbbb"])
    assert isinstance(error, IncompatibleBase)
    assert "sha256:aaaa" in str(error) and "sha256:bbbb" in str(error)
    assert error.exit_code == 4


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "dare_ties",
                                    "magnitude_prune"])
def test_refuses_different_ranks_where_peft_does(tiny_models: TinyModels, tmp_path: Path,
                                                 method: str) -> None:
    base, adapters = build(tiny_models, DIFFERENT_RANKS)
    options = method_options(method)
    error = refused(tmp_path, adapters[:2], ComposeOptions(method, WEIGHTS, seed=1, **options))
    assert "one rank" in str(error) and "[4, 8]" in str(error)
    with pytest.raises(ValueError, match="same r value"):
        peft_compose(base, adapters[:2], tmp_path / "peft", method, **options)


def test_refuses_a_rank_pattern_that_breaks_equal_ranks(tiny_models: TinyModels,
                                                        tmp_path: Path) -> None:
    """r=2 with a rank_pattern of 6 has PEFT rank 6, like a rank-6 adapter: PEFT accepts the
    pair for linear, then fails or writes factors that do not match its config."""
    base = tiny_models.base("llama", "fp32")
    six = tiny_models.adapter(base, r=6, lora_alpha=8, target_modules=QV)
    adapters = [build(tiny_models, DIFFERENT_RANKS)[1][2], six]
    error = refused(tmp_path, adapters, ComposeOptions("linear", WEIGHTS))
    assert "rank 2 in input 1" in str(error)


@pytest.mark.parametrize(("lora", "words"), [
    ({"use_dora": True}, "DoRA"),
    ({"lora_bias": True}, "lora_bias"),
    ({"bias": "lora_only"}, "bias='lora_only'"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_refuses_what_composition_would_drop(tiny_models: TinyModels, tmp_path: Path,
                                             lora: dict[str, Any], words: str) -> None:
    base, adapters = build(tiny_models, CASES["llama"])
    other = tiny_models.adapter(base, r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"],
                                **lora)
    for method in ("linear", "cat", "svd"):
        error = refused(tmp_path / method, [adapters[0], other], ComposeOptions(method, WEIGHTS))
        assert isinstance(error, InvalidAdapter) and words in str(error)
        assert "acme/a1@1" in str(error)


def test_refuses_modules_to_save_conflicts_like_peft(tiny_models: TinyModels,
                                                    tmp_path: Path) -> None:
    base = tiny_models.base("llama", "fp32")
    adapters = [tiny_models.adapter(base, r=4, lora_alpha=a, target_modules=QV,
                                    modules_to_save=["lm_head"]) for a in (8, 16)]
    error = refused(tmp_path, adapters, ComposeOptions("linear", WEIGHTS))
    assert "same module with modules_to_save" in str(error)
    with pytest.raises(ValueError, match="same module with modules_to_save"):
        peft_compose(base, adapters, tmp_path / "peft", "linear")


def test_refuses_mixed_target_module_types_like_peft(tiny_models: TinyModels,
                                                     tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["llama"])
    regex = tiny_models.adapter(base, r=4, lora_alpha=8, target_modules=r".*\.k_proj")
    error = refused(tmp_path, [adapters[0], regex], ComposeOptions("linear", WEIGHTS))
    assert "target modules type" in str(error)
    with pytest.raises(ValueError, match="target modules type"):
        peft_compose(base, [adapters[0], regex], tmp_path / "peft", "linear")


def test_regex_targets_are_joined_like_peft(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "fp32")
    adapters = [tiny_models.adapter(base, r=4, lora_alpha=8, target_modules=r".*\.k_proj"),
                tiny_models.adapter(base, r=4, lora_alpha=8, target_modules=r".*\.up_proj")]
    ours(base, adapters, tmp_path / "ours", "ties", **method_options("ties"))
    reference = peft_compose(base, adapters, tmp_path / "peft", "ties", **method_options("ties"))
    assert_equals_peft(tmp_path / "ours", reference, "ties")
    assert config_of(tmp_path / "ours")["target_modules"] == r"(.*\.k_proj)|(.*\.up_proj)"


@pytest.mark.parametrize(("options", "words"), [
    (ComposeOptions("linear", (1.0,)), "1 weights for 2 adapters"),
    (ComposeOptions("linear", (1.0, 2.0, 3.0)), "3 weights for 2 adapters"),
    (ComposeOptions("linear", (1.0, float("nan"))), "finite"),
    (ComposeOptions("average", WEIGHTS), "'average' is not one of"),
    (ComposeOptions("ties", WEIGHTS), "needs a density in (0, 1]"),
    (ComposeOptions("magnitude_prune", WEIGHTS, density=1.5), "needs a density"),
    (ComposeOptions("ties", WEIGHTS, density=0.5, majority_sign_method="mean"),
     "majority_sign_method"),
    (ComposeOptions("dare_linear", WEIGHTS, density=0.5), "give a seed"),
    (ComposeOptions("dare_ties_svd", WEIGHTS, density=0.5, seed=-1), "give a seed"),
    (ComposeOptions("svd", WEIGHTS, svd_driver="gesvdj"), "CUDA only"),
    (ComposeOptions("svd", WEIGHTS, svd_rank=0), "svd_rank must be a positive integer"),
    (ComposeOptions("svd", WEIGHTS, svd_rank=17), "no rank-17 decomposition"),
    (ComposeOptions("svd", WEIGHTS, svd_clamp=2.0), "svd_clamp"),
])
def test_refuses_bad_options(tiny_models: TinyModels, tmp_path: Path, options: ComposeOptions,
                             words: str) -> None:
    _, adapters = build(tiny_models, CASES["llama"])
    error = refused(tmp_path, adapters, options)
    assert isinstance(error, BadRequest) and words in str(error)


def test_refuses_inputs_selecting_modules_differently(tiny_models: TinyModels,
                                                      tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["llama"])
    layer0 = tiny_models.adapter(base, r=4, lora_alpha=8, target_modules=QV,
                                 layers_to_transform=[0])
    error = refused(tmp_path, [adapters[0], layer0], ComposeOptions("linear", WEIGHTS))
    assert "layers_to_transform" in str(error)


def test_refuses_a_non_empty_output_folder(tiny_models: TinyModels, tmp_path: Path) -> None:
    base, adapters = build(tiny_models, CASES["llama"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Conflict):
        ours(base, adapters, out, "linear")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# --- the process and the config ---------------------------------------------------------------

FRESH_PROCESS = """
import json, sys
from pathlib import Path
import torch
from merge_worker.compose import compose_adapters
from merge_worker.compose_plan import ComposeInput, ComposeOptions
out, method, options, *adapters = sys.argv[1:]
inputs = [ComposeInput(f"a{i}", json.loads((Path(a) / "adapter_config.json").read_text()),
                       Path(a) / "adapter_model.safetensors") for i, a in enumerate(adapters)]
compose_adapters(inputs, ComposeOptions(method, (0.6, -0.4), **json.loads(options)), Path(out))
print(json.dumps(sorted(m for m in ("peft", "transformers") if m in sys.modules)))
"""


@pytest.mark.parametrize("method", ["linear", "ties_svd"])
def test_a_fresh_process_composes_without_importing_peft(tiny_models: TinyModels,
                                                         tmp_path: Path, method: str) -> None:
    """PEFT's merge_utils file runs without the peft package (whose import pulls in
    transformers): same tensors, and neither package is imported."""
    base, adapters = build(tiny_models, CASES["gpt2_fan_in_fan_out"])
    options = method_options(method)
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "ours"), method,
         json.dumps(options), *map(str, adapters)], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2])
    assert json.loads(done.stdout.splitlines()[-1]) == []
    reference = peft_compose(base, adapters, tmp_path / "peft", method, **options)
    assert_equals_peft(tmp_path / "ours", reference, method)


def test_a_config_from_another_peft_version_goes_through_peft(tiny_models: TinyModels,
                                                              tmp_path: Path) -> None:
    """An older writer's config (fields missing, another peft_version) is normalised by PEFT's
    own LoraConfig, as PEFT does when it loads it."""
    base, adapters = build(tiny_models, CASES["llama"])
    old = tmp_path / "old"
    old.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (old / name).write_bytes((adapters[0] / name).read_bytes())
    config = json.loads((old / "adapter_config.json").read_text())
    for field in ("lora_ga_config", "use_qalora", "qalora_group_size", "ensure_weight_tying"):
        del config[field]
    (old / "adapter_config.json").write_text(json.dumps({**config, "peft_version": "0.13.0"}))
    ours(base, [old, adapters[1]], tmp_path / "ours", "svd")
    reference = peft_compose(base, [old, adapters[1]], tmp_path / "peft", "svd")
    assert_equals_peft(tmp_path / "ours", reference, "svd")
    assert config_of(tmp_path / "ours")["peft_version"] == "0.13.0"
    assert "lora_ga_config" in config_of(tmp_path / "ours")


def test_unset_and_false_select_alike(tiny_models: TinyModels, tmp_path: Path) -> None:
    """A config without fan_in_fan_out / layers_to_transform selects like one with false /
    null (PEFT's defaults): not refused, and composed like PEFT."""
    base, adapters = build(tiny_models, CASES["llama"])
    terse = tmp_path / "terse"
    terse.mkdir()
    (terse / "adapter_model.safetensors").write_bytes(
        (adapters[1] / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapters[1] / "adapter_config.json").read_text())
    for field in ("fan_in_fan_out", "layers_to_transform", "exclude_modules"):
        del config[field]
    (terse / "adapter_config.json").write_text(json.dumps(config))
    ours(base, [adapters[0], terse], tmp_path / "ours", "cat")
    reference = peft_compose(base, [adapters[0], terse], tmp_path / "peft", "cat")
    assert_equals_peft(tmp_path / "ours", reference, "cat")


def test_refuses_a_missing_weights_file(tiny_models: TinyModels, tmp_path: Path) -> None:
    _, adapters = build(tiny_models, CASES["llama"])
    inputs = inputs_of(adapters)
    inputs[1] = ComposeInput(inputs[1].label, inputs[1].config, tmp_path / "gone.safetensors",
                             inputs[1].base_fingerprint)
    (tmp_path / "refused").mkdir()
    with pytest.raises(InvalidAdapter, match="acme/a1@1: no weights file"):
        compose_adapters(inputs, ComposeOptions("linear", WEIGHTS), tmp_path / "refused" / "out")
    nothing_created(tmp_path / "refused")
