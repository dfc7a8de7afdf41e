"""Request and response bodies of the serving-pool routes (registry/api/routes/pools.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from registry.api.schemas import In
from registry.models import AdapterVersion, Channel, ServingPool
from registry.services import desired_sets, pools
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK

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


class PoolOut(BaseModel):
    name: str
    namespace: str
    engine: str
    base: str
    base_fingerprint: str
    model_id: str
    served_model_name: str | None
    architecture: str | None
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    dtype: str
    target_modules: list[str] | None
    max_adapter_memory: int | None
    drain_seconds: int
    created_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, pool: ServingPool) -> PoolOut:
        return cls(name=pool.full_name, namespace=pool.namespace.name, **pools.describe(pool),
                   created_by=pool.created_by, created_at=pool.created_at,
                   updated_at=pool.updated_at)


class PoolDetailOut(PoolOut):
    channels: list[str]
    pinned: list[str]

    @classmethod
    def detail(cls, pool: ServingPool, channels: list[Channel], pinned: list[AdapterVersion]
               ) -> PoolDetailOut:
        return cls(**PoolOut.of(pool).model_dump(),
                   channels=[desired_sets.channel_label(c) for c in channels],
                   pinned=[desired_sets.ref(v) for v in pinned])


class MemberOut(BaseModel):
    ref: str
    served_name: str
    manifest_digest: str
    sources: list[str]
    added_at: datetime | None
    removed_at: datetime | None
    ok: bool | None
    problems: list[str] | None

    @classmethod
    def of(cls, e: desired_sets.Entry) -> MemberOut:
        return cls(ref=desired_sets.ref(e.version), served_name=e.served_name,
                   manifest_digest=e.version.manifest_digest, sources=e.sources,
                   added_at=e.added_at, removed_at=e.removed_at,
                   ok=None if e.problems is None else not e.problems, problems=e.problems)


class DesiredOut(BaseModel):
    pool: str
    members: list[MemberOut]
    set_problems: list[str] = Field(description="problems of the set as a whole")
    left: list[MemberOut] = Field(description="stays that ended, newest first")


class PoolCheckOut(BaseModel):
    ref: str
    pool: str
    served_name: str
    ok: bool
    problems: list[str]
