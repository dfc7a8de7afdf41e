"""Build a tiny random Llama base and three PEFT LoRA adapters for it, offline.

    python examples/make_tiny_models.py OUT_DIR

writes OUT_DIR/base (safetensors, sharded), OUT_DIR/adapter-v1, -v2, -v3 (PEFT save_pretrained).
Nothing is downloaded: the config is written here and the weights are random.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
        "max_position_embeddings": 128, "tie_word_embeddings": False}


def main(out: Path) -> None:
    torch.manual_seed(0)
    base = out / "base"
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(base, max_shard_size="200KB")
    for i in (1, 2, 3):
        torch.manual_seed(i)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                          target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(out / f"adapter-v{i}")
    print(f"tiny base and adapters in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
