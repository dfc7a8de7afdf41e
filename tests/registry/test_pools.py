"""Serving pools through the services: desired sets kept in step with channels, the entry checks
of promotion, binding, pinning and pool changes, served names, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.errors import BadRequest, Conflict, IncompatiblePool
from registry.fingerprint import TensorEntry
from registry.models import (
    AdapterVersion,
    AuditEvent,
    Channel,
    PoolMember,
    ServingPool,
    VersionTensors,
    utcnow,
)
from registry.served_names import parse_served_name
from registry.services import (
    adapters,
    bases,
    channels,
    desired_sets,
    pools,
    profiles,
    rollouts,
    version_tensors,
    versions,
)
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.pools import PoolChanges, PoolSettings
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, lora_config, lora_tensors, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("carol")
Push = Callable[..., AdapterVersion]


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def push(session: Session, store: LocalBlobStore) -> Push:
    bases.register_base(session, ACTOR, registration(entries()))
    seeds = iter(range(1000))

    def _push(adapter: str = "acme/bot", *, r: int = 4, rev: str = "abc",
              config: dict[str, Any] | None = None,
              tensors: dict[str, np.ndarray] | None = None) -> AdapterVersion:
        files = adapter_files(r=r, seed=next(seeds), config=config or lora_config(r),
                              tensors=tensors or lora_tensors(r, seed=next(seeds)))
        req = PushRequest(adapter, store_files(session, store, files), "tiny/llama", rev)
        return versions.push_version(session, store, ACTOR, req).version

    return _push


def make_pool(session: Session, name: str = "acme/gpu-a", **settings: Any) -> ServingPool:
    values: dict[str, Any] = {"base": "tiny/llama@abc", "model_id": "/models/llama",
                              "dtype": "bfloat16", **settings}
    return pools.create_pool(session, ACTOR, name, PoolSettings(**values))


def channel(session: Session, adapter: str = "acme/bot", name: str = "prod") -> Channel:
    return channels.ensure_channel(session, ACTOR, adapters.get_adapter(session, adapter), name)


def promote(session: Session, version: AdapterVersion, name: str = "prod") -> Channel:
    row = channel(session, version.adapter.full_name, name)
    return channels.promote_now(session, row, version, Change(ACTOR))


def refs(entries: list[desired_sets.Entry]) -> list[str]:
    return [desired_sets.ref(e.version) for e in entries]


def open_members(session: Session, pool: ServingPool) -> set[int]:
    return set(session.scalars(select(PoolMember.version_id).where(
        PoolMember.pool_id == pool.id, PoolMember.removed_at.is_(None))))


# --- desired sets follow channels -----------------------------------------------------------


def test_desired_set_follows_the_bound_channel_and_records_leaving(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1, v2, v3 = push(), push(), push()
    pool = make_pool(session, max_loras=2)
    promote(session, v1)
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    assert refs(desired_sets.desired(session, store, pool)) == ["acme/bot@1"]

    prod = promote(session, v2)  # v1 leaves, v2 enters, in the promotion's transaction
    assert open_members(session, pool) == {v2.id}
    rollouts.start(session, prod, v3, Change(ACTOR), RolloutSpec(steps=[50, 100]))
    entries = desired_sets.desired(session, store, pool)
    assert [(e.version.number, e.sources) for e in entries] == [
        (2, ["acme/bot:prod (stable)"]), (3, ["acme/bot:prod (canary)"])]
    assert all(e.problems == [] and e.added_at is not None for e in entries)
    rollouts.abort(session, session.get_one(rollouts.Rollout, prod.rollout_id), Change(ACTOR))

    left = desired_sets.left(session, pool)
    assert [(e.version.number, e.removed_at is not None) for e in left] == [(3, True), (1, True)]
    assert open_members(session, pool) == {v2.id}
    now = utcnow()  # export keeps what left within the drain period (600 s by default)
    assert refs(desired_sets.retained(session, pool, now)) == [f"acme/bot@{n}" for n in (1, 2, 3)]
    later = refs(desired_sets.retained(session, pool, now + timedelta(seconds=601)))
    assert later == ["acme/bot@2"]
    changes = [e.payload for e in session.scalars(select(AuditEvent).where(
        AuditEvent.action == "pool.desired_changed").order_by(AuditEvent.id))]
    assert [len(c["added"]) for c in changes] == [1, 1, 1, 0]
    assert changes[1]["removed"] == [desired_sets.served(v1)]


def test_unbinding_and_another_channel_keep_what_is_still_served(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1 = push()
    pool = make_pool(session)
    promote(session, v1, "prod")
    promote(session, v1, "staging")
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    pools.bind(session, ACTOR, store, pool, "acme/bot:staging")
    pools.bind(session, ACTOR, store, pool, "acme/bot:staging")  # idempotent
    assert desired_sets.desired(session, store, pool)[0].sources == [
        "acme/bot:prod (stable)", "acme/bot:staging (stable)"]
    pools.unbind(session, ACTOR, pool, "acme/bot:prod")
    assert open_members(session, pool) == {v1.id}  # staging still serves it: one stay
    pools.unbind(session, ACTOR, pool, "acme/bot:staging")
    assert open_members(session, pool) == set()
    stays = session.scalars(select(PoolMember).where(PoolMember.pool_id == pool.id)).all()
    assert len(stays) == 1 and stays[0].removed_at is not None
    assert [ch.name for ch in desired_sets.bound_channels(session, pool)] == []


def test_pins_hold_a_version_whatever_the_channels_serve(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1, v2 = push(), push()
    pool = make_pool(session, max_loras=2)
    promote(session, v1)
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    pools.pin(session, ACTOR, store, pool, "acme/bot@1")
    promote(session, v2)
    assert open_members(session, pool) == {v1.id, v2.id}
    pools.unpin(session, ACTOR, pool, "acme/bot@1")
    assert open_members(session, pool) == {v2.id}
    with pytest.raises(BadRequest, match="explicit version"):
        pools.pin(session, ACTOR, store, pool, "acme/bot")


# --- entry checks ---------------------------------------------------------------------------


def test_promotion_is_refused_naming_each_pool_and_reason(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1 = push()
    v2 = push(r=32, config=lora_config(32), tensors=lora_tensors(32))
    wide = make_pool(session, "acme/wide", max_lora_rank=64, max_loras=2)
    narrow = make_pool(session, "acme/narrow", target_modules=["o_proj"])
    prod = promote(session, v1)
    assert prod.revision == 1
    with pytest.raises(IncompatiblePool) as err:  # v1 targets q/v_proj, outside narrow's
        pools.bind(session, ACTOR, store, narrow, "acme/bot:prod")
    assert "q_proj (2 modules), v_proj (2 modules) is outside the target" in err.value.detail
    pools.bind(session, ACTOR, store, wide, "acme/bot:prod")
    pools.update_pool(session, ACTOR, narrow, PoolChanges(clear=["target_modules"]))
    pools.bind(session, ACTOR, store, narrow, "acme/bot:prod")

    with pytest.raises(IncompatiblePool) as err:
        channels.promote_now(session, prod, v2, Change(ACTOR))
    assert err.value.status_code == 422 and err.value.exit_code == 4
    assert [p["pool"] for p in err.value.extra["pools"]] == ["acme/narrow"]
    assert "rank 32 exceeds the max LoRA rank 16 of pool acme/narrow" in err.value.detail
    session.refresh(prod)
    assert (prod.stable_version_id, prod.revision) == (v1.id, 1)
    assert open_members(session, narrow) == {v1.id}


def test_a_canary_counts_against_the_adapters_a_pool_keeps_in_memory(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1, v2 = push(), push()
    pool = make_pool(session)  # max_loras 1, so max_cpu_loras 1: vLLM's defaults
    prod = promote(session, v1)
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    with pytest.raises(IncompatiblePool, match="would hold 2 versions, more than the 1"):
        rollouts.start(session, prod, v2, Change(ACTOR), RolloutSpec())
    channels.promote_now(session, prod, v2, Change(ACTOR))  # a swap fits
    assert open_members(session, pool) == {v2.id}
    with pytest.raises(IncompatiblePool, match="would hold 2"):
        pools.pin(session, ACTOR, store, pool, "acme/bot@1")


def test_dtypes_memory_and_base_are_checked(session: Session, store: LocalBlobStore,
                                            push: Push) -> None:
    v1 = push()
    f64 = push("acme/f64", tensors={k: v.astype(np.float64) for k, v in lora_tensors().items()})
    # An adapter of 4 tensors of 4x32 and 32x4 values per layer: 1,024 values, 2 KiB in bf16.
    pool = make_pool(session, max_loras=4, max_adapter_memory=3 * 1024)
    pools.pin(session, ACTOR, store, pool, "acme/bot@1")
    with pytest.raises(IncompatiblePool) as err:
        pools.pin(session, ACTOR, store, pool, "acme/f64@1")
    assert "tensor dtype F64 cannot be cast to bfloat16" in err.value.detail
    assert "4.0 KiB of adapter weights in bfloat16, more than the 3.0 KiB" in err.value.detail

    other = entries()
    other[0] = TensorEntry(other[0].name, other[0].dtype, other[0].shape, "f" * 64)
    bases.register_base(session, ACTOR, registration(other, rev="other"))
    foreign = push("acme/foreign", rev="other")
    with pytest.raises(IncompatiblePool, match=r"was trained on base \w+, but pool "
                                               r"acme/gpu-a serves base"):
        pools.pin(session, ACTOR, store, pool, "acme/foreign@1")
    assert {v1.id} == open_members(session, pool) and f64.id != foreign.id


def test_changing_a_pool_is_refused_when_its_desired_set_would_break(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    push(r=32, config=lora_config(32), tensors=lora_tensors(32))
    pool = make_pool(session, max_lora_rank=32)
    pools.pin(session, ACTOR, store, pool, "acme/bot@1")
    with pytest.raises(IncompatiblePool, match="rank 32 exceeds the max LoRA rank 16"):
        pools.update_pool(session, ACTOR, pool, PoolChanges(max_lora_rank=16))
    session.refresh(pool)
    assert pool.max_lora_rank == 32
    changed = pools.update_pool(session, ACTOR, pool, PoolChanges(max_lora_rank=64,
                                                                 model_id="/m/llama-2"))
    assert (changed.max_lora_rank, changed.model_id) == (64, "/m/llama-2")
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "pool.updated")).one()
    assert event.payload == {"max_lora_rank": 64, "model_id": "/m/llama-2"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_lora_rank": 48}, "max_lora_rank must be one of"),
    ({"dtype": "auto"}, "dtype must be one of"),
    ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras must be between max_loras"),
    ({"target_modules": ["gate_proj"]}, "the base has no module 'gate_proj'"),
    ({"architecture": "NoSuchForCausalLM"}, "not one vLLM"),
    ({"base": "tiny/llama@nope"}, "is not registered"),
    ({"engine": "sglang"}, "engine must be one of"),
    ({"drain_seconds": -1}, "drain_seconds"),
    ({"model_id": ""}, "model_id"),
])
def test_pool_settings_are_checked_as_vllm_would(session: Session, push: Push,
                                                 settings: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        make_pool(session, **settings)
    assert session.scalar(select(func.count()).select_from(ServingPool)) == 0


def test_settings_that_vllm_accepts(session: Session, push: Push) -> None:
    pool = make_pool(session, dtype="half", max_loras=2, target_modules=["qkv_proj", "o_proj"],
                     architecture="LlamaForCausalLM")
    assert (pool.dtype, pool.max_cpu_loras) == ("float16", 2)
    with pytest.raises(Conflict):
        make_pool(session)
    assert [p.full_name for p in pools.list_pools(session, ["acme"])] == ["acme/gpu-a"]
    assert pools.list_pools(session, ["other"]) == []


def test_a_pool_serves_only_its_own_namespace(session: Session, store: LocalBlobStore,
                                              push: Push) -> None:
    push("other/bot")
    promote(session, session.scalars(select(AdapterVersion)).one())
    pool = make_pool(session)
    with pytest.raises(BadRequest, match="serves only namespace acme"):
        pools.bind(session, ACTOR, store, pool, "other/bot:prod")
    with pytest.raises(BadRequest, match="serves only namespace acme"):
        pools.pin(session, ACTOR, store, pool, "other/bot@1")
    assert desired_sets.live(session, pool) == {}


def test_tensor_headers_of_older_versions_are_recorded_when_a_pool_first_looks(
        session: Session, store: LocalBlobStore, push: Push) -> None:
    v1, v2 = push(), push()
    session.execute(delete(VersionTensors))  # as pushed before lorareg kept them
    pool = make_pool(session, max_loras=2)
    prod = promote(session, v1)
    assert desired_sets.check_version(session, None, pool, v2)[0].startswith(
        "its tensor header is not recorded")
    assert desired_sets.check_version(session, store, pool, v2) == []  # read, not recorded
    assert session.scalar(select(func.count()).select_from(VersionTensors)) == 0
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    assert set(version_tensors.stored(session, [v1.id, v2.id])) == {v1.id, v2.id}
    channels.promote_now(session, prod, v2, Change(ACTOR))


# --- served names and the vllm profile ------------------------------------------------------


def test_a_served_name_never_maps_to_two_digests(session: Session, push: Push) -> None:
    pushed = [push("acme/bot"), push("acme/bot"), push("acme/bot-2"), push("acme--x/bot")]
    names = {desired_sets.served(v): v.manifest_digest for v in pushed}
    assert len(names) == len(pushed)
    for name, digest in names.items():
        ns, adapter, number, digest12 = parse_served_name(name)
        version = versions.get_version(session, versions.Ref(ns, adapter, version=number))
        assert version.manifest_digest == digest and digest.startswith(digest12)


def test_the_vllm_profile_uses_vllms_default_rank(session: Session, push: Push) -> None:
    v16 = push(r=16, config=lora_config(16), tensors=lora_tensors(16))
    v32 = push(r=32, config=lora_config(32), tensors=lora_tensors(32))
    assert profiles.problems(session, v16, "vllm") == []
    assert profiles.problems(session, v32, "vllm") == [
        "rank 32 exceeds the max LoRA rank 16 of profile vllm (vLLM --max-lora-rank)"]
    assert profiles.problems(session, v32, "vllm", max_rank=320) == []
