"""Resolve over the API in-process: the fast path in front of the app answers exactly what the
app answers, hands everything else to it, and the resolve state never serves a channel staler
than ``staleness`` nor a state older than one a change made here committed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.exc import InternalError, OperationalError
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from registry.api.app import create_app
from registry.api.fast_path import ResolveFastPath
from registry.api.routes import channels as routes_channels
from registry.db import make_engine, make_session_factory, transaction
from registry.errors import Unauthenticated
from registry.services import bases
from registry.services.context import Actor
from registry.services.resolve import Snapshot
from registry.services.resolve_state import ResolveState
from registry.services.tokens import Principal
from registry.web.context import State
from registry.web.token_cache import TokenCache
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, push
from tests.registry.test_bases import entries, registration

URL = "/api/v1/resolve/acme/bot:prod"


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands in for the app behind the fast path: any request that reaches it gets 599."""
    await send({"type": "http.response.start", "status": 599, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def state_of(api: Api) -> State:
    state: State = api.client.app.state.lorareg  # type: ignore[attr-defined]
    return state


def promoted(api: Api, versions: int = 2) -> None:
    """acme/bot with ``versions`` versions on a registered base, @1 stable on prod."""
    with transaction(make_session_factory(api.engine)) as session:
        bases.register_base(session, Actor("t"), registration(entries()))
    for seed in range(versions):
        assert push(api, api.admin, seed=seed).status_code == 201
    r = api.client.post("/api/v1/adapters/acme/bot/channels/prod/promote",
                        json={"version": 1, "now": True}, headers=h(api.admin))
    assert r.status_code == 200, r.text


def frozen_caches(api: Api) -> None:
    """Resolve state and token cache whose clock stands still: what the app just read stays
    servable by the fast path however slow the machine is between two requests (else a stall
    past the staleness bound, 0.75 s, hands the request to the app: 599 here)."""
    state = state_of(api)
    state.resolve = ResolveState(state.sessions, clock=lambda: 0.0)
    state.tokens = TokenCache(clock=lambda: 0.0)


def fast_only(api: Api) -> TestClient:
    """A client of the fast path alone, over the app's state (its caches)."""
    return TestClient(ResolveFastPath(refuse, state_of(api)), raise_server_exceptions=True)


def test_fast_path_answers_what_the_app_answers(api: Api) -> None:
    promoted(api)
    frozen_caches(api)
    slow = api.client.get(URL, params={"key": "user-1"}, headers=h(api.admin))
    assert slow.status_code == 200, slow.text
    fast = fast_only(api).get(URL, params={"key": "user-1"},
                              headers={**h(api.admin), "X-Request-ID": "req-7"})
    assert fast.status_code == 200
    assert fast.content == slow.content and fast.json()["ref"] == "acme/bot@1"
    assert fast.headers["etag"] == slow.headers["etag"]
    assert fast.headers["content-type"] == "application/json"
    assert fast.headers["cache-control"] == "no-cache"
    assert fast.headers["x-request-id"] == "req-7"
    assert fast_only(api).get(URL, headers=h(api.admin)).headers["x-request-id"]

    # A poll whose ETag still holds gets 304 from either path.
    etag = {"If-None-Match": slow.headers["etag"]}
    assert api.client.get(URL, headers={**h(api.admin), **etag}).status_code == 304
    assert fast_only(api).get(URL, headers={**h(api.admin), **etag}).status_code == 304
    assert fast_only(api).get(URL, headers={**h(api.admin), "If-None-Match": 'W/"0-0"'}
                              ).status_code == 200
    listed = {"If-None-Match": f'W/"0-0", {slow.headers["etag"]}'}
    assert api.client.get(URL, headers={**h(api.admin), **listed}).status_code == 304
    assert fast_only(api).get(URL, headers={**h(api.admin), **listed}).status_code == 304

    # The fast path's requests are counted under the route like the app's.
    metrics = api.client.get("/metrics", headers=h(api.admin)).text
    line = next(ln for ln in metrics.splitlines() if ln.startswith(
        'lorareg_http_requests_total{method="GET",route="/api/v1/resolve/{ns}/{target}",'
        'status="200"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 4


def test_fast_path_hands_everything_else_to_the_app(api: Api) -> None:
    promoted(api)
    frozen_caches(api)
    reader_other = api.token("reader", "globex")
    assert api.client.get(URL, headers=h(api.admin)).status_code == 200  # caches warm
    fast = fast_only(api)
    refused = [
        fast.get(URL),  # no token, and this app requires one
        fast.get(URL, headers=h("lrg_x_unknown")),  # a token not in the cache
        fast.get(URL, headers=h(reader_other)),  # cached below, but not for namespace acme
        fast.get(URL, headers={"Authorization": "Basic abc"}),
        fast.get(URL, params={"key": "k" * 1025}, headers=h(api.admin)),
        fast.get("/api/v1/resolve/acme/bot:staging", headers=h(api.admin)),  # not cached
        fast.get("/api/v1/resolve/acme/bot", headers=h(api.admin)),  # no channel
        fast.get("/api/v1/resolve/acme/bot:prod/x", headers=h(api.admin)),
        fast.post(URL, headers=h(api.admin)),
        fast.get("/api/v1/resolve/acme", headers=h(api.admin)),  # the namespace form
    ]
    assert api.client.get(URL, headers=h(reader_other)).status_code == 403
    refused.append(fast.get(URL, headers=h(reader_other)))
    assert [r.status_code for r in refused] == [599] * len(refused)
    # Repeated headers: the first counts, as in the app (a gateway appending its own token
    # does not lend its rights to the caller).
    twice = [("authorization", "Bearer lrg_x_unknown"), ("authorization", f"Bearer {api.admin}")]
    assert fast.get(URL, headers=twice).status_code == 599
    assert_problem(api.client.get(URL, headers=twice), 401)
    assert fast.get(URL, headers=list(reversed(twice))).status_code == 200

    # What the app then answers for them.
    assert_problem(api.client.get(URL), 401)
    assert_problem(api.client.get(URL, headers=h("lrg_x_unknown")), 401)
    assert_problem(api.client.get(URL, headers=h(reader_other)), 403)
    assert api.client.get(URL, params={"key": "k" * 1025}, headers=h(api.admin)
                          ).status_code == 422
    assert_problem(api.client.get("/api/v1/resolve/acme/bot:staging", headers=h(api.admin)),
                   404)
    assert_problem(api.client.get("/api/v1/resolve/acme/bot", headers=h(api.admin)), 400)


def test_promotion_elsewhere_is_served_once_polled_and_never_past_the_bound(api: Api) -> None:
    """A change made by another replica (no invalidation here) is served once a poll of the
    change feed lands; a state whose last poll began ``staleness`` ago is not served at all."""
    promoted(api)
    now = [0.0]
    state = state_of(api)
    state.resolve = ResolveState(state.sessions, clock=lambda: now[0], background=False)
    state.resolve.sync()  # the full load
    fast = fast_only(api)
    assert fast.get(URL, headers=h(api.admin)).json()["version"] == 1

    replica = TestClient(create_app(state.settings, engine=api.engine, store=state.store,
                                    host="0.0.0.0"))  # another API process, same database
    r = replica.post("/api/v1/adapters/acme/bot/channels/prod/promote",
                     json={"version": 2, "now": True}, headers=h(api.admin))
    assert r.status_code == 200, r.text
    now[0] = 0.7  # no poll yet, within the bound: the state as of t=0 is still served
    assert fast.get(URL, headers=h(api.admin)).json()["version"] == 1
    state.resolve.sync()  # a poll that began at t=0.7 sees the promotion
    assert state.resolve.stats.full_loads == 1 and state.resolve.stats.polls == 1
    assert fast.get(URL, headers=h(api.admin)).json()["version"] == 2

    now[0] = 1.45  # the last poll began 0.75 s ago: not served from memory any more
    assert fast.get(URL, headers=h(api.admin)).status_code == 599
    assert api.client.get(URL, headers=h(api.admin)).json()["version"] == 2  # from the db
    assert fast.get(URL, headers=h(api.admin)).json()["version"] == 2  # read at t=1.45


def test_an_invalidation_during_a_read_is_not_undone(api: Api) -> None:
    """A read that began before a change here committed does not make the channel servable:
    only a read that began after the invalidation does."""
    promoted(api)
    state = state_of(api)
    resolve: ResolveState

    def sessions_invalidating_midway(*args: Any, **kw: Any) -> Any:
        resolve.invalidate("acme/bot", "prod")  # a change lands while the read runs
        return state.sessions(*args, **kw)

    resolve = ResolveState(sessions_invalidating_midway, background=False)  # type: ignore[arg-type]
    snap = resolve.get("acme/bot", "prod")
    assert snap.stable is not None and snap.stable.version == 1  # the caller gets its answer
    assert resolve.serve("acme/bot", "prod") is None  # but it is not served to others
    resolve = ResolveState(state.sessions, background=False)
    assert resolve.get("acme/bot", "prod") is resolve.serve("acme/bot", "prod")


def test_a_failed_poll_keeps_the_state_until_the_bound_then_reloads_in_full(api: Api) -> None:
    promoted(api)
    state = state_of(api)
    now = [0.0]
    resolve = ResolveState(state.sessions, clock=lambda: now[0], background=False)
    resolve.sync()
    served = resolve.serve("acme/bot", "prod")
    assert served is not None

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("database down")

    resolve._feed = broken  # type: ignore[assignment]
    now[0] = 0.5
    with pytest.raises(RuntimeError):
        resolve.sync()
    assert resolve.serve("acme/bot", "prod") is served  # within the bound of the last poll
    now[0] = 0.75
    assert resolve.serve("acme/bot", "prod") is None  # past it: the caller reads the db
    resolve._feed = state.sessions
    resolve.sync()  # the next poll after a failure is a full load
    assert resolve.stats.full_loads == 2 and resolve.stats.polls == 0
    again = resolve.serve("acme/bot", "prod")
    assert again is not None and (again.revision, again.stable) == (served.revision, served.stable)


def test_token_cache_rechecks_in_the_background_and_drops_revoked_tokens() -> None:
    now = [0.0]
    cache = TokenCache(ttl=5.0, clock=lambda: now[0])
    alice = Principal(name="alice", role="reader", namespace="acme")
    checks: list[str] = []
    release = threading.Event()
    revoked = [False]

    def recheck(token: str) -> Principal:
        checks.append(token)
        release.wait(10)
        if revoked[0]:
            raise Unauthenticated("token revoked")
        return alice

    def settle() -> None:
        deadline = time.monotonic() + 10
        while cache._checking:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    cache.put("t1", alice)
    assert cache.get("t1", recheck) is alice and checks == []  # young: no check
    now[0] = 3.0  # past half the TTL: served, and checked once in the background
    assert all(cache.get("t1", recheck) is alice for _ in range(20))
    release.set()
    settle()
    assert checks == ["t1"]
    now[0] = 7.0  # the check refreshed the entry at t=3: still valid at 7
    assert cache.get("t1") is alice

    revoked[0] = True
    now[0] = 6.0  # past half again: the check finds the token revoked and drops it
    assert cache.get("t1", recheck) is alice
    settle()
    assert cache.get("t1", recheck) is None and checks == ["t1", "t1"]
    cache.put("t2", alice)
    now[0] = 12.0  # expired without any check: not served
    assert cache.get("t2") is None


def test_a_promotion_is_resolved_at_once_even_if_resolve_loads_meanwhile(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolve that loads the channel just before the promotion commits reads the old state;
    the cache must not keep it once the promotion is committed."""
    promoted(api)
    state = state_of(api)
    assert api.client.get(URL, headers=h(api.admin)).json()["version"] == 1
    real, armed = routes_channels.channels.promote_now, [False]

    def promote(*args: Any, **kw: Any) -> Any:
        armed[0] = True
        return real(*args, **kw)

    def load_before_commit(session: Session) -> None:
        if not armed[0]:
            return
        armed[0] = False
        loader = threading.Thread(target=state.resolve._read, args=("acme/bot", "prod"))
        loader.start()  # another request's read, on its own connection: it sees v1
        loader.join(10)
        snap = state.resolve.serve("acme/bot", "prod")
        assert snap is not None and snap.stable is not None and snap.stable.version == 1

    monkeypatch.setattr(routes_channels.channels, "promote_now", promote)
    event.listen(Session, "before_commit", load_before_commit)
    try:
        r = api.client.post("/api/v1/adapters/acme/bot/channels/prod/promote",
                            json={"version": 2, "now": True}, headers=h(api.admin))
    finally:
        event.remove(Session, "before_commit", load_before_commit)
    assert r.status_code == 200, r.text
    assert armed == [False]
    assert api.client.get(URL, headers=h(api.admin)).json()["version"] == 2
    assert fast_only(api).get(URL, headers=h(api.admin)).json()["version"] == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_read_only_transactions_refuse_writes_on_both_backends(fresh_db_url: str) -> None:
    engine = make_engine(fresh_db_url)
    sessions = make_session_factory(engine)
    try:
        with pytest.raises(OperationalError if engine.dialect.name == "sqlite"
                           else InternalError), transaction(sessions, readonly=True) as session:
            session.execute(text("UPDATE namespaces SET description = 'x'"))
        with transaction(sessions) as session:  # the pooled connection writes again
            session.execute(text("UPDATE namespaces SET description = 'x'"))
        with transaction(sessions, readonly=True) as session:
            assert session.execute(text("SELECT count(*) FROM namespaces")).scalar() is not None
        if engine.dialect.name == "sqlite":  # the mode is set once per change, not per BEGIN
            seen: list[str] = []

            def record(*args: object) -> None:
                seen.append(str(args[2]))

            event.listen(engine, "before_cursor_execute", record)
            for readonly in (True, True, False, False, True):
                with transaction(sessions, readonly=readonly) as session:
                    session.execute(text("SELECT 1"))
            event.remove(engine, "before_cursor_execute", record)
            assert [q for q in seen if q.startswith("PRAGMA")] == [
                "PRAGMA query_only=0", "PRAGMA query_only=1"]
            with pytest.raises(OperationalError), transaction(sessions, readonly=True) as session:
                session.execute(text("UPDATE namespaces SET description = 'y'"))
    finally:
        engine.dispose()


def test_a_slow_read_does_not_overwrite_a_later_one(api: Api) -> None:
    """Monotonic: whoever read it last, a channel's snapshot only moves to later revisions."""
    promoted(api)
    state = state_of(api)
    resolve = ResolveState(state.sessions, background=False)
    first = resolve.get("acme/bot", "prod")
    later = Snapshot(first.adapter, first.channel, first.channel_id, 99, None, first.stable,
                     None, 0, 5.0)
    resolve._apply([later], 0)  # a read that landed first, of a later revision
    assert resolve._read("acme/bot", "prod") is later  # the slower read's older state: not kept
    resolve.sync()  # nor by the feed's full load
    assert resolve.serve("acme/bot", "prod") is later
