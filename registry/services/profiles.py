"""Serving target profiles: what a channel's serving stack can load.

* ``any``: no restriction beyond the registry's own checks.
* ``vllm``: ``vllm serve`` with its own defaults (``--max-lora-rank 16``), checked by the rules
  of :mod:`registry.services.serving_compat` (DoRA, ``lora_bias``, ``bias``, ``modules_to_save``,
  inits, ranks, and, where the version's tensor header is recorded, dtypes and embedding
  targets). A shortcut: a serving pool (``lorareg pool``) knows the engine's real settings,
  base and architecture, and checks more.
* ``merged``: the version is served as a merged model: a merged artifact must exist.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from registry.errors import BadRequest
from registry.models import AdapterVersion
from registry.services import merges, serving_compat, version_tensors
from registry.statuses import CompatStatus

PROFILES = ("any", "vllm", "merged")
VLLM_MAX_RANK = serving_compat.VLLM_PROFILE.max_lora_rank  # vLLM's --max-lora-rank default


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise BadRequest(f"profile must be one of {', '.join(PROFILES)}")
    return name


def problems(session: Session, version: AdapterVersion, profile: str,
             max_rank: int = VLLM_MAX_RANK) -> list[str]:
    """Why ``version`` cannot be served by ``profile`` (empty: it can)."""
    check_profile(profile)
    if profile == "vllm":
        engine = replace(serving_compat.VLLM_PROFILE, max_lora_rank=max_rank)
        tensors = version_tensors.stored(session, [version.id]).get(version.id)
        return serving_compat.version_problems(engine, serving_compat.Candidate(
            f"{version.adapter.full_name}@{version.number}", version.peft_config, None,
            version.compat_status == CompatStatus.VERIFIED, tensors))
    if profile == "merged":
        try:
            merges.latest_artifact(session, version)
        except Exception as exc:  # NotFound: no merged artifact
            return [str(exc)]
    return []


def vllm_problems(config: dict[str, Any], max_rank: int) -> list[str]:
    """What ``vllm serve`` with ``--max-lora-rank max_rank`` refuses, from the config alone."""
    engine = replace(serving_compat.VLLM_PROFILE, max_lora_rank=max_rank)
    return serving_compat.config_problems(engine, config)
