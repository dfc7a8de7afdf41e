"""Tenancy: namespace-scoped tokens can push; blob dedup does not tell one namespace what
another holds; bases are immutable and registered only by a role that says so; tokens expire
on time and never mint more than they hold (issue 15, items 1, 2 and 8)."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from registry.db import make_session_factory, transaction
from registry.fingerprint import TensorEntry, fingerprint_digest
from registry.models import AdapterVersion, ApiToken, AuditEvent, BaseModel, Blob, utcnow
from registry.roles import ROLES
from registry.services.tokens import Principal
from registry.web.token_cache import TokenCache
from tests.fixtures.adapters import adapter_files, base_shapes
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, push, upload_all

PG = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(api: Api) -> tuple[int, ...]:
    """Row counts that no refused request may change."""
    return tuple(api.count(m) for m in (AdapterVersion, AuditEvent, Blob, BaseModel, ApiToken))


# -- item 1: scoped writers push; dedup is per namespace --------------------------------------

@PG
def test_a_namespace_scoped_writer_can_push(api: Api) -> None:
    alpha = api.token("writer", "alpha")
    r = push(api, alpha, adapter="alpha/bot")
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "alpha/bot@1"
    # ... and a scoped admin too
    assert push(api, api.token("admin", "alpha"), adapter="alpha/bot", seed=3).status_code == 201
    # a reader may not ask (it cannot push anywhere)
    r = api.client.post("/api/v1/blobs/missing", json={"digests": ["a" * 64]},
                        headers=h(api.token("reader", "alpha")))
    assert_problem(r, 403, "permission_denied")


@PG
def test_missing_does_not_reveal_another_namespaces_blobs(api: Api) -> None:
    files = adapter_files(seed=7)
    assert push(api, api.token("writer", "beta"), adapter="beta/bot", seed=7).status_code == 201
    digests = [sha(b) for b in files.values()]
    alpha = api.token("writer", "alpha")
    r = api.client.post("/api/v1/blobs/missing", json={"digests": digests}, headers=h(alpha))
    assert sorted(r.json()["missing"]) == sorted(digests)  # as if nobody held them
    # a global token still sees the whole store
    r = api.client.post("/api/v1/blobs/missing", json={"digests": digests}, headers=h(api.admin))
    assert r.json()["missing"] == []


@PG
def test_uploading_a_held_elsewhere_blob_answers_as_a_new_upload(api: Api) -> None:
    data = b"the same bytes in two namespaces"
    beta = api.token("writer", "beta")
    first = api.client.put(f"/api/v1/blobs/{sha(data)}", content=data, headers=h(beta))
    assert first.status_code == 201
    alpha = api.token("writer", "alpha")
    again = api.client.put(f"/api/v1/blobs/{sha(data)}", content=data, headers=h(alpha))
    assert again.status_code == 201  # not 200 "already stored": no existence oracle
    # bytes that do not hash to the digest prove nothing and are refused
    wrong = api.client.put(f"/api/v1/blobs/{sha(data)}", content=b"x" * len(data),
                           headers=h(api.token("writer", "gamma")))
    assert_problem(wrong, 422, "digest_mismatch")
    r = api.client.post("/api/v1/blobs/missing", json={"digests": [sha(data)]},
                        headers=h(api.token("writer", "gamma")))
    assert r.json()["missing"] == [sha(data)]


@PG
def test_a_namespace_cannot_reference_or_read_blobs_it_never_uploaded(api: Api) -> None:
    assert push(api, api.token("writer", "beta"), adapter="beta/bot", seed=9).status_code == 201
    files = adapter_files(seed=9)
    entries = [{"path": p, "digest": sha(b), "size": len(b)} for p, b in files.items()]
    alpha = api.token("writer", "alpha")
    before = snapshot(api)
    r = api.client.post("/api/v1/adapters/alpha/bot/versions", headers=h(alpha), json={
        "files": entries, "base": {"hub_id": "tiny/llama", "revision": "abc"}})
    body = assert_problem(r, 400)
    assert "not uploaded" in body["detail"]
    assert snapshot(api) == before
    reader = api.token("reader", "alpha")
    for entry in entries:
        got = api.client.get(f"/api/v1/blobs/{entry['digest']}", headers=h(reader))
        assert_problem(got, 404, "not_found")
    # beta's own reader reads them; after uploading the bytes, alpha may use them too
    beta_reader = api.token("reader", "beta")
    assert api.client.get(f"/api/v1/blobs/{entries[0]['digest']}",
                          headers=h(beta_reader)).status_code == 200
    upload_all(api, alpha, files)
    r = api.client.post("/api/v1/adapters/alpha/bot/versions", headers=h(alpha), json={
        "files": entries, "base": {"hub_id": "tiny/llama", "revision": "abc"}})
    assert r.status_code == 201, r.text
    assert api.client.get(f"/api/v1/blobs/{entries[0]['digest']}",
                          headers=h(reader)).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_global_dedup_is_a_setting(api: Api) -> None:
    state = api.client.app.state.lorareg  # type: ignore[attr-defined]
    state.settings = state.settings.model_copy(update={"blob_dedup": "global"})
    assert push(api, api.token("writer", "beta"), adapter="beta/bot", seed=4).status_code == 201
    digests = [sha(b) for b in adapter_files(seed=4).values()]
    r = api.client.post("/api/v1/blobs/missing", json={"digests": digests},
                        headers=h(api.token("writer", "alpha")))
    assert r.json()["missing"] == []


# -- item 2: immutable bases, registered by curators ---------------------------------------

def base_body(rev: str = "r1", widen: bool = False) -> dict[str, Any]:
    rows = []
    for name, (dtype, shape) in sorted(base_shapes().items()):
        if widen and "q_proj" in name:
            shape = (shape[0] + 16, shape[1])
        rows.append(TensorEntry(name, dtype, tuple(shape), sha(name.encode() + bytes(widen))))
    return {"hub_id": "tiny/llama", "revision": rev, "fingerprint": fingerprint_digest(rows),
            "tensors": [[t.name, t.dtype, list(t.shape), t.sha256] for t in rows]}


@PG
def test_only_an_unscoped_curator_or_admin_registers_bases(api: Api) -> None:
    refused = [api.token(role, ns) for role, ns in [
        ("writer", None), ("writer", "alpha"), ("admin", "alpha"), ("curator", "alpha"),
        ("promoter", None), ("reader", None)]]
    before = snapshot(api)
    for token in refused:
        r = api.client.post("/api/v1/bases", json=base_body(), headers=h(token))
        assert_problem(r, 403, "permission_denied")
    assert snapshot(api) == before
    r = api.client.post("/api/v1/bases", json=base_body(), headers=h(api.token("curator")))
    assert r.status_code == 201, r.text
    assert api.client.post("/api/v1/bases", json=base_body(),
                           headers=h(api.admin)).status_code == 200


@PG
def test_a_registered_base_is_immutable_and_other_namespaces_keep_their_verdicts(api: Api
                                                                                ) -> None:
    curator = api.token("curator")
    assert api.client.post("/api/v1/bases", json=base_body("abc"),
                           headers=h(curator)).status_code == 201
    beta = api.token("writer", "beta")
    assert push(api, beta, adapter="beta/bot").json()["base"]["compat_status"] == "verified"
    before = snapshot(api)
    r = api.client.post("/api/v1/bases", json=base_body("abc", widen=True), headers=h(curator))
    body = assert_problem(r, 409, "conflict")
    assert body["registered_fingerprint"] == base_body("abc")["fingerprint"]
    assert body["offered_fingerprint"] == base_body("abc", widen=True)["fingerprint"]
    assert snapshot(api) == before
    # beta's next fitting push is still verified against the base it was made for
    r = push(api, beta, adapter="beta/bot", seed=2)
    assert r.status_code == 201 and r.json()["base"]["compat_status"] == "verified"
    with transaction(make_session_factory(api.engine)) as session:
        statuses = set(session.scalars(select(AdapterVersion.compat_status)))
    assert statuses == {"verified"}


@PG
def test_concurrent_registrations_of_one_revision_give_one_base(api: Api) -> None:
    curator = api.token("curator")
    bodies = [base_body("race", widen=bool(i % 2)) for i in range(6)]
    codes: list[int] = []

    def register(body: dict[str, Any]) -> None:
        codes.append(api.client.post("/api/v1/bases", json=body, headers=h(curator)).status_code)

    threads = [threading.Thread(target=register, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(201) == 1 and set(codes) <= {201, 200, 409}, codes
    with api.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(BaseModel)) == 1


# -- item 8: expiry on every use; minting never widens -------------------------------------

def test_a_cached_token_is_refused_the_moment_it_expires() -> None:
    now = [utcnow()]
    cache = TokenCache(ttl=5.0, clock=lambda: 0.0, wall=lambda: now[0])
    principal = Principal("token:ci", "admin", None, "id1", expires_at=now[0] + timedelta(
        seconds=1))
    cache.put("lrg_id1_secret", principal)
    assert cache.get("lrg_id1_secret") == principal
    now[0] += timedelta(seconds=1)  # the cache entry is still young; the token is not
    assert cache.get("lrg_id1_secret") is None


@PG
def test_an_expired_token_is_refused_by_the_api_and_the_resolve_fast_path(api: Api) -> None:
    state = api.client.app.state.lorareg  # type: ignore[attr-defined]
    now = [utcnow()]
    state.tokens = TokenCache(wall=lambda: now[0])
    token = api.token("reader", expires_at=now[0] + timedelta(minutes=5))
    assert api.client.get("/api/v1/whoami", headers=h(token)).status_code == 200
    assert api.client.get("/api/v1/resolve/acme/bot:prod",
                          headers=h(token)).status_code == 404
    now[0] += timedelta(minutes=5)  # the token's expiry, within the cache's ttl
    with transaction(make_session_factory(api.engine)) as session:
        session.execute(update(ApiToken).values(expires_at=utcnow()))
    assert_problem(api.client.get("/api/v1/whoami", headers=h(token)), 401, "unauthenticated")
    r = api.client.get("/api/v1/resolve/acme/bot:prod", headers=h(token))
    assert_problem(r, 401, "unauthenticated")


@PG
def test_a_token_never_mints_more_than_it_holds(api: Api) -> None:
    soon = utcnow() + timedelta(days=2)
    expiring = api.token("admin", expires_at=soon)
    scoped = api.token("admin", "alpha")
    writer = api.token("writer")
    before = snapshot(api)
    cases = [
        (expiring, {"name": "forever", "role": "admin"}, 400),
        (expiring, {"name": "later", "role": "reader", "expires_in_days": 30}, 400),
        (scoped, {"name": "other", "role": "writer", "namespace": "beta"}, 403),
        (scoped, {"name": "global", "role": "writer"}, 403),
        (writer, {"name": "w", "role": "reader"}, 403),
    ]
    for token, body, status in cases:
        assert_problem(api.client.post("/api/v1/tokens", json=body, headers=h(token)), status)
    assert snapshot(api) == before
    ok = api.client.post("/api/v1/tokens", json={"name": "short", "role": "reader",
                                                 "expires_in_days": 1}, headers=h(expiring))
    assert ok.status_code == 201, ok.text
    ok = api.client.post("/api/v1/tokens", json={"name": "mine", "role": "writer",
                                                 "namespace": "alpha"}, headers=h(scoped))
    assert ok.status_code == 201, ok.text


def test_roles_table_is_the_one_source() -> None:
    from typing import get_args

    from cli.tokens import ROLES as CLI_ROLES
    from registry.api.schemas import TokenIn

    assert list(get_args(TokenIn.model_fields["role"].annotation)) == list(ROLES)
    assert list(ROLES) == CLI_ROLES
