"""What held in the security pass stays held (issue 15): a reader token — global or scoped —
is refused every write route of the API with 403, and nothing changes. The table below must name
every mutating operation of /openapi.json, so a new route cannot skip this test."""

from __future__ import annotations

from typing import Any

import pytest

from registry.models import (
    AdapterVersion,
    ApiToken,
    AuditEvent,
    BaseModel,
    Blob,
    Channel,
    ChannelEvent,
    Job,
    Namespace,
    Webhook,
)
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, push
from tests.registry.test_tenancy import base_body

PG = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
V = "/api/v1/adapters/acme/bot"
DIGEST = "0" * 64
COUNTED = (AdapterVersion, ApiToken, AuditEvent, BaseModel, Blob, Channel, ChannelEvent, Job,
           Namespace, Webhook)

# (method, path template from /openapi.json, concrete path, JSON body or raw bytes)
WRITES: list[tuple[str, str, str, Any]] = [
    ("POST", "/api/v1/tokens", "/api/v1/tokens", {"name": "x", "role": "reader"}),
    ("DELETE", "/api/v1/tokens/{token_id}", "/api/v1/tokens/abc", None),
    ("POST", "/api/v1/namespaces", "/api/v1/namespaces", {"name": "newns"}),
    ("PATCH", "/api/v1/adapters/{ns}/{name}", V, {"description": "x"}),
    ("POST", "/api/v1/adapters/{ns}/{name}/versions", f"{V}/versions",
     {"files": [{"path": "adapter_config.json", "digest": DIGEST, "size": 1}],
      "base": {"hub_id": "tiny/llama", "revision": "abc"}}),
    ("POST", "/api/v1/adapters/{ns}/{name}/versions/{sel}/yank", f"{V}/versions/1/yank",
     {"reason": "x"}),
    ("POST", "/api/v1/adapters/{ns}/{name}/versions/{sel}/unyank", f"{V}/versions/1/unyank",
     {}),
    ("POST", "/api/v1/adapters/{ns}/{name}/versions/{sel}/metrics", f"{V}/versions/1/metrics",
     {"metrics": [{"key": "acc", "value": 0.1}]}),
    ("POST", "/api/v1/bases", "/api/v1/bases",
     {"hub_id": "tiny/llama", "revision": "r9", "fingerprint": DIGEST,
      "tensors": [["w", "F32", [1], DIGEST]]}),
    ("POST", "/api/v1/blobs/missing", "/api/v1/blobs/missing", {"digests": [DIGEST]}),
    ("PUT", "/api/v1/blobs/{digest}", f"/api/v1/blobs/{DIGEST}", b"x"),
    ("PUT", "/api/v1/adapters/{ns}/{name}/channels/{channel}", f"{V}/channels/prod",
     {"protected": True}),
    ("POST", "/api/v1/adapters/{ns}/{name}/channels/{channel}/promote",
     f"{V}/channels/prod/promote", {"version": 1, "now": True}),
    ("POST", "/api/v1/adapters/{ns}/{name}/channels/{channel}/rollback",
     f"{V}/channels/prod/rollback", {}),
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}", "/api/v1/rollouts/1/pause", {}),
    ("POST", "/api/v1/adapters/{ns}/{name}/versions/{sel}/merge", f"{V}/versions/1/merge", {}),
    ("POST", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/1/cancel", None),
    ("POST", "/api/v1/namespaces/{ns}/webhooks", "/api/v1/namespaces/acme/webhooks",
     {"url": "https://hooks.example/x", "events": ["ping"]}),
    ("DELETE", "/api/v1/webhooks/{webhook_id}", "/api/v1/webhooks/1", None),
    ("POST", "/api/v1/webhooks/{webhook_id}/test", "/api/v1/webhooks/1/test", None),
    ("POST", "/api/v1/deliveries/{delivery_id}/redeliver", "/api/v1/deliveries/1/redeliver",
     None),
    ("POST", "/api/v1/gc", "/api/v1/gc", {"dry_run": False}),
    ("POST", "/api/v1/retention", "/api/v1/retention", {"dry_run": False}),
    ("PUT", "/api/v1/adapters/{ns}/{name}/retention", f"{V}/retention", {"keep_last": 1}),
    ("POST", "/api/v1/pools/{ns}", "/api/v1/pools/acme",
     {"name": "gpu", "base": "tiny/llama@abc", "model_id": "/m", "dtype": "float32"}),
    ("PATCH", "/api/v1/pools/{ns}/{pool}", "/api/v1/pools/acme/gpu", {"max_loras": 2}),
    ("PUT", "/api/v1/pools/{ns}/{pool}/channels/{adapter_ns}/{name}/{channel}",
     "/api/v1/pools/acme/gpu/channels/acme/bot/prod", None),
    ("DELETE", "/api/v1/pools/{ns}/{pool}/channels/{adapter_ns}/{name}/{channel}",
     "/api/v1/pools/acme/gpu/channels/acme/bot/prod", None),
    ("PUT", "/api/v1/pools/{ns}/{pool}/pins/{adapter_ns}/{name}/{number}",
     "/api/v1/pools/acme/gpu/pins/acme/bot/1", None),
    ("DELETE", "/api/v1/pools/{ns}/{pool}/pins/{adapter_ns}/{name}/{number}",
     "/api/v1/pools/acme/gpu/pins/acme/bot/1", None),
    ("DELETE", "/api/v1/pools/{ns}/{pool}/replicas/{replica_id}",
     "/api/v1/pools/acme/gpu/replicas/gpu-0", None),
]
# Readers may do these by design: resolve many keys at once, report live metrics (routers) and
# report a replica's residency (fleet agents pull with read tokens).
READER_WRITES = {("POST", "/api/v1/resolve"), ("POST", "/api/v1/metrics/live"),
                 ("PUT", "/api/v1/pools/{ns}/{pool}/replicas/{replica_id}")}


def seed(api: Api) -> None:
    """One of everything the write routes act on, made by the admin: a base, two versions,
    a channel with a running rollout, a merge job, a webhook with a delivery, a pool."""
    def ok(r: Any) -> Any:
        assert r.status_code < 300, r.text
        return r.json()

    admin = h(api.admin)
    ok(api.client.post("/api/v1/bases", json=base_body("abc"), headers=admin))
    ok(push(api, api.admin))
    ok(push(api, api.admin, seed=2))
    ok(api.client.post(f"{V}/channels/prod/promote", json={"version": 1, "now": True},
                       headers=admin))
    ok(api.client.post(f"{V}/channels/prod/promote", headers=admin, json={
        "version": 2, "steps": [50, 100], "interval_seconds": 60}))
    ok(api.client.post(f"{V}/versions/1/merge", json={}, headers=admin))
    ok(api.client.post("/api/v1/namespaces/acme/webhooks", headers=admin, json={
        "url": "https://93.184.216.34/hook", "events": ["ping"]}))
    ok(api.client.post("/api/v1/webhooks/1/test", headers=admin))
    ok(api.client.post("/api/v1/pools/acme", headers=admin, json={
        "name": "gpu", "base": "tiny/llama@abc", "model_id": "/m", "dtype": "float32"}))


def counts(api: Api) -> tuple[int, ...]:
    return tuple(api.count(m) for m in COUNTED)


def test_the_table_names_every_mutating_operation(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    mutating = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops
                if m in ("post", "put", "patch", "delete")}
    assert mutating - READER_WRITES == {(m, template) for m, template, _, _ in WRITES}


@PG
@pytest.mark.parametrize("scope", [None, "acme"])
def test_a_reader_is_refused_every_write_route_and_nothing_changes(api: Api,
                                                                   scope: str | None) -> None:
    seed(api)
    reader = api.token("reader", scope)
    before = counts(api)
    for method, _, path, body in WRITES:
        kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = api.client.request(method, path, headers=h(reader), **kw)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert_problem(r, 403, "permission_denied")
    assert counts(api) == before
