"""Request bodies of the serving-pool routes (registry/api/routes/pools.py), and their response
models (defined in :mod:`registry.wire`) built from rows."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from registry.api.schemas import In
from registry.models import AdapterVersion, Channel, ServingPool
from registry.services import desired_sets, pools
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK
from registry.wire import (
    DesiredOut,
    FileOut,
    MemberOut,
    PoolCheckOut,
    PoolDetailOut,
    PoolOut,
)

__all__ = ["DesiredOut", "MemberOut", "PoolCheckOut", "PoolDetailOut", "PoolOut"]

ModuleName = Field(max_length=128)
Clearable = Literal["served_model_name", "architecture", "target_modules", "max_adapter_memory"]


class PoolIn(In):
    """A new pool: the flags its engines were started with (``vllm serve``)."""

    name: str = Field(max_length=64, description="the pool's name in its namespace")
    engine: Literal["vllm"] = "vllm"
    base: str = Field(max_length=400, description="the registered base, HUB_ID@REVISION")
    model_id: str = Field(max_length=512, description="what the engine was started with "
                          "(`vllm serve MODEL_ID`): exported adapters name it")
    served_model_name: str | None = Field(None, max_length=256)
    architecture: str | None = Field(None, max_length=128,
                                     description="the model's architecture, e.g. "
                                                 "LlamaForCausalLM")
    max_lora_rank: int = Field(DEFAULT_MAX_LORA_RANK, ge=1, le=512)
    max_loras: int = Field(1, ge=1, le=4096)
    max_cpu_loras: int | None = Field(None, ge=1, le=65536)
    dtype: str = Field(max_length=16, description="bfloat16, float16 or float32")
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    max_adapter_memory: int | None = Field(None, ge=1, le=2**62,
                                           description="bytes the desired set may take")
    drain_seconds: int = Field(600, ge=0, le=30 * 86400)


class PoolPatch(In):
    """Settings to change; ``clear`` unsets optional ones. The base and engine are fixed."""

    model_id: str | None = Field(None, max_length=512)
    served_model_name: str | None = Field(None, max_length=256)
    architecture: str | None = Field(None, max_length=128)
    max_lora_rank: int | None = Field(None, ge=1, le=512)
    max_loras: int | None = Field(None, ge=1, le=4096)
    max_cpu_loras: int | None = Field(None, ge=1, le=65536)
    dtype: str | None = Field(None, max_length=16)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    max_adapter_memory: int | None = Field(None, ge=1, le=2**62)
    drain_seconds: int | None = Field(None, ge=0, le=30 * 86400)
    clear: list[Clearable] = Field(default_factory=list, max_length=4)

    def changes(self) -> pools.PoolChanges:
        return pools.PoolChanges(**self.model_dump(exclude={"clear"}), clear=list(self.clear))


def pool_out(pool: ServingPool) -> PoolOut:
    return PoolOut(name=pool.full_name, namespace=pool.namespace.name, **pools.describe(pool),
                   created_by=pool.created_by, created_at=pool.created_at,
                   updated_at=pool.updated_at)


def pool_detail_out(pool: ServingPool, channels: list[Channel], pinned: list[AdapterVersion]
                    ) -> PoolDetailOut:
    return PoolDetailOut(**pool_out(pool).model_dump(),
                         channels=[desired_sets.channel_label(c) for c in channels],
                         pinned=[desired_sets.ref(v) for v in pinned])


def member_out(e: desired_sets.Entry, *, files: bool = False, drain: int | None = None
               ) -> MemberOut:
    """A desired-set entry; with its files (what an agent pulls), and, given the pool's drain
    seconds, when a draining entry's drain ends."""
    ends = e.removed_at + timedelta(seconds=drain) if drain is not None and e.removed_at else None
    return MemberOut(ref=desired_sets.ref(e.version), served_name=e.served_name,
                     manifest_digest=e.version.manifest_digest, sources=e.sources,
                     added_at=e.added_at, removed_at=e.removed_at,
                     ok=None if e.problems is None else not e.problems, problems=e.problems,
                     files=[FileOut(path=f.path, digest=f.digest, size=f.size)
                            for f in e.version.files] if files else None,
                     drain_ends_at=ends)
