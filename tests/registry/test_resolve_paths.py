"""The resolve fast path (registry/api/fast_path.py) and the resolve route answer every
request alike: status, body and headers, byte for byte and in order, auth refusals included.

Each request goes to two apps over one database and blob store, both built by ``create_app``:
the production stack (the fast path in front) and the same stack with the fast path taken out
of its middleware (no production switch: the test edits the app's middleware list before the
stack is built). The fast side is asked twice: once cold (it hands the request to the app,
which fills the caches) and once warm, and the test checks that the warm requests it should
serve from memory never reached the app. Requests run in process (ASGI), so no server adds
``Date`` or ``Server`` headers: nothing is excluded from the comparison. Every request sends an
``X-Request-ID`` (else each side makes up its own), except the cases about that header itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.app import create_app
from registry.api.fast_path import ResolveFastPath
from registry.db import make_session_factory, transaction
from registry.models import ApiToken, utcnow
from registry.services import bases
from registry.services.context import Actor
from registry.services.resolve_state import ResolveState
from registry.web.context import State
from registry.web.token_cache import TokenCache
from tests.fixtures.api import Api
from tests.registry.test_api import h, push
from tests.registry.test_bases import entries, registration

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
URL = "/api/v1/resolve/acme/bot:prod"
Headers = list[tuple[str, str]]
# Starlette's TestClient answers with httpx-compatible responses (httpx or httpx2).
Response = Any


@dataclass
class Case:
    name: str
    path: str = URL
    params: tuple[tuple[str, str], ...] = ()
    headers: Headers = field(default_factory=list)
    method: str = "GET"
    fast: bool = False  # the warm fast path must answer it without the app


@dataclass
class Paths:
    fast: TestClient  # the production stack: the fast path in front of the app
    normal: TestClient  # an app of its own without the fast path
    reached_app: list[str]  # paths of the requests the fast path handed to its app
    clock: list[datetime]  # the token caches' wall clock
    states: tuple[State, State]  # the fast side's, the normal side's

    def send(self, client: TestClient, case: Case) -> Response:
        return client.request(case.method, case.path, params=case.params,
                              headers=case.headers)


def without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware
                           if m.cls is not ResolveFastPath]  # type: ignore[comparison-overlap]
    app.middleware_stack = None  # built again, without it, on the next request
    return app


def still_caches(state: State, clock: list[datetime]) -> None:
    """Resolve state and token cache whose monotonic clock stands still (what was read stays
    servable however slow the machine is) and whose wall clock the test moves."""
    state.resolve = ResolveState(state.sessions, clock=lambda: 0.0)
    state.tokens = TokenCache(clock=lambda: 0.0, wall=lambda: clock[0])


def state_of(app: Any) -> State:
    state: State = app.state.lorareg
    return state


def canary_on_prod(api: Api) -> None:
    """acme/bot@1 stable on prod and @2 its canary at 50 %, all before any resolve."""
    with transaction(make_session_factory(api.engine)) as session:
        bases.register_base(session, Actor("t"), registration(entries()))
    for seed in range(2):
        assert push(api, api.admin, seed=seed).status_code == 201
    promote = "/api/v1/adapters/acme/bot/channels/prod/promote"
    for body in ({"version": 1, "now": True}, {"version": 2, "steps": [50, 100]}):
        r = api.client.post(promote, json=body, headers=h(api.admin))
        assert r.status_code == 200, r.text


@pytest.fixture
def paths(api: Api) -> Iterator[Paths]:
    canary_on_prod(api)
    clock = [utcnow()]
    production = api.client.app
    state = state_of(production)
    still_caches(state, clock)
    reached: list[str] = []
    inner = without_fast_path(production)  # type: ignore[arg-type]

    async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await inner(scope, receive, send)

    fast: ASGIApp = ResolveFastPath(recorded, state)  # what create_app puts outermost
    normal = without_fast_path(create_app(state.settings, engine=api.engine, store=state.store,
                                          host="0.0.0.0"))
    still_caches(state_of(normal), clock)
    yield Paths(TestClient(fast), TestClient(normal), reached, clock, (state, state_of(normal)))


def answer(r: Response) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """What a response says; a request id each side made up (none was sent) is checked for
    its form and then compared as ``<new>``."""
    headers = list(r.headers.raw)
    if "x-request-id" not in r.request.headers:
        made_up = [v for k, v in headers if k == b"x-request-id"]
        assert len(made_up) == 1 and re.fullmatch(rb"[0-9a-f]{32}", made_up[0]), headers
        headers = [(k, b"<new>" if k == b"x-request-id" else v) for k, v in headers]
    return r.status_code, r.content, headers


def compare(paths: Paths, cases: list[Case]) -> dict[str, int]:
    """Ask both paths; the fast side cold, then warm. The statuses, by case name."""
    statuses = {}
    for case in cases:
        cold = paths.send(paths.fast, case)
        del paths.reached_app[:]
        warm = paths.send(paths.fast, case)
        normal = paths.send(paths.normal, case)
        assert answer(cold) == answer(normal), case.name
        assert answer(warm) == answer(normal), case.name
        if case.fast:
            assert paths.reached_app == [], f"{case.name}: the fast path did not answer it"
        statuses[case.name] = normal.status_code
    return statuses


def asgi_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]
             ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One GET straight to an ASGI app: status, raw headers, body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("testserver", 80),
             "client": ("testclient", 50000), "headers": [(b"host", b"testserver"), *headers]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], list(start["headers"]), body


def cookie(token: str) -> tuple[str, str]:
    return ("Cookie", f"lorareg_token={token}")


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


@BOTH
def test_served_answers_are_identical(api: Api, paths: Paths) -> None:
    reader = api.token("reader", "acme")
    rid = ("X-Request-ID", "req-1")
    admin = [bearer(api.admin), rid]
    etag = paths.normal.get(URL, headers=admin).headers["etag"]
    cases = [Case(f"key {n}", params=(("key", f"user-{n}"),), headers=admin, fast=True)
             for n in range(12)]
    cases += [
        Case("no key", headers=admin, fast=True),
        Case("reader of the namespace", params=(("key", "k"),), headers=[bearer(reader), rid],
             fast=True),
        Case("token in the UI's cookie", params=(("key", "k"),), headers=[cookie(reader), rid],
             fast=True),
        Case("bearer first, cookie second", params=(("key", "k"),),
             headers=[bearer(reader), cookie("lrg_x_unknown"), rid], fast=True),
        Case("repeated key: the last counts", params=(("key", "a"), ("key", "user-3")),
             headers=admin, fast=True),
        Case("unicode key", params=(("key", "é/ü?&=#"),), headers=admin, fast=True),
        Case("longest key", params=(("key", "k" * 1024),), headers=admin, fast=True),
        Case("If-None-Match: current", headers=[*admin, ("If-None-Match", etag)], fast=True),
        Case("If-None-Match: *", headers=[*admin, ("If-None-Match", "*")], fast=True),
        Case("If-None-Match: list", headers=[*admin, ("If-None-Match", f'W/"0-0", {etag}')],
             fast=True),
        Case("If-None-Match: stale", headers=[*admin, ("If-None-Match", 'W/"0-0"')],
             fast=True),
        Case("repeated Authorization: the first counts",
             headers=[bearer(api.admin), bearer("lrg_x_unknown"), rid], fast=True),
        Case("no X-Request-ID header", headers=[bearer(api.admin)]),
        Case("repeated X-Request-ID: the first counts",
             headers=[bearer(api.admin), ("X-Request-ID", "a"), ("X-Request-ID", "b")],
             fast=True),
        Case("X-Request-ID cut at 64 bytes",
             headers=[bearer(api.admin), ("X-Request-ID", "r" * 70)], fast=True),
    ]
    statuses = compare(paths, cases)
    # Both answers of the channel are among them, and the polls got 304.
    bodies = {paths.normal.get(URL, params=(("key", f"user-{n}"),), headers=admin).json()["canary"]
              for n in range(12)}
    assert bodies == {True, False}
    assert statuses["If-None-Match: current"] == statuses["If-None-Match: *"] == 304
    assert statuses["If-None-Match: stale"] == 200
    # A request id outside ASCII (httpx cannot read it back: straight over ASGI) is echoed
    # byte for byte by both.
    headers = [(b"authorization", f"Bearer {api.admin}".encode()),
               (b"x-request-id", b"\xe9t\xe9")]
    fast, normal = (asgi_get(client.app, URL, headers) for client in (paths.fast, paths.normal))
    assert fast == normal
    assert fast[0] == 200 and fast[1][-1] == (b"x-request-id", b"\xe9t\xe9")


@BOTH
def test_refusals_and_errors_are_identical(api: Api, paths: Paths) -> None:
    other = api.token("reader", "globex")
    expiring = api.token("writer", expires_at=paths.clock[0] + timedelta(minutes=5))
    rid = ("X-Request-ID", "req-2")
    admin = [bearer(api.admin), rid]
    for token in (other, expiring):  # both sides know both tokens (cached) before the cases
        for client in (paths.fast, paths.normal):
            client.get(URL, headers=[bearer(token), rid])
    # The expiring token expires: in the database, and on the caches' wall clock.
    with transaction(make_session_factory(api.engine)) as session:
        session.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1))
                        .where(ApiToken.role == "writer"))
    paths.clock[0] += timedelta(minutes=5)
    cases = [
        Case("no token", headers=[rid]),
        Case("unknown token", headers=[bearer("lrg_x_unknown"), rid]),
        Case("malformed token", headers=[bearer("nonsense"), rid]),
        Case("empty bearer", headers=[("Authorization", "Bearer "), rid]),
        Case("another scheme", headers=[("Authorization", "Basic YWRtaW46YWRtaW4="), rid]),
        Case("unknown token in the cookie", headers=[cookie("lrg_x_unknown"), rid]),
        Case("expired token", headers=[bearer(expiring), rid]),
        Case("another namespace's token", headers=[bearer(other), rid]),
        Case("repeated Authorization: unknown first",
             headers=[bearer("lrg_x_unknown"), bearer(api.admin), rid]),
        Case("unknown channel", "/api/v1/resolve/acme/bot:staging", headers=admin),
        Case("unknown adapter", "/api/v1/resolve/acme/nope:prod", headers=admin),
        Case("bad channel name", "/api/v1/resolve/acme/bot:PROD!", headers=admin),
        Case("no channel", "/api/v1/resolve/acme/bot", headers=admin),
        Case("bad namespace", "/api/v1/resolve/ACME!/bot:prod", headers=admin),
        Case("too deep", "/api/v1/resolve/acme/bot:prod/x", headers=admin),
        Case("key too long", params=(("key", "k" * 1025),), headers=admin),
        Case("HEAD", headers=admin, method="HEAD"),
        Case("POST without a body", headers=admin, method="POST"),
        Case("the namespace form", "/api/v1/resolve/acme", headers=admin),
    ]
    statuses = compare(paths, cases)
    assert {statuses[c] for c in ("no token", "unknown token", "malformed token",
                                  "empty bearer", "another scheme",
                                  "unknown token in the cookie", "expired token",
                                  "repeated Authorization: unknown first")} == {401}
    assert statuses["another namespace's token"] == 403
    assert statuses["unknown channel"] == statuses["unknown adapter"] == 404
    assert statuses["key too long"] == 422


@BOTH
def test_answers_without_auth_are_identical(api: Api, paths: Paths) -> None:
    """Embedded mode (no token needed): no token is the local admin on both paths; a token
    presented is still checked."""
    for state in paths.states:
        state.auth_required = False
    rid = ("X-Request-ID", "req-3")
    statuses = compare(paths, [
        Case("no token", params=(("key", "k"),), headers=[rid], fast=True),
        Case("another scheme", headers=[("Authorization", "Basic YWRtaW46YWRtaW4="), rid],
             fast=True),
        Case("unknown token", headers=[bearer("lrg_x_unknown"), rid]),
        Case("unknown channel", "/api/v1/resolve/acme/bot:staging", headers=[rid]),
    ])
    assert statuses == {"no token": 200, "another scheme": 200, "unknown token": 401,
                        "unknown channel": 404}
