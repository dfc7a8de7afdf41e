"""Base registration by fingerprint and the compatibility checks it drives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.errors import BadRequest, IncompatibleBase
from registry.fingerprint import TensorEntry, fingerprint_digest
from registry.manifest import FileEntry
from registry.models import AuditEvent, BaseModel
from registry.services import bases, versions
from registry.services.bases import BaseRegistration
from registry.services.context import Actor
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, base_shapes, lora_tensors, store_files

ACTOR = Actor("bob")


def entries(hidden_override: int | None = None) -> list[TensorEntry]:
    out = []
    for name, (dtype, shape) in sorted(base_shapes().items()):
        if hidden_override and "q_proj" in name:
            shape = (hidden_override, shape[1])
        out.append(TensorEntry(name, dtype, shape, hashlib.sha256(name.encode()).hexdigest()))
    return out


def registration(tensors: list[TensorEntry], rev: str = "abc") -> BaseRegistration:
    return BaseRegistration("tiny/llama", rev, fingerprint_digest(tensors), tensors)


def test_register_twice_returns_the_same_base(session: Session) -> None:
    base, created = bases.register_base(session, ACTOR, registration(entries()))
    again, created_again = bases.register_base(session, ACTOR, registration(entries()))
    assert created and not created_again and again.id == base.id
    assert base.tensor_count == len(base_shapes())
    assert [t.name for t in bases.tensors_of(base)] == sorted(base_shapes())
    assert bases.find_base(session, "tiny/llama", "abc") is not None


def test_fingerprint_must_describe_its_manifest(session: Session) -> None:
    reg = registration(entries())
    reg.fingerprint = "0" * 64
    with pytest.raises(BadRequest, match="does not match its manifest"):
        bases.register_base(session, ACTOR, reg)
    assert session.scalar(select(func.count()).select_from(BaseModel)) == 0
    with pytest.raises(BadRequest):
        bases.register_base(session, ACTOR, BaseRegistration("tiny/llama", "abc", "0" * 64, []))


def test_uploaded_files_must_be_stored(session: Session) -> None:
    reg = registration(entries())
    reg.files = [FileEntry("model.safetensors", "b" * 64, 10)]
    with pytest.raises(BadRequest, match="not uploaded"):
        bases.register_base(session, ACTOR, reg)


def test_registration_verifies_earlier_unverified_pushes(session: Session, tmp_path: Path
                                                         ) -> None:
    store = LocalBlobStore(tmp_path)
    good = versions.push_version(session, store, ACTOR, PushRequest(
        "acme/good", store_files(session, store, adapter_files()), "tiny/llama", "abc")).version
    wide = {**lora_tensors(), "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
            np.zeros((4, 64), np.float32)}
    bad = versions.push_version(session, store, ACTOR, PushRequest(
        "acme/bad", store_files(session, store, adapter_files(tensors=wide)), "tiny/llama",
        "abc")).version
    assert good.compat_status == bad.compat_status == "unverified"
    base, _ = bases.register_base(session, ACTOR, registration(entries()), store)
    assert good.compat_status == "verified" and good.base_model_id == base.id
    assert bad.compat_status == "incompatible" and bad.base_model_id is None
    actions = set(session.scalars(select(AuditEvent.action)))
    assert {"base.registered", "version.verified", "version.incompatible"} <= actions


def test_push_against_a_different_shaped_base_is_refused(session: Session, tmp_path: Path
                                                         ) -> None:
    store = LocalBlobStore(tmp_path)
    bases.register_base(session, ACTOR, registration(entries(hidden_override=48), rev="v2"))
    with pytest.raises(IncompatibleBase) as err:
        versions.push_version(session, store, ACTOR, PushRequest(
            "acme/bot", store_files(session, store, adapter_files()), "tiny/llama", "v2"))
    assert err.value.extra["mismatches"]
    assert "q_proj" in err.value.extra["mismatches"][0]
