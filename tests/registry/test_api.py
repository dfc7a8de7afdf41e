"""The REST API in-process (ASGI), on a committed database: auth, problems, uploads, ranges."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from registry.db import make_session_factory, transaction
from registry.models import AdapterVersion, AuditEvent, utcnow
from registry.services import tokens
from tests.fixtures.adapters import adapter_files
from tests.fixtures.api import Api


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_all(api: Api, token: str, files: dict[str, bytes]) -> list[dict[str, Any]]:
    entries = []
    digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    r = api.client.post("/api/v1/blobs/missing", json={"digests": list(digests.values())},
                        headers=h(token))
    assert r.status_code == 200, r.text
    for path, data in files.items():
        if digests[path] in r.json()["missing"]:
            up = api.client.put(f"/api/v1/blobs/{digests[path]}", content=data,
                                headers=h(token))
            assert up.status_code == 201, up.text
        entries.append({"path": path, "digest": digests[path], "size": len(data)})
    return entries


def push(api: Api, token: str, adapter: str = "acme/bot", seed: int = 0, **body: Any
         ) -> Any:
    files = upload_all(api, token, adapter_files(seed=seed))
    payload = {"files": files, "base": {"hub_id": "tiny/llama", "revision": "abc"}, **body}
    return api.client.post(f"/api/v1/adapters/{adapter}/versions", json=payload,
                           headers=h(token))


def assert_problem(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"] and body["title"]
    if code:
        assert body["code"] == code
    assert "Traceback" not in r.text
    return body


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_push_show_list_metrics_yank(api: Api) -> None:
    r = push(api, api.admin, metrics=[{"key": "acc", "value": 0.9}], labels={"lang": "de"},
             provenance={"git_commit": "abc", "ci_run_url": "https://ci/1"})
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["ref"] == "acme/bot@1" and v["created"] is True and v["metrics"] == {"acc": 0.9}
    again = push(api, api.admin)
    assert again.status_code == 200 and again.json()["created"] is False
    assert push(api, api.admin, seed=5).json()["version"] == 2
    got = api.client.get("/api/v1/adapters/acme/bot/versions/latest", headers=h(api.admin))
    assert got.json()["version"] == 2
    listed = api.client.get("/api/v1/adapters/acme/bot/versions?metric=acc>=0.5",
                            headers=h(api.admin)).json()
    assert [i["version"] for i in listed["items"]] == [1]
    r = api.client.post("/api/v1/adapters/acme/bot/versions/2/metrics",
                        json={"metrics": [{"key": "acc", "value": 0.95}]}, headers=h(api.admin))
    assert r.status_code == 201
    r = api.client.post("/api/v1/adapters/acme/bot/versions/2/yank", json={"reason": "bad"},
                        headers=h(api.admin))
    assert r.json()["status"] == "yanked"
    latest = api.client.get("/api/v1/adapters/acme/bot/versions/latest", headers=h(api.admin))
    assert latest.json()["version"] == 1
    events = api.client.get("/api/v1/audit?target=acme/bot", headers=h(api.admin)).json()
    assert {"version.pushed", "metrics.logged", "version.yanked"} <= {
        e["action"] for e in events["items"]}


def test_pagination_with_cursor(api: Api) -> None:
    for seed in range(5):
        assert push(api, api.admin, seed=seed).status_code == 201
    seen: list[int] = []
    url = "/api/v1/adapters/acme/bot/versions?limit=2"
    while url:
        page = api.client.get(url, headers=h(api.admin)).json()
        seen += [i["version"] for i in page["items"]]
        nxt = page["next_cursor"]
        url = f"/api/v1/adapters/acme/bot/versions?limit=2&cursor={nxt}" if nxt else ""
    assert seen == [5, 4, 3, 2, 1]
    bad = api.client.get("/api/v1/adapters/acme/bot/versions?cursor=!!", headers=h(api.admin))
    assert_problem(bad, 400)


def test_blob_download_range_etag(api: Api) -> None:
    data = bytes(range(256)) * 40
    digest = hashlib.sha256(data).hexdigest()
    assert api.client.put(f"/api/v1/blobs/{digest}", content=data,
                          headers=h(api.admin)).status_code == 201
    again = api.client.put(f"/api/v1/blobs/{digest}", content=data, headers=h(api.admin))
    assert again.status_code == 200
    full = api.client.get(f"/api/v1/blobs/{digest}", headers=h(api.admin))
    assert full.content == data and full.headers["etag"] == f'"{digest}"'
    assert full.headers["content-length"] == str(len(data))
    part = api.client.get(f"/api/v1/blobs/{digest}",
                          headers={**h(api.admin), "Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    tail = api.client.get(f"/api/v1/blobs/{digest}",
                          headers={**h(api.admin), "Range": "bytes=-10"})
    assert tail.content == data[-10:]
    past = api.client.get(f"/api/v1/blobs/{digest}",
                          headers={**h(api.admin), "Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    head = api.client.head(f"/api/v1/blobs/{digest}", headers=h(api.admin))
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    cached = api.client.get(f"/api/v1/blobs/{digest}",
                            headers={**h(api.admin), "If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304 and cached.headers["etag"] == f'"{digest}"'
    # If-None-Match is decided before Range (RFC 9110 13.2.2), for GET and HEAD, with weak
    # tags, lists and "*"; a tag of other bytes does not match.
    for match in (f'W/"{digest}"', f'"{"0" * 64}", "{digest}"', "*"):
        for method in ("GET", "HEAD"):
            r = api.client.request(method, f"/api/v1/blobs/{digest}", headers={
                **h(api.admin), "If-None-Match": match, "Range": f"bytes={len(data)}-"})
            assert r.status_code == 304, (method, match)
    other = api.client.get(f"/api/v1/blobs/{digest}", headers={
        **h(api.admin), "If-None-Match": f'"{"0" * 64}"'})
    assert other.status_code == 200 and other.content == data


def test_wrong_digest_upload_stores_nothing(api: Api) -> None:
    data = b"hello" * 100
    wrong = hashlib.sha256(b"other").hexdigest()
    r = api.client.put(f"/api/v1/blobs/{wrong}", content=data, headers=h(api.admin))
    assert_problem(r, 422, "digest_mismatch")
    missing = api.client.post("/api/v1/blobs/missing", json={"digests": [wrong]},
                              headers=h(api.admin))
    assert missing.json()["missing"] == [wrong]
    assert_problem(api.client.get(f"/api/v1/blobs/{wrong}", headers=h(api.admin)), 404)


def test_oversized_bodies_are_413(api: Api) -> None:
    big = b"x" * (1024 * 1024 + 1)
    r = api.client.put(f"/api/v1/blobs/{hashlib.sha256(big).hexdigest()}", content=big,
                       headers=h(api.admin))
    assert_problem(r, 413)
    r = api.client.post("/api/v1/adapters/acme/bot/versions", content=b"{" + b" " * 70000,
                        headers={**h(api.admin), "Content-Type": "application/json"})
    assert_problem(r, 413)


def test_bad_json_inputs(api: Api) -> None:
    before = api.count(AdapterVersion)
    r = api.client.post("/api/v1/adapters/acme/bot/versions", content=b"{not json",
                        headers={**h(api.admin), "Content-Type": "application/json"})
    assert_problem(r, 422)
    files = upload_all(api, api.admin, adapter_files())
    base = {"hub_id": "tiny/llama", "revision": "abc"}
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": files, "base": base, "surprise": 1}, headers=h(api.admin))
    assert "surprise" in assert_problem(r, 422)["detail"]
    traversal = [*files, {"path": "../../etc/passwd", "digest": files[0]["digest"],
                          "size": files[0]["size"]}]
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": traversal, "base": base}, headers=h(api.admin))
    assert_problem(r, 422, "invalid_path")
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": files[:1], "base": base}, headers=h(api.admin))
    assert_problem(r, 422, "invalid_adapter")
    assert api.count(AdapterVersion) == before


def test_missing_blobs_are_named(api: Api) -> None:
    entry = {"path": "adapter_config.json", "digest": "a" * 64, "size": 3}
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": [entry], "base": {"hub_id": "x", "revision": "y"}},
                        headers=h(api.admin))
    assert assert_problem(r, 400)["missing"] == ["a" * 64]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_auth_refusals_change_nothing(api: Api) -> None:
    assert push(api, api.admin, "acme/bot").status_code == 201
    assert push(api, api.admin, "globex/bot").status_code == 201
    before = (api.count(AdapterVersion), api.count(AuditEvent))
    reader = api.token("reader", "acme")
    writer_globex = api.token("writer", "globex")
    revoked = api.token("writer", "acme")
    api.client.delete(f"/api/v1/tokens/{revoked.split('_')[1]}", headers=h(api.admin))
    expired = api.token("writer", "acme")
    with transaction(make_session_factory(api.engine)) as session:
        row = session.get(tokens.ApiToken, expired.split("_")[1])
        assert row is not None
        row.expires_at = utcnow()
    before = (api.count(AdapterVersion), api.count(AuditEvent))
    cases = [
        ({}, 401), (h("lrg_nope_nope"), 401), (h("garbage"), 401),
        (h(revoked), 401), (h(expired), 401), (h(reader), 403), (h(writer_globex), 403),
    ]
    for headers, status in cases:
        r = api.client.post("/api/v1/adapters/acme/bot/versions/1/yank",
                            json={"reason": "x"}, headers=headers)
        assert_problem(r, status)
    assert (api.count(AdapterVersion), api.count(AuditEvent)) == before
    # Namespace scope applies to reads too.
    assert_problem(api.client.get("/api/v1/adapters/globex/bot", headers=h(reader)), 403)
    assert api.client.get("/api/v1/adapters/acme/bot", headers=h(reader)).status_code == 200
    listed = api.client.get("/api/v1/adapters", headers=h(reader)).json()["items"]
    assert [a["name"] for a in listed] == ["acme/bot"]
    # Only admins manage tokens; a namespace admin only within its namespace.
    assert_problem(api.client.post("/api/v1/tokens", json={"name": "x", "role": "admin"},
                                   headers=h(writer_globex)), 403)
    ns_admin = api.token("admin", "acme")
    assert_problem(api.client.post("/api/v1/tokens", json={"name": "x", "role": "reader",
                                                           "namespace": "globex"},
                                   headers=h(ns_admin)), 403)


def test_token_lifecycle_and_last_used(api: Api) -> None:
    r = api.client.post("/api/v1/tokens", json={"name": "ci", "role": "writer",
                                                "namespace": "acme", "expires_in_days": 30},
                        headers=h(api.admin))
    assert r.status_code == 201
    created = r.json()
    assert created["token"].startswith(f"lrg_{created['id']}_")
    who = api.client.get("/api/v1/whoami", headers=h(created["token"])).json()
    assert who == {"actor": "token:ci", "role": "writer", "namespace": "acme", "auth": True}
    listed = api.client.get("/api/v1/tokens", headers=h(api.admin)).json()["items"]
    row = next(t for t in listed if t["id"] == created["id"])
    assert row["token"] is None and row["last_used_at"] is not None
    assert api.client.delete(f"/api/v1/tokens/{created['id']}",
                             headers=h(api.admin)).status_code == 204
    assert_problem(api.client.get("/api/v1/whoami", headers=h(created["token"])), 401)


def test_health_ready_version_and_404(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}
    assert api.client.get("/api/v1/version").json()["version"]
    assert_problem(api.client.get("/api/v1/nope", headers=h(api.admin)), 404)
    assert_problem(api.client.get("/api/v1/adapters/acme/none", headers=h(api.admin)), 404)
    assert api.client.get("/openapi.json").json()["info"]["title"] == "lorareg"


BIG = 2**63


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("method,path,body", [
    ("GET", f"/api/v1/adapters/acme/bot/versions/{BIG}", None),
    ("GET", f"/api/v1/bases/{BIG}", None),
    ("GET", f"/api/v1/jobs/{BIG}", None),
    ("GET", f"/api/v1/rollouts/{BIG}", None),
    ("DELETE", f"/api/v1/webhooks/{BIG}", None),
    ("POST", "/api/v1/gc", {"grace_seconds": 86400000000000}),
    ("POST", "/api/v1/adapters/acme/bot/channels/prod/promote", {"version": BIG}),
])
def test_out_of_range_numbers_are_client_errors(api: Api, method: str, path: str,
                                                body: dict[str, Any] | None) -> None:
    assert push(api, api.admin).status_code == 201
    r = api.client.request(method, path, json=body, headers=h(api.admin))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
