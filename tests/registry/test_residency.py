"""The residency ledger through its service, on SQLite and PostgreSQL: heartbeats (whole,
idempotent), verdicts with both fingerprints, drift (missing, extra, failed, bytes differ,
incompatible base), drains, audit events and webhooks on transitions only, ``where``, the
retirement of silent replicas and the desired set's revision."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.errors import BadRequest, NotFound
from registry.models import AdapterVersion, AuditEvent, PoolReplica, ServingPool, WebhookEvent
from registry.services import desired_sets, pools, residency, webhooks
from registry.services.pools import PoolChanges
from registry.services.residency import Report, Reported
from registry.statuses import AdapterState, BaseVerdict, DriftKind
from tests.registry.test_pools import ACTOR, Push, make_pool, promote, push, store  # noqa: F401
from tests.registry.test_webhooks import LOCAL

LOADED = AdapterState.LOADED


def loaded(version: AdapterVersion, digest: str | None = None) -> Reported:
    return Reported(desired_sets.served(version), LOADED, digest or version.manifest_digest)


def report(pool: ServingPool, *adapters: Reported, fingerprint: str | None = "pool",
           **kw: Any) -> Report:
    """A replica's report; ``fingerprint="pool"``: the pool base's own."""
    fp = pool.base.fingerprint if fingerprint == "pool" else fingerprint
    return Report(engine="vllm", agent_version="0.1", interval_seconds=10, cache_bytes=1000,
                  adapters=list(adapters), base_fingerprint=fp, **kw)


def actions(session: Session, prefix: str = "pool.replica") -> list[str]:
    return [a for a in session.scalars(select(AuditEvent.action).order_by(AuditEvent.id))
            if a.startswith(prefix)]


def kinds(view: residency.ReplicaView) -> list[tuple[str, str]]:
    return sorted((d.kind.value, d.served_name) for d in view.drift)


@pytest.fixture
def served(session: Session, store: LocalBlobStore, push: Push  # noqa: F811
           ) -> tuple[ServingPool, list[AdapterVersion]]:
    """acme/gpu-a serving acme/bot:prod at v1; v2 and v3 pushed, not served."""
    versions = [push(), push(), push()]
    pool = make_pool(session, max_loras=4)
    promote(session, versions[0])
    pools.bind(session, ACTOR, store, pool, "acme/bot:prod")
    return pool, versions


def test_heartbeat_records_the_whole_residency_and_is_idempotent(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, v2, _) = served
    t0 = datetime.now().astimezone()
    view = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(
        pool, loaded(v1), engine_url="http://10.0.0.5:8000"), t0)
    assert (view.live, view.loaded, view.pending, view.drift) == (
        True, [desired_sets.served(v1)], [], [])
    assert view.row.verdict == BaseVerdict.COMPATIBLE and view.refs == {
        desired_sets.served(v1): "acme/bot@1"}
    since = view.row.adapters[0].since
    again = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(
        pool, loaded(v1), engine_url="http://10.0.0.5:8000"), t0 + timedelta(seconds=10))
    assert again.row.adapters[0].since == since  # the same state: since is kept
    assert again.row.last_heartbeat_at == t0 + timedelta(seconds=10)
    assert again.row.first_heartbeat_at == t0
    assert actions(session) == ["pool.replica_verdict"]  # the first heartbeat only
    assert session.scalars(select(AuditEvent.payload).where(
        AuditEvent.action == "pool.replica_verdict")).one()["from"] is None

    loading = Reported(desired_sets.served(v2), AdapterState.LOADING)
    third = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loading),
                                t0 + timedelta(seconds=20))
    assert [a.served_name for a in third.row.adapters] == [desired_sets.served(v2)]
    assert kinds(third) == []  # v1 missing but within the grace: pending; v2 loading is fine
    assert third.pending == [desired_sets.served(v1)]
    fourth = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loaded(v2)),
                                 t0 + timedelta(seconds=25))
    assert fourth.row.adapters[0].since == t0 + timedelta(seconds=25)  # loading -> loaded
    status = residency.status(session, pool, t0 + timedelta(seconds=25 + 31))
    assert not status.replicas[0].live  # silent for more than 3 x 10 s
    assert [r.row.replica_id for r in status.replicas] == ["gpu-0"]


def test_drift_missing_extra_failed_and_bytes_differ(
        session: Session, push: Push, store: LocalBlobStore,  # noqa: F811
        served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, v2, v3) = served
    pools.pin(session, ACTOR, store, pool, "acme/bot@2")
    other = push("other/bot")
    t0 = datetime.now().astimezone()
    forged = loaded(v2, digest=v3.manifest_digest)
    failed = Reported(desired_sets.served(v1), AdapterState.FAILED,
                      error="ValueError: LoRA rank 64 is greater than max_lora_rank 16")
    extra = loaded(v3)
    foreign = loaded(other)
    made_up = Reported("acme~bot~9~0123456789ab", LOADED, "0" * 64)
    view = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(
        pool, forged, failed, extra, foreign, made_up), t0)
    assert kinds(view) == sorted([
        ("bytes_differ", desired_sets.served(v2)), ("failed", desired_sets.served(v1)),
        ("extra", desired_sets.served(v3)), ("extra", desired_sets.served(other)),
        ("bytes_differ", "acme~bot~9~0123456789ab")])
    assert view.loaded == []  # extra names, other bytes and failures are no loads
    byname = {d.served_name: d for d in view.drift}
    assert "LoRA rank 64" in byname[desired_sets.served(v1)].detail
    assert v2.manifest_digest in byname[desired_sets.served(v2)].detail
    assert v3.manifest_digest in byname[desired_sets.served(v2)].detail

    later = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool),
                                t0 + timedelta(seconds=31))
    assert kinds(later) == [("missing", desired_sets.served(v1)),
                            ("missing", desired_sets.served(v2))]
    assert residency.status(session, pool, t0 + timedelta(seconds=31)).drift_versions == sorted(
        [desired_sets.served(v1), desired_sets.served(v2)])


def test_incompatible_base_records_both_fingerprints_and_fixing_recovers(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, _, _) = served
    hook = webhooks.create(session, "acme", "http://127.0.0.1:9/x",
                           ["pool.incompatible_base", "pool.drift"], created_by="t", **LOCAL)
    t0 = datetime.now().astimezone()
    wrong = "f" * 64
    view = residency.heartbeat(session, ACTOR, pool, "gpu-0",
                               report(pool, loaded(v1), fingerprint=wrong), t0)
    assert view.row.verdict == BaseVerdict.INCOMPATIBLE and view.row.base_fingerprint == wrong
    assert kinds(view) == [("incompatible_base", desired_sets.served(v1))]
    assert view.loaded == [] and view.pending == []  # it must load nothing, so misses nothing
    event = session.scalars(select(AuditEvent).where(
        AuditEvent.action == "pool.replica_verdict")).one()
    assert (event.payload["replica_fingerprint"], event.payload["pool_fingerprint"]) == (
        wrong, pool.base.fingerprint)
    residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, fingerprint=wrong),
                        t0 + timedelta(seconds=5))
    fixed = residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loaded(v1)),
                                t0 + timedelta(seconds=10))
    assert fixed.row.verdict == BaseVerdict.COMPATIBLE and kinds(fixed) == []
    sent = [e.event_type for e in session.scalars(
        select(WebhookEvent).where(WebhookEvent.namespace == "acme").order_by(WebhookEvent.id))]
    assert sent == ["pool.incompatible_base", "pool.drift", "pool.drift"]  # in, drift, cleared
    assert actions(session) == ["pool.replica_verdict", "pool.replica_drift",
                                "pool.replica_drift", "pool.replica_verdict"]
    assert hook.id is not None


def test_unknown_until_fingerprinted_and_webhooks_on_transitions_only(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, _, v3) = served
    webhooks.create(session, "acme", "http://127.0.0.1:9/x", ["pool.drift"], created_by="t",
                    **LOCAL)
    t0 = datetime.now().astimezone()
    first = residency.heartbeat(session, ACTOR, pool, "gpu-0",
                                report(pool, loaded(v1), loaded(v3), fingerprint=None), t0)
    assert first.row.verdict == BaseVerdict.UNKNOWN
    for i in range(1, 4):  # the same drift, heartbeat after heartbeat: nothing new
        residency.heartbeat(session, ACTOR, pool, "gpu-0",
                            report(pool, loaded(v1), loaded(v3), fingerprint=None),
                            t0 + timedelta(seconds=i))
    residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loaded(v1)),
                        t0 + timedelta(seconds=5))
    events = list(session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))
    assert [(e.event_type, e.payload["data"]["resolved"]) for e in events] == [
        ("pool.drift", False), ("pool.drift", True)]
    assert events[0].payload["data"]["drift"][0]["kind"] == DriftKind.EXTRA
    assert actions(session) == ["pool.replica_verdict", "pool.replica_drift",
                                "pool.replica_verdict", "pool.replica_drift"]


def test_a_drained_version_is_not_extra_until_its_drain_ends(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, v2, _) = served
    pools.update_pool(session, ACTOR, pool, PoolChanges(drain_seconds=60))
    promote(session, v2)  # v1 leaves: draining for 60 s
    now = datetime.now().astimezone()
    want = residency.expected(session, pool, now)
    assert list(want.draining) == [desired_sets.served(v1)]
    both = report(pool, loaded(v1), loaded(v2))
    view = residency.heartbeat(session, ACTOR, pool, "gpu-0", both, now)
    assert kinds(view) == [] and sorted(view.loaded) == sorted(
        [desired_sets.served(v1), desired_sets.served(v2)])
    over = residency.heartbeat(session, ACTOR, pool, "gpu-0", both,
                               now + timedelta(seconds=60 + 31))
    assert kinds(over) == [("extra", desired_sets.served(v1))]


def test_where_lists_the_replicas_of_the_versions_namespace(
        session: Session, push: Push,  # noqa: F811
        served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, v2, _) = served
    other_pool = make_pool(session, "other/gpu-z")
    t0 = datetime.now().astimezone()
    residency.heartbeat(session, ACTOR, pool, "gpu-1", report(pool, loaded(v1)), t0)
    residency.heartbeat(session, ACTOR, pool, "gpu-0", report(
        pool, loaded(v1, digest="e" * 64)), t0)
    residency.heartbeat(session, ACTOR, other_pool, "z-0", report(other_pool, loaded(v1)), t0)
    holders = residency.where(session, v1, t0)
    assert [(h.pool.full_name, h.view.row.replica_id, h.adapter.digest == v1.manifest_digest)
            for h in holders] == [("acme/gpu-a", "gpu-0", False), ("acme/gpu-a", "gpu-1", True)]
    assert residency.where(session, v2, t0) == []
    assert [p.full_name for p in residency.pools_holding(session, v1, t0)[0]] == ["acme/gpu-a"]


def test_silent_replicas_retire_and_can_be_forgotten(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, _, _) = served
    t0 = datetime.now().astimezone()
    for name in ("gpu-0", "gpu-1", "gpu-2"):
        residency.heartbeat(session, ACTOR, pool, name, report(pool, loaded(v1)), t0)
    residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loaded(v1)),
                        t0 + residency.RETIRE_AFTER + timedelta(seconds=1))
    assert [r.replica_id for r in residency.replicas(session, pool)] == ["gpu-0"]
    retired = session.scalars(select(AuditEvent).where(
        AuditEvent.action == "pool.replicas_retired")).one()
    assert retired.payload["replicas"] == ["gpu-1", "gpu-2"]
    residency.forget(session, ACTOR, pool, "gpu-0")
    assert session.scalars(select(PoolReplica)).all() == []
    with pytest.raises(NotFound):
        residency.forget(session, ACTOR, pool, "gpu-0")


@pytest.mark.parametrize(("replica", "change", "match"), [
    ("bad id!", {}, "replica id"),
    ("gpu-0", {"base_fingerprint": "ABC"}, "64 lower-case hex"),
    ("gpu-0", {"engine": "Nope Engine"}, "engine"),
    ("gpu-0", {"engine_url": "javascript:alert(1)"}, "http"),
    ("gpu-0", {"interval_seconds": 0}, "interval_seconds"),
    ("gpu-0", {"adapters": "twice"}, "once"),
    ("gpu-0", {"adapters": [Reported("acme~bot~1~0123456789ab", LOADED)]}, "digest"),
    ("gpu-0", {"adapters": [Reported("acme~bot~1~0123456789ab", LOADED, "xyz")]}, "digest"),
])
def test_bad_reports_are_refused_and_change_nothing(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]], replica: str,
        change: dict[str, Any], match: str) -> None:
    pool, (v1, _, _) = served
    values = report(pool)
    if change.get("adapters") == "twice":
        change = {"adapters": [loaded(v1), loaded(v1)]}
    for key, value in change.items():
        setattr(values, key, value)
    with pytest.raises(BadRequest, match=match):
        residency.heartbeat(session, ACTOR, pool, replica, values)
    assert session.scalars(select(PoolReplica)).all() == []


def test_the_revision_moves_with_the_desired_set_only(
        session: Session, served: tuple[ServingPool, list[AdapterVersion]]) -> None:
    pool, (v1, v2, _) = served
    now = datetime.now().astimezone()
    first = desired_sets.revision(session, pool, now)
    residency.heartbeat(session, ACTOR, pool, "gpu-0", report(pool, loaded(v1)), now)
    assert desired_sets.revision(session, pool, now) == first  # heartbeats are not the set
    promote(session, v2)
    promoted = desired_sets.revision(session, pool, now)
    assert promoted != first
    drained = now + timedelta(seconds=pool.drain_seconds + 1)
    assert desired_sets.revision(session, pool, drained) != promoted  # v1's drain ended
    pools.update_pool(session, ACTOR, pool, PoolChanges(model_id="/models/other"))
    assert desired_sets.revision(session, pool, now) != promoted
