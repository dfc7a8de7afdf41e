"""Fixtures of the client and CLI tests: a tiny real PEFT adapter folder and helpers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client import Client
from tests.fixtures.server import LiveServer

BASE = "tiny/llama@0123456789abcdef0123456789abcdef01234567"


def _build_peft_adapter(dest: Path) -> Path:
    """A real PEFT save_pretrained folder of a tiny random Llama (nothing downloaded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def adapter_template(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared ``peft_adapter_dir`` fixture when available, else one built here."""
    try:
        path: Path = request.getfixturevalue("peft_adapter_dir")
        return path
    except pytest.FixtureLookupError:
        return _build_peft_adapter(tmp_path_factory.mktemp("peft") / "adapter")


@pytest.fixture
def adapter_dir(adapter_template: Path, tmp_path: Path) -> Path:
    """A private copy of the adapter folder, free to modify."""
    dest = tmp_path / "adapter"
    shutil.copytree(adapter_template, dest)
    return dest


def variant(folder: Path, tag: str) -> Path:
    """Make ``folder`` a different version by changing a small extra file."""
    (folder / "notes.txt").write_text(f"variant {tag}\n")
    return folder


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, live_server.admin_token) as c:
        yield c
