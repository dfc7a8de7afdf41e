"""The residency ledger over the REST API in-process: heartbeats, status, where, the desired
set's ETag and files, the gauges in /metrics, another namespace's token (403, nothing
changed) and bad input (problem+json, nothing changed, never a 500)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from registry.models import AuditEvent, PoolReplica, ReplicaAdapter
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, push
from tests.registry.test_pools_api import POOL, SETTINGS, call, ok, promote, registered

FP = "f" * 64


def setup_pool(api: Api) -> dict[str, Any]:
    """acme/gpu-a serving acme/bot:prod at v1 (v2 pushed too); its desired set."""
    registered(api, "acme/bot")
    assert push(api, api.admin, "acme/bot", seed=7).status_code == 201
    ok(call(api, "POST", "/api/v1/pools/acme", json={**SETTINGS, "drain_seconds": 60}), 201)
    ok(promote(api, "acme/bot", 1))
    ok(call(api, "PUT", f"{POOL}/channels/acme/bot/prod"))
    return dict(ok(call(api, "GET", f"{POOL}/desired")))


def beat(api: Api, replica: str, adapters: list[dict[str, Any]], token: str | None = None,
         fingerprint: str | None = None, **extra: Any) -> Any:
    body = {"engine": "vllm", "agent_version": "0.1", "interval_seconds": 10,
            "cache_bytes": 4096, "base_fingerprint": fingerprint, "adapters": adapters, **extra}
    return call(api, "PUT", f"{POOL}/replicas/{replica}", token, json=body)


def loaded(member: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    return {"served_name": member["served_name"], "state": "loaded",
            "digest": digest or member["manifest_digest"]}


def poll(api: Api, path: str, etag: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or api.admin}", "If-None-Match": etag}
    return api.client.get(path, headers=headers)


def ledger(api: Api) -> tuple[int, int, int]:
    return api.count(PoolReplica), api.count(ReplicaAdapter), api.count(AuditEvent)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_heartbeat_status_and_where(api: Api) -> None:
    desired = setup_pool(api)
    v1 = desired["members"][0]
    fp = desired["base_fingerprint"]
    assert [f["path"] for f in v1["files"]] == sorted(f["path"] for f in v1["files"]) and all(
        len(f["digest"]) == 64 and f["size"] > 0 for f in v1["files"])
    first = ok(beat(api, "gpu-0", [loaded(v1)], fingerprint=fp))
    assert (first["verdict"], first["live"], first["loaded"], first["drift"]) == (
        "compatible", True, [v1["served_name"]], [])
    assert first["desired_revision"] == desired["revision"]
    audits = api.count(AuditEvent)
    again = ok(beat(api, "gpu-0", [loaded(v1)], fingerprint=fp))  # idempotent
    assert again["adapters"] == first["adapters"] and api.count(AuditEvent) == audits
    bad = ok(beat(api, "gpu-1", [loaded(v1, digest="e" * 64)], fingerprint=FP))
    assert bad["verdict"] == "incompatible"
    assert (bad["base_fingerprint"], bad["pool_fingerprint"]) == (FP, fp)
    assert [d["kind"] for d in bad["drift"]] == ["bytes_differ"]

    status = ok(call(api, "GET", f"{POOL}/status"))
    assert [r["replica_id"] for r in status["replicas"]] == ["gpu-0", "gpu-1"]
    assert status["verdicts"] == {"compatible": 1, "incompatible": 1, "unknown": 0}
    assert status["drift_versions"] == [v1["served_name"]]
    assert [v["served_name"] for v in status["versions"]] == [v1["served_name"]]
    assert status["revision"] == desired["revision"] and status["live_factor"] == 3

    where = ok(call(api, "GET", "/api/v1/where/acme/bot/1"))
    assert where["desired_in"] == ["acme/gpu-a"] and where["draining_in"] == []
    assert [(r["replica_id"], r["state"], r["bytes_ok"]) for r in where["replicas"]] == [
        ("gpu-0", "loaded", True), ("gpu-1", "loaded", False)]
    assert ok(call(api, "GET", "/api/v1/where/acme/bot/latest"))["replicas"] == []

    metrics = call(api, "GET", "/metrics").text
    assert 'lorareg_pool_replicas{pool="acme/gpu-a",verdict="compatible"} 1.0' in metrics
    assert 'lorareg_pool_drift_versions{pool="acme/gpu-a"} 1.0' in metrics
    assert 'lorareg_pool_heartbeat_age_seconds{pool="acme/gpu-a",replica="gpu-1"}' in metrics
    assert call(api, "DELETE", f"{POOL}/replicas/gpu-1").status_code == 204
    assert [r["replica_id"] for r in ok(call(api, "GET", f"{POOL}/status"))["replicas"]] == [
        "gpu-0"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_desired_etag_304_and_draining_entries(api: Api) -> None:
    desired = setup_pool(api)
    first = call(api, "GET", f"{POOL}/desired")
    etag = first.headers["etag"]
    assert etag == f'W/"{desired["revision"]}"'
    held = poll(api, f"{POOL}/desired", etag)
    assert held.status_code == 304 and held.headers["etag"] == etag and not held.content
    ok(promote(api, "acme/bot", 2))
    changed = poll(api, f"{POOL}/desired?wait=30", etag)
    body = ok(changed)
    assert changed.headers["etag"] != etag and body["revision"] != desired["revision"]
    assert [m["ref"] for m in body["members"]] == ["acme/bot@2"]
    (draining,) = body["draining"]
    assert draining["ref"] == "acme/bot@1" and draining["files"]
    assert draining["drain_ends_at"] is not None and draining["removed_at"] is not None
    assert body["left"][0]["files"] is None  # history carries no files


def test_another_namespaces_token_changes_nothing(api: Api) -> None:
    desired = setup_pool(api)
    v1 = desired["members"][0]
    ok(beat(api, "gpu-0", [loaded(v1)]))
    outsider = api.token("admin", "other")
    reader = api.token("reader", "acme")
    before = ledger(api)
    attempts = [
        (outsider, "PUT", f"{POOL}/replicas/gpu-0", {"json": {
            "engine": "vllm", "agent_version": "x", "adapters": []}}),
        (outsider, "PUT", f"{POOL}/replicas/gpu-9", {"json": {
            "engine": "vllm", "agent_version": "x", "adapters": []}}),
        (outsider, "DELETE", f"{POOL}/replicas/gpu-0", {}),
        (reader, "DELETE", f"{POOL}/replicas/gpu-0", {}),  # forgetting needs promote
        (outsider, "GET", f"{POOL}/status", {}),
        (outsider, "GET", "/api/v1/where/acme/bot/1", {}),
    ]
    for token, method, path, kw in attempts:
        assert_problem(call(api, method, path, token, **kw), 403, "permission_denied")
    assert_problem(poll(api, f"{POOL}/desired?wait=5", "*", outsider), 403)
    assert ledger(api) == before
    assert ok(beat(api, "gpu-0", [loaded(v1)], token=reader))["reported_by"] == "token:reader-acme"


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("PUT", f"{POOL}/replicas/gpu-0", {"engine": None}, 422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"surprise": 1}, 422),
    ("PUT", f"{POOL}/replicas/bad%20id", None, 400),
    ("PUT", f"{POOL}/replicas/{'x' * 129}", None, 422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"base_fingerprint": "xyz"}, 400),
    ("PUT", f"{POOL}/replicas/gpu-0", {"interval_seconds": 0}, 422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"cache_bytes": -1}, 422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"engine_url": "file:///etc/passwd"}, 400),
    ("PUT", f"{POOL}/replicas/gpu-0", {"error": "e" * 5000}, 422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"adapters": [{"served_name": "a", "state": "gone"}]},
     422),
    ("PUT", f"{POOL}/replicas/gpu-0", {"adapters": [{"served_name": "a", "state": "loaded"}]},
     400),
    ("PUT", f"{POOL}/replicas/gpu-0",
     {"adapters": [{"served_name": "a", "state": "loading"}] * 2}, 400),
    ("PUT", f"{POOL}/replicas/gpu-0",
     {"adapters": [{"served_name": f"n{i}", "state": "loading"} for i in range(1025)]}, 422),
    ("PUT", "/api/v1/pools/acme/nope/replicas/gpu-0", None, 404),
    ("PUT", "/api/v1/pools/ACME/gpu-a/replicas/gpu-0", None, 400),
    ("DELETE", f"{POOL}/replicas/nobody", None, 404),
    ("GET", "/api/v1/where/acme/bot/seven", None, 400),
    ("GET", "/api/v1/where/acme/bot/9", None, 404),
    ("GET", "/api/v1/where/Bad!/bot/1", None, 400),
    ("GET", "/api/v1/pools/acme/nope/status", None, 404),
    ("GET", f"{POOL}/desired?wait=61", None, 422),
    ("GET", f"{POOL}/desired?wait=-1", None, 422),
])
def test_bad_input_is_a_problem_and_changes_nothing(api: Api, method: str, path: str,
                                                    body: Any, status: int) -> None:
    setup_pool(api)
    before = ledger(api)
    if method == "PUT" and body is not None and "surprise" not in body:
        body = {"engine": "vllm", "agent_version": "0.1", **body}
    elif method == "PUT" and body is None:
        body = {"engine": "vllm", "agent_version": "0.1"}
    assert_problem(call(api, method, path, json=body), status)
    assert ledger(api) == before


def test_audit_only_on_transitions(api: Api) -> None:
    desired = setup_pool(api)
    v1 = desired["members"][0]
    for _ in range(3):
        ok(beat(api, "gpu-0", [loaded(v1)], fingerprint=desired["base_fingerprint"]))
    with api.engine.connect() as conn:
        rows = [a for (a,) in conn.execute(select(AuditEvent.action))
                if a.startswith("pool.replica")]
    assert rows == ["pool.replica_verdict"]
