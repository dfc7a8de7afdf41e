"""The merge's row blocks shared by several threads: same bits as PEFT, errors handed back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from merge_worker import lora_math
from merge_worker.lora_math import Crew, Scratch
from merge_worker.merge import merge_adapter
from registry.errors import ValidationFailed
from tests.fixtures.models import TinyModels
from tests.merge_worker.test_merge import (
    CASES,
    LLAMA_QV,
    assert_matches_peft,
    assert_nothing_written,
    copy_tree,
    edit_tensors,
)


@pytest.fixture
def many_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three threads and 4-7 rows per block: every thread gets blocks of every tensor."""
    monkeypatch.setattr(lora_math, "COMPUTE_THREADS", 3)
    monkeypatch.setattr(lora_math, "BLOCK_ELEMENTS", 40)
    monkeypatch.setattr(lora_math, "MIN_BLOCK_ROWS", 4)


@pytest.mark.usefixtures("many_threads")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("case", ["patterns", "fan_in_fan_out", "lora_bias"])
def test_threaded_row_blocks_keep_peft_bits(
    tiny_models: TinyModels, tmp_path: Path, case: str, dtype: str
) -> None:
    family, lora = CASES[case]
    base = tiny_models.base(family, dtype)
    adapter = tiny_models.adapter(base, **lora)
    before = torch.get_num_threads()
    merge_adapter(base, adapter, tmp_path / "out")
    assert_matches_peft(tmp_path / "out", base, tiny_models.peft_merged(base, adapter), exact=True)
    assert torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name == "merge-rows"]


@pytest.mark.usefixtures("many_threads")
def test_nan_in_a_helper_thread_block_is_refused(tiny_models: TinyModels, tmp_path: Path) -> None:
    base = tiny_models.base("llama", "bf16")
    adapter = copy_tree(tiny_models.adapter(base, **LLAMA_QV), tmp_path / "adapter")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    edit_tensors(adapter, "adapter_model.safetensors", lambda t: t[key][-1].fill_(float("inf")))
    (tmp_path / "outs").mkdir()
    with pytest.raises(ValidationFailed) as err:
        merge_adapter(base, adapter, tmp_path / "outs" / "out")
    assert err.value.extra["tensor"] == "model.layers.0.self_attn.q_proj.weight"
    assert_nothing_written(tmp_path / "outs" / "out")


@pytest.mark.parametrize("fifo", [False, True])
def test_small_remainder_rows_join_the_last_block(
    fifo: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """130 rows in blocks of 64 would leave a 2-row product, which MKL computes with other
    kernels (float32 bits differ from the whole product's); it joins the last block instead."""
    monkeypatch.setattr(lora_math, "BLOCK_ELEMENTS", 64 * 1000)  # 64 rows of 1000
    torch.manual_seed(0)
    a, b = torch.randn(16, 1000), torch.randn(130, 16)
    # (on the machine this was written on, b[128:] @ a differs from (b @ a)[128:])
    delta = (b @ a) * 0.5  # PEFT: B @ A in one product, then * scaling
    base = torch.randn(1000, 130) if fifo else torch.randn(130, 1000)
    expected = base + (delta.T if fifo else delta)
    crew = Crew(2)
    try:
        out = torch.empty_like(base)
        finite = lora_math._add_lora(base, out, a, b, 0.5, fifo, crew)
    finally:
        crew.close()
    assert torch.equal(out, expected)
    assert finite


def test_crew_runs_every_block_once_each_thread_with_its_own_scratch() -> None:
    crew = Crew(3)
    seen: list[tuple[int, int, int]] = []

    def job(index: int, scratch: Scratch) -> None:
        seen.append((index, threading.get_ident(), id(scratch)))

    try:
        crew.run(200, job)
        crew.run(0, job)
    finally:
        crew.close()
    assert sorted(index for index, _, _ in seen) == list(range(200))
    scratch_of = {thread: scratch for _, thread, scratch in seen}
    assert len(set(scratch_of.values())) == len(scratch_of)  # no scratch shared by threads
    assert not any(t.is_alive() for t in crew._helpers)


@pytest.mark.parametrize("failing", [0, 57])
def test_crew_hands_back_the_first_error_and_stays_usable(failing: int) -> None:
    crew = Crew(2)

    def job(index: int, scratch: Scratch) -> None:
        if index == failing:
            raise ValueError(f"block {index}")

    try:
        with pytest.raises(ValueError, match=f"block {failing}"):
            crew.run(100, job)
        done: list[int] = []
        crew.run(10, lambda index, scratch: done.append(index))
        assert sorted(done) == list(range(10))
    finally:
        crew.close()
