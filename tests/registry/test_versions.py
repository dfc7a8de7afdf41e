"""Pushing, reading, listing and yanking versions through the services, on both databases
and both blob stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from registry.blobs import BlobStore, LocalBlobStore
from registry.errors import (
    BadRequest,
    Conflict,
    IncompatibleBase,
    InvalidAdapter,
    InvalidPath,
    InvalidSafetensors,
    NotFound,
)
from registry.fingerprint import TensorEntry, pack_manifest
from registry.manifest import FileEntry, manifest_digest
from registry.models import AdapterVersion, AuditEvent, BaseModel, Metric
from registry.refs import parse_ref
from registry.services import adapters, metrics, versions
from registry.services.context import Actor
from registry.services.metrics import MetricInput
from registry.services.versions import PushRequest, VersionQuery, parse_metric_filter
from tests.fixtures.adapters import (
    adapter_files,
    base_shapes,
    lora_config,
    lora_tensors,
    store_files,
)

ACTOR = Actor("alice", "req-1")
BASE = ("tiny/llama", "abc123")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def push(
    session: Session, store: BlobStore, files: dict[str, bytes], adapter: str = "acme/bot",
    **kw: Any,
) -> versions.PushResult:
    entries = store_files(session, store, files)
    req = PushRequest(adapter=adapter, files=entries, base_hub_id=kw.pop("hub", BASE[0]),
                      base_revision=kw.pop("rev", BASE[1]), **kw)
    return versions.push_version(session, store, ACTOR, req)


def counts(session: Session) -> tuple[int, int, int]:
    return (
        session.scalar(select(func.count()).select_from(AdapterVersion)) or 0,
        session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
        session.scalar(select(func.count()).select_from(Metric)) or 0,
    )


def test_push_roundtrip_on_every_store(session: Session, blob_store: BlobStore) -> None:
    files = adapter_files(extra={"README.md": b"# bot\n"})
    result = push(session, blob_store, files, metrics=[MetricInput("accuracy", 0.91)],
                  labels={"task": "support"}, provenance={"git_commit": "deadbeef"})
    v = result.version
    assert result.created and v.number == 1
    assert [f.path for f in v.files] == ["README.md", "adapter_config.json",
                                          "adapter_model.safetensors"]
    assert v.manifest_digest == manifest_digest(
        FileEntry(f.path, f.digest, f.size) for f in v.files)
    assert v.peft_config["r"] == 4 and v.compat_status == "unverified"
    assert v.provenance == {"git_commit": "deadbeef"} and v.pushed_by == "alice"
    for f in v.files:
        assert b"".join(blob_store.open(f.digest)) == files[f.path]
    got = versions.get_version(session, parse_ref("acme/bot@latest"))
    assert got.id == v.id
    assert metrics.latest(session, [v.id])[v.id] == {"accuracy": 0.91}
    actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions[-1] == "version.pushed" and "adapter.created" in actions


def test_identical_push_returns_existing_version(session: Session, local_store: BlobStore
                                                 ) -> None:
    first = push(session, local_store, adapter_files(seed=1))
    second = push(session, local_store, adapter_files(seed=2))
    again = push(session, local_store, adapter_files(seed=1))
    assert (first.version.number, second.version.number) == (1, 2)
    assert not again.created and again.version.number == 1
    other_base = push(session, local_store, adapter_files(seed=1), rev="def456")
    assert other_base.created and other_base.version.number == 3


def test_versions_are_numbered_per_adapter(session: Session, local_store: BlobStore) -> None:
    assert push(session, local_store, adapter_files(seed=1), "acme/a").version.number == 1
    assert push(session, local_store, adapter_files(seed=1), "acme/b").version.number == 1
    assert push(session, local_store, adapter_files(seed=2), "acme/a").version.number == 2


def test_registered_base_verifies_shapes(session: Session, local_store: BlobStore) -> None:
    entries = [TensorEntry(n, d, s, "0" * 64) for n, (d, s) in sorted(base_shapes().items())]
    session.add(BaseModel(hub_id=BASE[0], revision=BASE[1], fingerprint="f" * 64,
                          manifest=pack_manifest(entries), tensor_count=len(entries),
                          total_bytes=0))
    session.flush()
    ok = push(session, local_store, adapter_files())
    assert ok.version.compat_status == "verified" and ok.version.base_model is not None
    before = counts(session)
    with pytest.raises(IncompatibleBase) as err:
        push(session, local_store, adapter_files(
            tensors={**lora_tensors(), PREFIX_Q0 + ".lora_A.weight":
                     np.zeros((4, 64), np.float32)}))
    assert "q_proj" in err.value.detail
    assert counts(session) == before


PREFIX_Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


def test_list_filters_and_sorts(session: Session, local_store: BlobStore) -> None:
    for seed, acc in ((1, 0.80), (2, 0.95), (3, 0.90)):
        push(session, local_store, adapter_files(seed=seed), metrics=[MetricInput("acc", acc)],
             labels={"lang": "de" if seed != 2 else "fr"})
    q = VersionQuery(adapter="acme/bot", metrics=[parse_metric_filter("metric.acc>=0.9")])
    assert [v.number for v in versions.list_versions(session, q).items] == [3, 2]
    q = VersionQuery(adapter="acme/bot", labels={"lang": "de"})
    assert [v.number for v in versions.list_versions(session, q).items] == [3, 1]
    q = VersionQuery(adapter="acme/bot", sort="metric.acc")
    page1 = versions.list_versions(session, q, limit=2)
    page2 = versions.list_versions(session, q, cursor=page1.next_cursor, limit=2)
    assert [v.number for v in page1.items + page2.items] == [2, 3, 1]
    assert page2.next_cursor is None
    # A later metric value wins over the one logged at push.
    v1 = versions.get_version(session, parse_ref("acme/bot@1"))
    metrics.log_metrics(session, ACTOR, v1, [MetricInput("acc", 0.99)])
    q = VersionQuery(adapter="acme/bot", metrics=[parse_metric_filter("acc>0.98")])
    assert [v.number for v in versions.list_versions(session, q).items] == [1]
    asc = VersionQuery(adapter="acme/bot", sort="version", descending=False)
    assert [v.number for v in versions.list_versions(session, asc).items] == [1, 2, 3]


def test_yank_and_unyank(session: Session, local_store: BlobStore) -> None:
    push(session, local_store, adapter_files(seed=1))
    push(session, local_store, adapter_files(seed=2))
    versions.yank(session, ACTOR, parse_ref("acme/bot@2"), "regressed on German")
    assert versions.get_version(session, parse_ref("acme/bot@latest")).number == 1
    assert versions.get_version(session, parse_ref("acme/bot@2")).status == "yanked"
    with pytest.raises(Conflict):
        versions.yank(session, ACTOR, parse_ref("acme/bot@2"), "again")
    with pytest.raises(BadRequest):
        versions.yank(session, ACTOR, parse_ref("acme/bot@1"), "  ")
    versions.unyank(session, ACTOR, parse_ref("acme/bot@2"))
    assert versions.get_version(session, parse_ref("acme/bot@latest")).number == 2
    actions = set(session.scalars(select(AuditEvent.action)))
    assert {"version.yanked", "version.unyanked"} <= actions


def test_not_found(session: Session) -> None:
    with pytest.raises(NotFound):
        versions.get_version(session, parse_ref("acme/nothing@1"))
    with pytest.raises(NotFound):
        adapters.get_adapter(session, "acme/nothing")


def _bad_safetensors_header() -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 999]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 16


BAD_ADAPTERS: dict[str, tuple[dict[str, bytes], type[Exception]]] = {
    "config not json": ({**adapter_files(), "adapter_config.json": b"{nope"}, InvalidAdapter),
    "config not utf8": ({**adapter_files(), "adapter_config.json": b"\xff\xfe"}, InvalidAdapter),
    "config is a list": ({**adapter_files(), "adapter_config.json": b"[]"}, InvalidAdapter),
    "not lora": (adapter_files(config=lora_config(peft_type="IA3")), InvalidAdapter),
    "rank zero": (adapter_files(config=lora_config(r=0)), InvalidAdapter),
    "no config": ({"adapter_model.safetensors": adapter_files()["adapter_model.safetensors"]},
                  InvalidAdapter),
    "pickle weights": ({"adapter_config.json": adapter_files()["adapter_config.json"],
                        "adapter_model.bin": b"pickle"}, InvalidAdapter),
    "bad header": ({**adapter_files(), "adapter_model.safetensors": _bad_safetensors_header()},
                   InvalidSafetensors),
    "huge header length": ({**adapter_files(), "adapter_model.safetensors":
                            (2**40).to_bytes(8, "little") + b"{}"}, InvalidSafetensors),
    "missing lora_B": (adapter_files(tensors={
        k: v for k, v in lora_tensors().items() if not k.endswith("q_proj.lora_B.weight")}),
        InvalidAdapter),
    "rank mismatch": (adapter_files(tensors={
        **lora_tensors(), PREFIX_Q0 + ".lora_B.weight": np.zeros((32, 3), np.float32)}),
        InvalidAdapter),
    "unknown tensor": (adapter_files(tensors={**lora_tensors(), "rogue.weight":
                                              np.zeros((2, 2), np.float32)}), InvalidAdapter),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapters_are_refused_and_change_nothing(
    case: str, session: Session, local_store: BlobStore
) -> None:
    files, error = BAD_ADAPTERS[case]
    before = counts(session)
    with pytest.raises(error) as err:
        push(session, local_store, files)
    assert err.value.detail  # a clear message, not an empty error
    assert counts(session) == before


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", "a\\b", "a\0b",
                                  "C:/x", "", "./", "x/" + "y" * 600])
def test_unsafe_paths_are_refused(path: str, session: Session, local_store: BlobStore) -> None:
    entries = store_files(session, local_store, adapter_files())
    entries.append(FileEntry(path, entries[0].digest, entries[0].size))
    before = counts(session)
    with pytest.raises(InvalidPath):
        versions.push_version(session, local_store, ACTOR, PushRequest(
            "acme/bot", entries, *BASE))
    assert counts(session) == before


def test_path_normalization_and_duplicates(session: Session, local_store: BlobStore) -> None:
    entries = store_files(session, local_store, adapter_files())
    extra = FileEntry("docs/./notes.txt", entries[0].digest, entries[0].size)
    res = versions.push_version(session, local_store, ACTOR, PushRequest(
        "acme/bot", [*entries, extra], *BASE))
    assert "docs/notes.txt" in [f.path for f in res.version.files]
    dup = FileEntry("docs/notes.txt", entries[0].digest, entries[0].size)
    with pytest.raises(InvalidPath):
        versions.push_version(session, local_store, ACTOR, PushRequest(
            "acme/bot", [*entries, dup, FileEntry("docs//notes.txt", dup.digest, dup.size)],
            *BASE))


BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "bad adapter name": {"adapter": "no-namespace"},
    "bad namespace": {"adapter": "Acme Corp/bot"},
    "bad base": {"base_hub_id": "../x"},
    "bad revision": {"base_revision": "has space"},
    "bad label": {"labels": {"": "x"}},
    "bad provenance key": {"provenance": {"password": "x"}},
    "nan metric": {"metrics": [MetricInput("acc", float("nan"))]},
    "bad metric key": {"metrics": [MetricInput("a b", 1.0)]},
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_refused(case: str, session: Session, local_store: BlobStore) -> None:
    entries = store_files(session, local_store, adapter_files())
    fields: dict[str, Any] = {"adapter": "acme/bot", "files": entries,
                              "base_hub_id": BASE[0], "base_revision": BASE[1]}
    fields.update(BAD_REQUESTS[case])
    before = counts(session)
    with pytest.raises(BadRequest):
        versions.push_version(session, local_store, ACTOR, PushRequest(**fields))
    assert counts(session) == before


def test_files_must_be_uploaded_first(session: Session, local_store: BlobStore) -> None:
    files = adapter_files()
    entries = store_files(session, local_store, {"adapter_config.json":
                                                 files["adapter_config.json"]})
    data = files["adapter_model.safetensors"]
    missing = FileEntry("adapter_model.safetensors", hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(BadRequest) as err:
        versions.push_version(session, local_store, ACTOR, PushRequest(
            "acme/bot", [*entries, missing], *BASE))
    assert err.value.extra["missing"] == [missing.digest]
    wrong_size = FileEntry(entries[0].path, entries[0].digest, entries[0].size + 1)
    with pytest.raises(BadRequest, match="declares size"):
        versions.push_version(session, local_store, ACTOR, PushRequest(
            "acme/bot", [wrong_size], *BASE))


def test_metrics_are_appended_never_rewritten(session: Session, local_store: BlobStore) -> None:
    v = push(session, local_store, adapter_files(), metrics=[MetricInput("acc", 0.5)]).version
    metrics.log_metrics(session, ACTOR, v, [MetricInput("acc", 0.6, dataset="mmlu", split="test")])
    hist = metrics.history(session, v)
    assert [(m.value, m.dataset) for m in hist] == [(0.5, None), (0.6, "mmlu")]
    with pytest.raises(BadRequest):
        metrics.log_metrics(session, ACTOR, v, [])
    with pytest.raises(BadRequest):
        metrics.log_metrics(session, ACTOR, v, [MetricInput("acc", float("inf"))])
    assert len(metrics.history(session, v)) == 2



def test_idempotency_key(session: Session, local_store: BlobStore) -> None:
    first = push(session, local_store, adapter_files(seed=1), idempotency_key="run-42/push")
    again = push(session, local_store, adapter_files(seed=1), idempotency_key="run-42/push")
    assert first.created and not again.created and again.version.id == first.version.id
    before = counts(session)
    with pytest.raises(Conflict, match="other content"):
        push(session, local_store, adapter_files(seed=2), idempotency_key="run-42/push")
    assert counts(session) == before
    other = push(session, local_store, adapter_files(seed=2), idempotency_key="run-43/push")
    assert other.created and other.version.number == 2


def test_get_version_loads_files_and_labels_whole_in_one_statement(
    session: Session, local_store: BlobStore
) -> None:
    """The API's most frequent read: one statement, collections complete (joined eager loads
    with LIMIT for @latest, and ``first()`` after them)."""
    extra = {f"extra/{i}.txt": bytes([i]) * 10 for i in range(4)}
    push(session, local_store, adapter_files(seed=1, extra=extra), labels={"a": "1", "b": "2"})
    push(session, local_store, adapter_files(seed=2, extra=extra), labels={"c": "3", "d": "4",
                                                                           "e": "5"})
    session.flush()
    session.expunge_all()  # load from the database, not from the identity map
    statements: list[str] = []
    conn = session.connection()
    listen = lambda *args: statements.append(args[2])  # noqa: E731 - a throwaway listener
    event.listen(conn, "before_cursor_execute", listen)
    try:
        latest = versions.get_version(session, parse_ref("acme/bot@latest"))
        first = versions.get_version(session, parse_ref("acme/bot@1"))
        assert len(statements) == 2
        assert (latest.number, first.number) == (2, 1)
        for v, labels in ((latest, {"c": "3", "d": "4", "e": "5"}), (first, {"a": "1", "b": "2"})):
            assert [f.path for f in v.files] == ["adapter_config.json",
                                                  "adapter_model.safetensors",
                                                  *sorted(extra)]
            assert {lab.key: lab.value for lab in v.labels} == labels
            assert v.adapter.full_name == "acme/bot"
        assert len(statements) == 2  # nothing loaded lazily above
    finally:
        event.remove(conn, "before_cursor_execute", listen)
