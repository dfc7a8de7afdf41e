"""merge_worker.merge against PEFT's own merge_and_unload, on tiny real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merge_worker import lora_math
from merge_worker import merge as merge_module
from merge_worker.merge import MergeCancelled, merge_adapter
from registry.errors import Conflict, IncompatibleBase, InvalidAdapter, ValidationFailed
from tests.fixtures.models import TinyModels, load_model, read_folder

LLAMA_QV = {"target_modules": ["q_proj", "v_proj"], "r": 4, "lora_alpha": 8}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("llama", LLAMA_QV),
    "rslora": ("llama", {**LLAMA_QV, "use_rslora": True, "lora_alpha": 16}),
    "patterns": ("llama", {
        "target_modules": "all-linear", "r": 4, "lora_alpha": 8,
        "rank_pattern": {"q_proj": 2, r"layers\.1\.mlp\.down_proj": 8},
        "alpha_pattern": {"v_proj": 3, "gate_proj": 32},
    }),
    "fan_in_fan_out": ("gpt2", {"target_modules": ["c_attn", "c_proj", "c_fc"], "r": 4,
                                "lora_alpha": 8, "fan_in_fan_out": True}),
    "embedding": ("llama", {"target_modules": ["embed_tokens", "q_proj"], "r": 4,
                            "lora_alpha": 8}),
    "lora_bias": ("gpt2", {"target_modules": ["c_attn", "c_fc"], "r": 4, "lora_alpha": 8,
                           "fan_in_fan_out": True, "lora_bias": True}),
    "modules_to_save": ("llama", {**LLAMA_QV, "modules_to_save": ["lm_head"]}),
    "bias_all": ("gpt2", {"target_modules": ["c_attn"], "r": 4, "lora_alpha": 8,
                          "fan_in_fan_out": True, "bias": "all"}),
}
DORA_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dora_linear_embedding": ("llama", {"target_modules": ["q_proj", "v_proj", "embed_tokens"],
                                        "r": 4, "lora_alpha": 8, "use_dora": True}),
    "dora_conv1d": ("gpt2", {"target_modules": ["c_attn"], "r": 4, "lora_alpha": 8,
                             "fan_in_fan_out": True, "use_dora": True}),
}


def assert_matches_peft(out: Path, base: Path, reference: torch.nn.Module, exact: bool) -> None:
    ours, base_tensors = read_folder(out), read_folder(base)
    assert set(ours) == set(base_tensors)
    expected = reference.state_dict()
    changed = 0
    for name, tensor in ours.items():
        want = expected[name]
        assert tensor.dtype == want.dtype and tensor.shape == want.shape, name
        if exact:
            assert torch.equal(tensor, want), name
        else:
            torch.testing.assert_close(tensor, want, rtol=1e-6, atol=0, msg=name)
        changed += not torch.equal(tensor, base_tensors[name])
    assert changed > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_bit_identical_to_peft(
    tiny_models: TinyModels, tmp_path: Path, case: str, dtype: str
) -> None:
    family, lora = CASES[case]
    base = tiny_models.base(family, dtype)
    adapter = tiny_models.adapter(base, **lora)
    result = merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter), exact=True)
    assert result.tensors_merged > 0
    # embeddings come with their saved base_layer.weight; modules_to_save and biases replace
    assert (result.tensors_replaced > 0) == (case in ("embedding", "modules_to_save", "bias_all"))


@pytest.mark.parametrize("case", ["patterns", "embedding", "lora_bias", "modules_to_save",
                                  "bias_all", "dora_conv1d", "dora_linear_embedding"])
def test_every_adapter_tensor_is_released_once_used(
    tiny_models: TinyModels, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter's mapped pages are dropped tensor by tensor (peak memory), and dropping
    them changes no bits."""
    family, lora = {**CASES, **DORA_CASES}[case]
    base = tiny_models.base(family, "fp32")
    adapter = tiny_models.adapter(base, **lora)
    released: list[str] = []
    original = merge_module._releaser

    def recording(reader: Any) -> Any:
        release = original(reader)

        def record(key: str) -> None:
            released.append(key)
            release(key)
        return record

    monkeypatch.setattr(merge_module, "_releaser", recording)
    merge_adapter(base, adapter, tmp_path / "out")
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert sorted(released) == sorted(f.keys())
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter),
                        exact=not case.startswith("dora"))


@pytest.mark.parametrize("case", list(DORA_CASES))
def test_dora_matches_peft(tiny_models: TinyModels, tmp_path: Path, case: str) -> None:
    family, lora = DORA_CASES[case]
    base = tiny_models.base(family, "fp32")
    adapter = tiny_models.adapter(base, **lora)
    merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter),
                        exact=False)


def test_bf16_adapter_file_on_bf16_base(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "bf16")
    adapter = tiny_models.adapter(base, adapter_dtype="bf16", **LLAMA_QV)
    merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter), exact=True)


def test_sharded_base_keeps_its_sharding_and_index(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "fp32")
    adapter = tiny_models.adapter(base, **LLAMA_QV)
    result = merge_adapter(base, adapter, tmp_path / "out")
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) > 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    base_index = json.loads((base / "model.safetensors.index.json").read_text())
    assert index == base_index
    for shard in shards:
        with safe_open(base / shard, "pt") as a, safe_open(tmp_path / "out" / shard, "pt") as b:
            assert list(a.keys()) == list(b.keys())
    sizes = {f.name: f.size for f in result.files}
    assert sizes == {p.name: p.stat().st_size for p in (tmp_path / "out").iterdir()}
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (base / name).read_bytes()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merged_folder_loads_and_gives_peft_logits(
    tiny_models: TinyModels, tmp_path: Path, family: str
) -> None:
    base = tiny_models.base(family, "fp32")
    adapter = tiny_models.adapter(base, **CASES["plain" if family == "llama" else "lora_bias"][1])
    merge_adapter(base, adapter, tmp_path / "out")
    ours = load_model(tmp_path / "out").eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 127]])
    with torch.no_grad():
        want = tiny_models.peft_merged(base, adapter)(ids).logits
        got = ours(ids).logits
    assert torch.equal(got, want)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_tensors(folder: Path, file: str, fn: Any) -> None:
    tensors = load_file(folder / file)
    fn(tensors)
    save_file(tensors, folder / file, metadata={"format": "pt"})


def assert_nothing_written(out: Path) -> None:
    """``out`` lives in a folder of its own: no output and no staging folder left there."""
    assert list(out.parent.iterdir()) == []


def _peft_type(ad: Path, base: Path) -> None:
    edit_json(ad / "adapter_config.json", peft_type="IA3")


def _layer_replication(ad: Path, base: Path) -> None:
    edit_json(ad / "adapter_config.json", layer_replication=[[0, 1]])


def _target_parameters(ad: Path, base: Path) -> None:
    edit_json(ad / "adapter_config.json", target_parameters=["mlp.experts.down_proj"])


def _quantized_config(ad: Path, base: Path) -> None:
    edit_json(base / "config.json", quantization_config={"quant_method": "bitsandbytes"})


def _int8_weight(ad: Path, base: Path) -> None:
    edit_tensors(base, "model.safetensors", lambda t: t.update(
        {"transformer.h.0.attn.c_attn.weight": torch.ones(32, 96, dtype=torch.int8)}))


def _unknown_key(ad: Path, base: Path) -> None:
    edit_tensors(ad, "adapter_model.safetensors",
                 lambda t: t.update({"base_model.model.transformer.h.0.mystery": torch.ones(2)}))


@pytest.mark.parametrize("spoil", [_peft_type, _layer_replication, _target_parameters,
                                   _quantized_config, _int8_weight, _unknown_key])
def test_unsupported_refused_before_any_output(
    tiny_models: TinyModels, tmp_path: Path, spoil: Any
) -> None:
    source = tiny_models.base("gpt2", "fp32")
    base = copy_tree(source, tmp_path / "base")
    adapter = copy_tree(tiny_models.adapter(source, **CASES["fan_in_fan_out"][1]),
                        tmp_path / "adapter")
    spoil(adapter, base)
    (tmp_path / "outs").mkdir()
    with pytest.raises(InvalidAdapter):
        merge_adapter(base, adapter, tmp_path / "outs" / "out")
    assert_nothing_written(tmp_path / "outs" / "out")


def test_incompatible_base_refused(tiny_models: TinyModels, tmp_path: Path) -> None:
    other = tiny_models.base("llama", "fp32", hidden_size=48, num_attention_heads=6,
                             num_key_value_heads=2)
    adapter = tiny_models.adapter(tiny_models.base("llama", "fp32"), **LLAMA_QV)
    (tmp_path / "outs").mkdir()
    with pytest.raises(IncompatibleBase) as err:
        merge_adapter(other, adapter, tmp_path / "outs" / "out")
    assert len(err.value.extra["mismatches"]) == 4
    assert_nothing_written(tmp_path / "outs" / "out")


def test_nan_adapter_fails_validation_and_leaves_nothing(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    adapter = copy_tree(tiny_models.adapter(tiny_models.base("llama", "fp32"), **LLAMA_QV),
                        tmp_path / "adapter")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    edit_tensors(adapter, "adapter_model.safetensors", lambda t: t[key].fill_(float("nan")))
    (tmp_path / "outs").mkdir()
    with pytest.raises(ValidationFailed) as err:
        merge_adapter(tiny_models.base("llama", "fp32"), adapter, tmp_path / "outs" / "out")
    assert err.value.extra["tensor"] == "model.layers.1.self_attn.v_proj.weight"
    assert "model.layers.1.self_attn.v_proj.weight" in err.value.detail
    assert_nothing_written(tmp_path / "outs" / "out")


def test_cancellation_leaves_nothing(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "fp32")
    adapter = tiny_models.adapter(base, **LLAMA_QV)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 5

    (tmp_path / "outs").mkdir()
    with pytest.raises(MergeCancelled):
        merge_adapter(base, adapter, tmp_path / "outs" / "out", should_cancel=cancel)
    assert_nothing_written(tmp_path / "outs" / "out")


def test_progress_is_reported_up_to_one(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "fp32")
    seen: list[tuple[float, str]] = []
    merge_adapter(base, tiny_models.adapter(base, **LLAMA_QV), tmp_path / "out",
                  progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any("q_proj" in m for _, m in seen)


def test_existing_output_folder(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("gpt2", "fp32")
    adapter = tiny_models.adapter(base, **CASES["fan_in_fan_out"][1])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(Conflict):
        merge_adapter(base, adapter, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    merge_adapter(base, adapter, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_stale_weight_files_are_not_copied(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = copy_tree(tiny_models.base("gpt2", "fp32"), tmp_path / "base")
    (base / "pytorch_model.bin").write_bytes(b"stale")
    (base / "original").mkdir()
    (base / "original" / "consolidated.00.pth").write_bytes(b"stale")
    (base / "original" / "params.json").write_text("{}")
    adapter = tiny_models.adapter(tiny_models.base("gpt2", "fp32"), **CASES["fan_in_fan_out"][1])
    merge_adapter(base, adapter, tmp_path / "out")
    names = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")}
    assert names == {"config.json", "generation_config.json", "tokenizer_config.json",
                     "model.safetensors", "original", "original/params.json"}


@pytest.mark.parametrize("case", ["patterns", "fan_in_fan_out"])
def test_row_blocks_do_not_change_bits(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The merge computes B @ A by blocks of rows; tiny blocks must give PEFT's bits too."""
    monkeypatch.setattr(lora_math, "BLOCK_ELEMENTS", 40)
    monkeypatch.setattr(lora_math, "MIN_BLOCK_ROWS", 4)  # 4-7 rows per block here
    family, lora = CASES[case]
    base = tiny_models.base(family, "bf16")
    adapter = tiny_models.adapter(base, **lora)
    merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter), exact=True)


def test_copy_without_copy_file_range(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untouched tensors fall back to plain writes where the kernel cannot copy files."""

    def unsupported(*args: Any) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("os.copy_file_range", unsupported)
    base = tiny_models.base("llama", "bf16")
    adapter = tiny_models.adapter(base, **LLAMA_QV)
    merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter), exact=True)


def test_non_finite_untouched_base_tensor_is_refused(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    source = tiny_models.base("gpt2", "fp32")
    base = copy_tree(source, tmp_path / "base")
    edit_tensors(base, "model.safetensors",
                 lambda t: t["transformer.ln_f.weight"].__setitem__(3, float("inf")))
    (tmp_path / "outs").mkdir()
    with pytest.raises(ValidationFailed, match=r"transformer\.ln_f\.weight"):
        merge_adapter(base, tiny_models.adapter(source, **CASES["fan_in_fan_out"][1]),
                      tmp_path / "outs" / "out")
    assert_nothing_written(tmp_path / "outs" / "out")
