"""Channels, rollouts, gates, rollback and resolve through the services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry.blobs import LocalBlobStore
from registry.errors import BadRequest, Conflict, IncompatibleBase, PermissionDenied
from registry.models import AdapterVersion, AuditEvent, Channel, ChannelEvent, Rollout
from registry.services import adapters, bases, channels, gates, live, rollouts, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.jobs import db_now
from registry.services.metrics import MetricInput
from registry.services.resolve import Snapshot, Target, bucket, choose
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("carol")
GATES = ["eval.acc >= stable - 0.01", "live.error_rate <= 0.02",
         "live.latency_p95_ms <= stable * 1.1"]

Push = Callable[..., AdapterVersion]


@pytest.fixture
def push(session: Session, tmp_path: Path) -> Push:
    store = LocalBlobStore(tmp_path / "blobs")
    bases.register_base(session, ACTOR, registration(entries()))
    seeds = iter(range(1000))

    def _push(acc: float = 0.9, rev: str = "abc") -> AdapterVersion:
        files = store_files(session, store, adapter_files(seed=next(seeds)))
        req = PushRequest("acme/bot", files, "tiny/llama", rev, metrics=[MetricInput("acc", acc)])
        return versions.push_version(session, store, ACTOR, req).version

    return _push


def channel(session: Session, name: str = "prod") -> Channel:
    return channels.ensure_channel(session, ACTOR, adapters.get_adapter(session, "acme/bot"),
                                   name)


def bake(session: Session, rollout: Rollout) -> list[int]:
    """Let the current step's interval elapse, then run one controller tick."""
    session.execute(update(Rollout).where(Rollout.id == rollout.id).values(
        next_eval_at=db_now(session) - timedelta(seconds=1)))
    acted = rollouts.tick(session)
    session.refresh(rollout)
    return acted


def report(session: Session, version: AdapterVersion, requests: int, errors: int,
           p95: float) -> None:
    live.record(session, [live.LiveReport(version, requests, errors,
                                          {"latency_p95_ms": p95})], "router")


def start_canary(session: Session, push: Push, **spec: object) -> tuple[Rollout, Channel,
                                                                         AdapterVersion,
                                                                         AdapterVersion]:
    v1, v2 = push(0.90), push(0.91)
    prod = channel(session)
    channels.promote_now(session, prod, v1, Change(ACTOR))
    params = {"steps": [10, 50, 100], "interval_seconds": 60, "gates": GATES, **spec}
    rollout = rollouts.start(session, prod, v2, Change(ACTOR), RolloutSpec(**params))  # type: ignore[arg-type]
    return rollout, prod, v1, v2


def actions(session: Session, prod: Channel) -> list[str]:
    return list(session.scalars(select(ChannelEvent.action).where(
        ChannelEvent.channel_id == prod.id).order_by(ChannelEvent.id)))


def test_rollout_walks_all_steps_to_promotion(session: Session, push: Push) -> None:
    rollout, prod, v1, v2 = start_canary(session, push)
    assert (rollout.status, prod.canary_weight_bp, prod.canary_version_id) == (
        "progressing", 1000, v2.id)
    for step_weight in (5000, 10000):
        report(session, v1, 1000, 5, 100.0)
        report(session, v2, 1000, 4, 104.0)
        assert bake(session, rollout) == [rollout.id]
        if step_weight < 10000:
            assert prod.canary_weight_bp == step_weight
    report(session, v1, 1000, 5, 100.0)
    report(session, v2, 1000, 4, 104.0)
    bake(session, rollout)
    assert rollout.status == "promoted"
    assert prod.stable_version_id == v2.id and prod.canary_version_id is None
    assert actions(session, prod)[-1] == "rollout.promoted"
    evaluated = rollouts.evaluations(session, rollout)
    assert {e.verdict for e in evaluated} == {"pass"} and len(evaluated) == 3 * 3


def test_breaching_live_gate_aborts_and_keeps_stable(session: Session, push: Push) -> None:
    rollout, prod, v1, v2 = start_canary(session, push, max_failures=1)
    for attempt in range(2):
        report(session, v1, 1000, 5, 100.0)
        report(session, v2, 1000, 90, 100.0)  # 9% errors
        bake(session, rollout)
        if attempt == 0:
            assert rollout.status == "progressing" and rollout.failures == 1
    assert rollout.status == "aborted" and "error_rate" in rollout.reason
    assert prod.stable_version_id == v1.id and prod.canary_version_id is None
    assert prod.canary_weight_bp == 0
    assert actions(session, prod)[-2:] == ["rollout.gate_failed", "rollout.aborted"]
    audit_reasons = list(session.scalars(select(AuditEvent.payload).where(
        AuditEvent.action == "channel.rollout.aborted")))
    assert "error_rate" in audit_reasons[-1]["reason"]
    failed = [e for e in rollouts.evaluations(session, rollout) if e.verdict == "fail"]
    assert failed and failed[0].value == pytest.approx(0.09) and failed[0].threshold == 0.02


def test_no_live_data_is_inconclusive_then_resumes(session: Session, push: Push) -> None:
    rollout, prod, v1, v2 = start_canary(session, push)
    bake(session, rollout)
    assert (rollout.status, rollout.paused_by) == ("paused", "analysis")
    assert prod.canary_weight_bp == 1000  # holds its weight while waiting for data
    report(session, v1, 1000, 5, 100.0)
    report(session, v2, 1000, 5, 100.0)
    bake(session, rollout)
    assert rollout.status == "progressing" and prod.canary_weight_bp == 5000


def test_manual_pause_resume_abort(session: Session, push: Push) -> None:
    rollout, prod, v1, _ = start_canary(session, push)
    rollouts.pause(session, rollout, Change(ACTOR, reason="investigating"))
    assert rollout.status == "paused" and bake(session, rollout) == []
    with pytest.raises(Conflict):
        rollouts.pause(session, rollout, Change(ACTOR))
    rollouts.resume(session, rollout, Change(ACTOR))
    assert rollout.status == "progressing"
    rollouts.abort(session, rollout, Change(ACTOR, reason="by hand"))
    assert rollout.status == "aborted" and prod.stable_version_id == v1.id
    with pytest.raises(Conflict):
        rollouts.abort(session, rollout, Change(ACTOR))


def test_deadline_aborts(session: Session, push: Push) -> None:
    rollout, prod, v1, _ = start_canary(session, push, deadline_seconds=60)
    session.execute(update(Rollout).where(Rollout.id == rollout.id).values(
        deadline_at=db_now(session) - timedelta(seconds=1)))
    bake(session, rollout)
    assert rollout.status == "aborted" and "deadline" in rollout.reason
    assert prod.stable_version_id == v1.id and prod.canary_weight_bp == 0


def test_rollback_to_previous_and_named(session: Session, push: Push) -> None:
    v1, v2, v3 = push(), push(), push()
    prod = channel(session)
    for v in (v1, v2, v3):
        channels.promote_now(session, prod, v, Change(ACTOR))
    rollouts.rollback(session, prod, Change(ACTOR, reason="bad answers"))
    assert prod.stable_version_id == v2.id
    rollouts.rollback(session, prod, Change(ACTOR), to_number=v1.number)
    assert prod.stable_version_id == v1.id
    assert actions(session, prod)[-2:] == ["rollback", "rollback"]
    last = session.scalars(select(ChannelEvent).order_by(ChannelEvent.id.desc())).first()
    assert last is not None and (last.from_stable, last.to_stable) == (v2.number, v1.number)


def test_rollback_during_canary_aborts_it(session: Session, push: Push) -> None:
    rollout, prod, v1, _ = start_canary(session, push)
    with pytest.raises(Conflict, match="no previous"):
        rollouts.rollback(session, prod, Change(ACTOR))
    rollouts.rollback(session, prod, Change(ACTOR), to_number=v1.number)
    assert rollout.status == "aborted" and prod.canary_version_id is None


def test_compare_and_swap(session: Session, push: Push) -> None:
    v1, v2 = push(), push()
    prod = channel(session)
    rev = prod.revision
    channels.promote_now(session, prod, v1, Change(ACTOR, expect_revision=rev))
    with pytest.raises(Conflict) as err:
        channels.promote_now(session, prod, v2, Change(ACTOR, expect_revision=rev))
    assert err.value.extra["current_revision"] == rev + 1
    assert prod.stable_version_id == v1.id


def test_preconditions(session: Session, push: Push) -> None:
    v1, v2 = push(), push()
    prod = channel(session)
    versions.yank(session, ACTOR, versions.Ref("acme", "bot", version=v2.number), "bad")
    with pytest.raises(Conflict, match="yanked"):
        channels.promote_now(session, prod, v2, Change(ACTOR))
    channels.promote_now(session, prod, v1, Change(ACTOR))
    # Another base with other weights: refused unless switching on purpose.
    other = entries()
    other[0] = type(other[0])(other[0].name, other[0].dtype, other[0].shape, "1" * 64)
    bases.register_base(session, ACTOR, registration(other, rev="v2"))
    v3 = push(rev="v2")
    with pytest.raises(IncompatibleBase, match="new-base"):
        channels.promote_now(session, prod, v3, Change(ACTOR))
    channels.promote_now(session, prod, v3, Change(ACTOR), new_base=True)
    # An unverified version (base never registered) is refused.
    v4 = push(rev="unregistered")
    with pytest.raises(IncompatibleBase, match="not verified"):
        channels.promote_now(session, prod, v4, Change(ACTOR), new_base=True)
    # Protected channels: only admins.
    channels.configure(session, "acme/bot", "prod", Change(ACTOR, is_admin=True), protected=True)
    with pytest.raises(PermissionDenied):
        channels.promote_now(session, prod, v1, Change(ACTOR), new_base=True)
    # A canary needs a stable to compare with.
    empty = channel(session, "staging")
    with pytest.raises(Conflict, match="no stable"):
        rollouts.start(session, empty, v1, Change(ACTOR), RolloutSpec())


@pytest.mark.parametrize("spec", [
    {"steps": []}, {"steps": [50, 25, 100]}, {"steps": [10, 50]}, {"steps": [0, 100]},
    {"interval_seconds": 0}, {"gates": ["accuracy > 1"]}, {"max_failures": -1},
])
def test_bad_rollout_specs(spec: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        RolloutSpec(**spec).check()  # type: ignore[arg-type]


def test_gate_parsing_and_thresholds() -> None:
    g = gates.parse_gate("live.latency_p95_ms <= stable * 1.1")
    assert gates.evaluate(g, 109.0, 100.0).verdict == "pass"
    assert gates.evaluate(g, 111.0, 100.0).verdict == "fail"
    assert gates.evaluate(g, 111.0, None).verdict == "inconclusive"
    h = gates.parse_gate("eval.accuracy >= stable(prod) - 0.01")
    assert h.channel == "prod" and gates.evaluate(h, 0.895, 0.9).verdict == "pass"
    assert gates.evaluate(gates.parse_gate("eval.acc>=0.9"), None, None).verdict == (
        "inconclusive")


def snapshot(weight_bp: int, rollout_id: int = 7) -> Snapshot:
    stable = Target("acme/bot@1", 1, "a" * 64, ())
    canary = Target("acme/bot@2", 2, "b" * 64, ())
    return Snapshot("acme/bot", "prod", 3, 9, rollout_id, stable, canary, weight_bp, 0.0)


def test_resolve_is_sticky_weighted_and_monotonic() -> None:
    keys = [f"user-{i}" for i in range(100_000)]
    at10 = {k for k in keys if choose(snapshot(1000), k)[1]}
    assert abs(len(at10) / len(keys) - 0.10) <= 0.005
    assert all(choose(snapshot(1000), k)[1] for k in list(at10)[:1000])  # same answer again
    at25 = {k for k in keys if choose(snapshot(2500), k)[1]}
    assert at10 <= at25 and abs(len(at25) / len(keys) - 0.25) <= 0.005
    reshuffled = {k for k in keys if choose(snapshot(1000, rollout_id=8), k)[1]}
    assert len(reshuffled & at10) < len(at10) * 0.2  # a new rollout picks other keys
    assert bucket(3, 7, "x") == bucket(3, 7, "x")


def test_promotion_and_version_ids_are_consistent(session: Session, push: Push) -> None:
    v1 = push()
    prod = channel(session)
    channels.promote_now(session, prod, v1, Change(ACTOR))
    stored = session.scalar(select(Channel).where(Channel.id == prod.id))
    assert stored is not None and stored.stable_version_id == v1.id and stored.revision == 1


def test_rolling_back_twice_goes_further_back(session: Session, push: Push) -> None:
    v1, v2, v3 = push(), push(), push()
    prod = channel(session)
    for v in (v1, v2, v3):
        channels.promote_now(session, prod, v, Change(ACTOR))
    rollouts.rollback(session, prod, Change(ACTOR))
    rollouts.rollback(session, prod, Change(ACTOR))
    assert prod.stable_version_id == v1.id
