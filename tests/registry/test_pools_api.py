"""Serving pools over the REST API in-process: the routes, their permissions (another
namespace's token changes nothing), problem+json refusals, and ``served_name`` in resolve."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from registry.db import make_session_factory, transaction
from registry.models import AuditEvent, PoolBinding, PoolMember, PoolPin, ServingPool
from registry.served_names import parse_served_name
from registry.services import bases
from registry.services.context import Actor
from tests.fixtures.adapters import adapter_files, lora_config, lora_tensors
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, push, upload_all
from tests.registry.test_bases import entries, registration

POOL = "/api/v1/pools/acme/gpu-a"
SETTINGS = {"name": "gpu-a", "base": "tiny/llama@abc", "model_id": "/models/llama",
            "served_model_name": "llama", "max_lora_rank": 16, "max_loras": 2,
            "dtype": "bfloat16"}


def registered(api: Api, *adapters: str) -> None:
    """The tiny base registered and one version of each adapter pushed."""
    with transaction(make_session_factory(api.engine)) as session:
        bases.register_base(session, Actor("t"), registration(entries()))
    for seed, adapter in enumerate(adapters):
        assert push(api, api.admin, adapter, seed=seed).status_code == 201


def push_rank(api: Api, adapter: str, r: int) -> None:
    files = upload_all(api, api.admin, adapter_files(r=r, config=lora_config(r),
                                                     tensors=lora_tensors(r)))
    r_ = api.client.post(f"/api/v1/adapters/{adapter}/versions", headers=h(api.admin),
                         json={"files": files, "base": {"hub_id": "tiny/llama",
                                                        "revision": "abc"}})
    assert r_.status_code == 201, r_.text


def call(api: Api, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    return api.client.request(method, path, headers=h(token or api.admin), **kw)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def promote(api: Api, adapter: str, version: int, token: str | None = None) -> Any:
    return call(api, "POST", f"/api/v1/adapters/{adapter}/channels/prod/promote", token,
                json={"version": version, "now": True})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_pool_lifecycle(api: Api) -> None:
    registered(api, "acme/bot")
    push_rank(api, "acme/bot", 32)
    created = ok(call(api, "POST", "/api/v1/pools/acme", json=SETTINGS), 201)
    assert (created["name"], created["max_cpu_loras"], created["channels"]) == (
        "acme/gpu-a", 2, [])
    assert [p["name"] for p in ok(call(api, "GET", "/api/v1/pools"))["items"]] == ["acme/gpu-a"]
    ok(promote(api, "acme/bot", 1))
    bound = ok(call(api, "PUT", f"{POOL}/channels/acme/bot/prod"))
    assert bound["channels"] == ["acme/bot:prod"]

    refused = assert_problem(promote(api, "acme/bot", 2), 422, "incompatible_pool")
    assert refused["pools"][0]["pool"] == "acme/gpu-a"
    assert "rank 32 exceeds the max LoRA rank 16" in refused["detail"]
    check = ok(call(api, "GET", f"{POOL}/check/acme/bot/2"))
    assert not check["ok"] and [f"acme/bot@2: {p}" for p in check["problems"]] == (
        refused["pools"][0]["problems"])
    assert ok(call(api, "PATCH", POOL, json={"max_lora_rank": 32}))["max_lora_rank"] == 32
    ok(promote(api, "acme/bot", 2))

    desired = ok(call(api, "GET", f"{POOL}/desired"))
    assert [(m["ref"], m["sources"], m["ok"]) for m in desired["members"]] == [
        ("acme/bot@2", ["acme/bot:prod (stable)"], True)]
    assert [(m["ref"], m["removed_at"] is not None) for m in desired["left"]] == [
        ("acme/bot@1", True)]
    assert parse_served_name(desired["members"][0]["served_name"])[:3] == ("acme", "bot", 2)
    assert ok(call(api, "PUT", f"{POOL}/pins/acme/bot/1"))["pinned"] == ["acme/bot@1"]
    assert ok(call(api, "DELETE", f"{POOL}/pins/acme/bot/1"))["pinned"] == []
    assert ok(call(api, "DELETE", f"{POOL}/channels/acme/bot/prod"))["channels"] == []
    actions = [a for (a,) in _audit(api) if a.startswith("pool.")]
    assert actions == ["pool.created", "pool.bound", "pool.desired_changed", "pool.updated",
                       "pool.desired_changed", "pool.pinned", "pool.desired_changed",
                       "pool.unpinned", "pool.desired_changed", "pool.unbound",
                       "pool.desired_changed"]


def _audit(api: Api) -> list[tuple[str]]:
    with api.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(AuditEvent.action).order_by(AuditEvent.id))]


def counts(api: Api) -> tuple[int, ...]:
    return tuple(api.count(m) for m in (ServingPool, PoolBinding, PoolPin, PoolMember,
                                         AuditEvent))


def test_another_namespaces_token_changes_nothing(api: Api) -> None:
    registered(api, "acme/bot", "other/bot")
    ok(call(api, "POST", "/api/v1/pools/acme", json=SETTINGS), 201)
    ok(promote(api, "acme/bot", 1))
    ok(promote(api, "other/bot", 1))
    ok(call(api, "PUT", f"{POOL}/channels/acme/bot/prod"))
    ok(call(api, "PUT", f"{POOL}/pins/acme/bot/1"))
    outsider = api.token("admin", "other")
    promoter = api.token("promoter", "acme")
    before = counts(api)
    attempts = [
        (outsider, "POST", "/api/v1/pools/acme", {"json": SETTINGS}),
        (outsider, "PATCH", POOL, {"json": {"max_lora_rank": 64}}),
        (promoter, "PATCH", POOL, {"json": {"max_lora_rank": 64}}),
        (promoter, "POST", "/api/v1/pools/acme", {"json": {**SETTINGS, "name": "gpu-b"}}),
        (outsider, "PUT", f"{POOL}/channels/acme/bot/prod", {}),
        (outsider, "PUT", f"{POOL}/channels/other/bot/prod", {}),
        (outsider, "DELETE", f"{POOL}/channels/acme/bot/prod", {}),
        (outsider, "PUT", f"{POOL}/pins/other/bot/1", {}),
        (outsider, "DELETE", f"{POOL}/pins/acme/bot/1", {}),
        (outsider, "GET", POOL, {}),
        (outsider, "GET", f"{POOL}/desired", {}),
        (outsider, "GET", f"{POOL}/check/acme/bot/1", {}),
    ]
    for token, method, path, kw in attempts:
        assert_problem(call(api, method, path, token, **kw), 403, "permission_denied")
    # Even an instance admin cannot make a pool serve another namespace's channel or version.
    for path in (f"{POOL}/channels/other/bot/prod", f"{POOL}/pins/other/bot/1"):
        problem = assert_problem(call(api, "PUT", path), 400, "bad_request")
        assert "serves only namespace acme" in problem["detail"]
    assert ok(call(api, "GET", "/api/v1/pools", outsider))["items"] == []
    assert counts(api) == before


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "max_lora_rank": 48}, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "dtype": "auto"}, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "name": "Bad Name"}, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "target_modules": []}, 422),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "target_modules": ["mlp.gate_proj"]}, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "surprise": 1}, 422),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "max_lora_rank": 10**30}, 422),
    ("POST", "/api/v1/pools/acme", {"name": "x"}, 422),
    ("POST", "/api/v1/pools/ACME", SETTINGS, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "base": "nope"}, 400),
    ("POST", "/api/v1/pools/acme", {**SETTINGS, "max_loras": 4, "max_cpu_loras": 2}, 400),
    ("PATCH", POOL, {"clear": ["model_id"]}, 422),
    ("PATCH", POOL, {"max_lora_rank": 48}, 400),
    ("PATCH", POOL, {"target_modules": ["q_proj"], "clear": ["target_modules"]}, 400),
    ("PATCH", "/api/v1/pools/acme/nope", {"max_lora_rank": 32}, 404),
    ("PUT", f"{POOL}/channels/acme/bot/Prod!", None, 400),
    ("PUT", f"{POOL}/channels/acme/nobody/prod", None, 404),
    ("DELETE", f"{POOL}/channels/acme/bot/staging", None, 404),
    ("PUT", f"{POOL}/pins/acme/bot/0", None, 422),
    ("PUT", f"{POOL}/pins/acme/bot/99999999999", None, 422),
    ("PUT", f"{POOL}/pins/acme/bot/7", None, 404),
    ("DELETE", f"{POOL}/pins/acme/bot/1", None, 404),
    ("GET", f"{POOL}/check/acme/bot/seven", None, 400),
    ("GET", "/api/v1/pools?namespace=Bad!", None, 400),
])
def test_bad_input_is_a_problem_and_changes_nothing(api: Api, method: str, path: str,
                                                    body: Any, status: int) -> None:
    registered(api, "acme/bot")
    ok(call(api, "POST", "/api/v1/pools/acme", json=SETTINGS), 201)
    before = counts(api)
    assert_problem(call(api, method, path, json=body), status)
    assert counts(api) == before


def test_resolve_names_the_content_it_serves(api: Api) -> None:
    registered(api, "acme/bot")
    ok(promote(api, "acme/bot", 1))
    first = ok(call(api, "GET", "/api/v1/resolve/acme/bot:prod"))
    again = ok(call(api, "GET", "/api/v1/resolve/acme/bot:prod"))  # from the fast path
    assert first == again
    ns, name, number, digest12 = parse_served_name(first["served_name"])
    assert (ns, name, number) == ("acme", "bot", 1)
    assert first["manifest_digest"].startswith(digest12)
    batch = ok(call(api, "POST", "/api/v1/resolve", json={"channel": "prod",
                                                           "items": [{"adapter": "acme/bot"}]}))
    assert batch[0]["served_name"] == first["served_name"]
    with api.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ServingPool)) == 0
