"""Serving target profiles: what a channel's serving stack can load.

* ``any``: no restriction beyond the registry's own checks.
* ``vllm``: vLLM's LoRA loader: rank at most ``max_rank`` (vLLM's ``--max-lora-rank``), no DoRA,
  no ``lora_bias``, ``bias: none``, and ``modules_to_save`` only for ``lm_head``/``embed_tokens``
  (vLLM serves those through its extra-vocab path and refuses other replacement modules).
* ``merged``: the version is served as a merged model: a merged artifact must exist.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry.errors import BadRequest
from registry.models import AdapterVersion
from registry.services import merges

PROFILES = ("any", "vllm", "merged")
VLLM_MAX_RANK = 64
VLLM_MODULES_TO_SAVE = frozenset({"lm_head", "embed_tokens"})


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise BadRequest(f"profile must be one of {', '.join(PROFILES)}")
    return name


def problems(session: Session, version: AdapterVersion, profile: str,
             max_rank: int = VLLM_MAX_RANK) -> list[str]:
    """Why ``version`` cannot be served by ``profile`` (empty: it can)."""
    check_profile(profile)
    if profile == "vllm":
        return vllm_problems(version.peft_config, max_rank)
    if profile == "merged":
        try:
            merges.latest_artifact(session, version)
        except Exception as exc:  # NotFound: no merged artifact
            return [str(exc)]
    return []


def vllm_problems(config: dict[str, Any], max_rank: int) -> list[str]:
    found: list[str] = []
    ranks = [int(config.get("r") or 0), *[int(v) for v in (config.get("rank_pattern") or {})
                                          .values()]]
    if max(ranks) > max_rank:
        found.append(f"rank {max(ranks)} exceeds vLLM's max LoRA rank {max_rank}")
    if config.get("use_dora"):
        found.append("DoRA adapters (use_dora) are not supported by vLLM")
    if config.get("lora_bias"):
        found.append("lora_bias is not supported by vLLM")
    if (config.get("bias") or "none") != "none":
        found.append(f"bias={config.get('bias')!r} is not supported by vLLM (needs 'none')")
    extra = set(config.get("modules_to_save") or []) - VLLM_MODULES_TO_SAVE
    if extra:
        found.append(f"modules_to_save {sorted(extra)} are not supported by vLLM "
                     f"(only {sorted(VLLM_MODULES_TO_SAVE)})")
    return found
