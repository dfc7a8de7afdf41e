"""Canary rollouts and rollback, and the controller that walks them.

State machine::

    pending -> progressing (step i: weight = steps[i]%, bake `interval`, evaluate gates)
    progressing <-> paused   (by hand, or by an inconclusive analysis: no data yet)
    progressing -> promoted  (the last step passed: the canary becomes stable)
    any active  -> aborted   (gates failed more than `max_failures` times, the deadline
                              passed, by hand, or a rollback): weight 0, stable keeps serving

The controller (:func:`tick`) runs in every worker. A tick locks due rollouts with
``FOR UPDATE SKIP LOCKED`` and re-checks ``next_eval_at`` under the lock, so any number of
workers ticking at once advance a step exactly once. Times come from the database clock.
Every transition writes a channel history row and an audit event; every gate evaluation is
stored with its value, threshold and verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from registry.errors import BadRequest, Conflict, NotFound
from registry.models import AdapterVersion, Channel, GateEvaluation, Rollout
from registry.refs import Ref
from registry.services import channels, gates, live, metrics, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.jobs import db_now
from registry.statuses import ROLLOUT_ACTIVE, GateVerdict, PausedBy, RolloutStatus

CONTROLLER = Actor("rollout-controller")


@dataclass
class RolloutSpec:
    steps: list[int] = field(default_factory=lambda: [5, 25, 50, 100])
    interval_seconds: int = 600
    gates: list[str] = field(default_factory=list)
    max_failures: int = 0
    deadline_seconds: int | None = None
    min_requests: int = 1

    def check(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise BadRequest("steps are percentages in (0, 100]")
        if self.steps != sorted(set(self.steps)) or self.steps[-1] != 100:
            raise BadRequest("steps must increase strictly and end at 100")
        if not 1 <= self.interval_seconds <= 7 * 86400:
            raise BadRequest("interval must be between 1 second and 7 days")
        if not 0 <= self.max_failures <= 100 or self.min_requests < 0:
            raise BadRequest("max_failures must be 0..100 and min_requests >= 0")
        if self.deadline_seconds is not None and self.deadline_seconds < self.interval_seconds:
            raise BadRequest("the deadline must be at least one interval")
        for text in self.gates:
            gates.parse_gate(text)


def start(session: Session, channel: Channel, version: AdapterVersion, change: Change,
          spec: RolloutSpec, new_base: bool = False) -> Rollout:
    """Start a canary of ``version`` on ``channel``; its first step begins at once."""
    spec.check()
    channels.check_cas(channel, change)
    if channel.rollout_id is not None:
        raise Conflict(f"rollout {channel.rollout_id} is already active on "
                       f"{channels.channel_name(channel)}")
    if channel.stable is None:
        raise Conflict(f"{channels.channel_name(channel)} has no stable version to compare a "
                       "canary with: promote one directly first (--now)")
    if channel.stable.id == version.id:
        raise Conflict(f"{version.adapter.full_name}@{version.number} is already stable")
    channels.check_promotable(session, channel, version, new_base, as_canary=True)
    now = db_now(session)
    rollout = Rollout(
        channel_id=channel.id, version_id=version.id, baseline_version_id=channel.stable.id,
        status=RolloutStatus.PENDING, steps=spec.steps, interval_seconds=spec.interval_seconds,
        gates=spec.gates, max_failures=spec.max_failures, min_requests=spec.min_requests,
        deadline_at=now + timedelta(seconds=spec.deadline_seconds) if spec.deadline_seconds
        else None, created_by=change.actor.name, reason=change.reason,
        created_at=now, updated_at=now,
    )
    session.add(rollout)
    session.flush()
    channel.rollout_id = rollout.id
    channel.canary = version
    channels.record(session, channel, change, "rollout.started", rollout_id=rollout.id,
                    snapshot=version, extra={"steps": spec.steps, "gates": spec.gates})
    _begin_step(session, rollout, 0, now, change.actor)
    return rollout


def get_rollout(session: Session, rollout_id: int, *, for_update: bool = False) -> Rollout:
    stmt = select(Rollout).where(Rollout.id == rollout_id)
    if for_update:
        stmt = stmt.with_for_update(of=Rollout).execution_options(populate_existing=True)
    rollout = session.scalar(stmt)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} not found")
    return rollout


def evaluations(session: Session, rollout: Rollout) -> list[GateEvaluation]:
    return list(session.scalars(select(GateEvaluation).where(
        GateEvaluation.rollout_id == rollout.id).order_by(GateEvaluation.id)))


def recent(session: Session, channel_id: int, limit: int = 20) -> list[Rollout]:
    """A channel's last ``limit`` rollouts, newest first."""
    return list(session.scalars(select(Rollout).where(Rollout.channel_id == channel_id)
                                .order_by(Rollout.id.desc()).limit(limit)))


def pause(session: Session, rollout: Rollout, change: Change) -> Rollout:
    """Hold the canary at its weight until resumed (an analysis pause becomes manual)."""
    _require_active(rollout)
    if rollout.paused_by == PausedBy.MANUAL:
        raise Conflict(f"rollout {rollout.id} is already paused")
    channel = _locked_channel(session, rollout, change)
    rollout.status, rollout.paused_by = RolloutStatus.PAUSED, PausedBy.MANUAL
    _transition(session, rollout, channel, change.actor, "rollout.paused", change.reason)
    return rollout


def resume(session: Session, rollout: Rollout, change: Change) -> Rollout:
    if rollout.status != RolloutStatus.PAUSED:
        raise Conflict(f"rollout {rollout.id} is {rollout.status}, not paused")
    channel = _locked_channel(session, rollout, change)
    now = db_now(session)
    rollout.status, rollout.paused_by = RolloutStatus.PROGRESSING, None
    rollout.next_eval_at = now + timedelta(seconds=rollout.interval_seconds)
    _transition(session, rollout, channel, change.actor, "rollout.resumed", change.reason)
    return rollout


def abort(session: Session, rollout: Rollout, change: Change) -> Rollout:
    _require_active(rollout)
    channel = _locked_channel(session, rollout, change)
    _abort(session, rollout, channel, change.actor, change.reason or "aborted by hand")
    return rollout


def rollback(session: Session, channel: Channel, change: Change, to_number: int | None = None
             ) -> Channel:
    """One call: the previous (or the named) version becomes stable again; a running
    canary is aborted as part of the same change."""
    channel = _lock_for_rollback(session, channel)
    channels.check_cas(channel, change)
    target = _rollback_target(session, channel, to_number)
    if channel.rollout_id is not None:
        rollout = get_rollout(session, channel.rollout_id, for_update=True)
        _finish(rollout, RolloutStatus.ABORTED, db_now(session), f"rolled back: {change.reason}")
    channels.check_promotable(session, channel, target, new_base=True)
    channels.set_stable(session, channel, target, change, "rollback")
    return channel


def _lock_for_rollback(session: Session, channel: Channel) -> Channel:
    """Lock the channel's active rollout, then the channel: the controller's order (rollout,
    then channel), so a rollback during a tick waits instead of deadlocking."""
    for _ in range(3):
        rollout_id = channel.rollout_id
        if rollout_id is not None:
            get_rollout(session, rollout_id, for_update=True)
        channel = channels.lock(session, channel.id)
        if channel.rollout_id in (None, rollout_id):
            return channel
    raise Conflict(f"{channels.channel_name(channel)} keeps changing; retry the rollback")


def previous_stable(session: Session, channel: Channel) -> int | None:
    """The version number a plain rollback restores: the stable version before the change
    that made the current one stable (rollbacks skipped, so rolling back twice goes further
    back, not forth); None if there is none."""
    current = channel.stable.number if channel.stable else None
    for event in channels.history(session, channel, limit=500).items:
        if event.action == "rollback":
            continue
        if event.to_stable == current and event.from_stable not in (None, current):
            return event.from_stable
    return None


def _rollback_target(session: Session, channel: Channel, to_number: int | None
                     ) -> AdapterVersion:
    number = to_number if to_number is not None else previous_stable(session, channel)
    if number is None:
        raise Conflict(f"{channels.channel_name(channel)} has no previous stable version to "
                       "roll back to; name one with --to")
    ref = Ref(channel.adapter.namespace.name, channel.adapter.name, version=number)
    return versions.get_version(session, ref)


# --- the controller -------------------------------------------------------------------------


def tick(session: Session, *, limit: int = 20) -> list[int]:
    """Advance every due rollout by one decision; returns the ids acted on."""
    now = db_now(session)
    due = or_(
        Rollout.status.in_((RolloutStatus.PENDING, RolloutStatus.PROGRESSING))
        & (Rollout.next_eval_at <= now),
        (Rollout.status == RolloutStatus.PAUSED) & (Rollout.paused_by == PausedBy.ANALYSIS)
        & (Rollout.next_eval_at <= now),
        Rollout.status.in_(ROLLOUT_ACTIVE) & (Rollout.deadline_at <= now),
    )
    stmt = (select(Rollout).where(due).order_by(Rollout.next_eval_at).limit(limit)
            .with_for_update(of=Rollout, skip_locked=True))
    acted = []
    for rollout in session.scalars(stmt).all():
        _decide(session, rollout, channels.lock(session, rollout.channel_id), now)
        acted.append(rollout.id)
    return acted


def _decide(session: Session, rollout: Rollout, channel: Channel, now: datetime) -> None:
    if rollout.deadline_at is not None and rollout.deadline_at <= now:
        _abort(session, rollout, channel, CONTROLLER, "deadline passed before promotion")
        return
    if rollout.status == RolloutStatus.PENDING:
        _begin_step(session, rollout, 0, now, CONTROLLER)
        return
    results = _evaluate(session, rollout, channel, now)
    verdicts = {r.verdict for r in results}
    if GateVerdict.FAIL in verdicts:
        _failed(session, rollout, channel, now, results)
    elif GateVerdict.INCONCLUSIVE in verdicts:
        _inconclusive(session, rollout, channel, now, results)
    elif rollout.step_index + 1 < len(rollout.steps):
        if rollout.status == RolloutStatus.PAUSED:
            rollout.status, rollout.paused_by = RolloutStatus.PROGRESSING, None
        _begin_step(session, rollout, rollout.step_index + 1, now, CONTROLLER)
    else:
        _promote(session, rollout, channel, now)


def _evaluate(session: Session, rollout: Rollout, channel: Channel, now: datetime
              ) -> list[gates.Verdict]:
    since = rollout.step_started_at or now
    results = []
    for text in rollout.gates:
        gate = gates.parse_gate(text)
        value = _metric(session, gate, rollout.version_id, since, now, rollout.min_requests)
        baseline = None
        if gate.relative:
            base_id = _baseline_version(session, rollout, channel, gate.channel)
            baseline = _metric(session, gate, base_id, since, now, rollout.min_requests
                               ) if base_id else None
        verdict = gates.evaluate(gate, value, baseline)
        session.add(GateEvaluation(rollout_id=rollout.id, step_index=rollout.step_index,
                                   gate=text, verdict=verdict.verdict, value=verdict.value,
                                   threshold=verdict.threshold, detail=verdict.detail,
                                   evaluated_at=now))
        results.append(verdict)
    return results


def _metric(session: Session, gate: gates.Gate, version_id: int, since: datetime,
            until: datetime, min_requests: int) -> float | None:
    if gate.source == "eval":
        return metrics.latest(session, [version_id])[version_id].get(gate.key)
    window = live.aggregate(session, version_id, since, until)
    if window.get("requests", 0.0) < max(min_requests, 1) and gate.key != "requests":
        return None
    return window.get(gate.key)


def _baseline_version(session: Session, rollout: Rollout, channel: Channel,
                      other: str | None) -> int | None:
    if other is None or other == channel.name:
        return channel.stable_version_id or rollout.baseline_version_id
    return session.scalar(select(Channel.stable_version_id).where(
        Channel.adapter_id == channel.adapter_id, Channel.name == other))


def _begin_step(session: Session, rollout: Rollout, index: int, now: datetime,
                actor: Actor) -> None:
    channel = session.get_one(Channel, rollout.channel_id)
    rollout.status, rollout.step_index = RolloutStatus.PROGRESSING, index
    rollout.step_started_at, rollout.updated_at = now, now
    rollout.next_eval_at = now + timedelta(seconds=rollout.interval_seconds)
    channel.canary_weight_bp = rollout.steps[index] * 100
    _transition(session, rollout, channel, actor, "rollout.step",
                f"step {index + 1}/{len(rollout.steps)}: {rollout.steps[index]}% canary")


def _failed(session: Session, rollout: Rollout, channel: Channel, now: datetime,
            results: Sequence[gates.Verdict]) -> None:
    failed = "; ".join(r.detail for r in results if r.verdict == GateVerdict.FAIL)
    rollout.failures += 1
    if rollout.failures > rollout.max_failures:
        _abort(session, rollout, channel, CONTROLLER, f"gates failed: {failed}")
        return
    rollout.step_started_at = now  # re-bake the same step on a fresh window
    rollout.next_eval_at = now + timedelta(seconds=rollout.interval_seconds)
    _transition(session, rollout, channel, CONTROLLER, "rollout.gate_failed",
                f"failure {rollout.failures}/{rollout.max_failures} allowed: {failed}")


def _inconclusive(session: Session, rollout: Rollout, channel: Channel, now: datetime,
                  results: Sequence[gates.Verdict]) -> None:
    why = "; ".join(r.detail for r in results if r.verdict == GateVerdict.INCONCLUSIVE)
    rollout.next_eval_at = now + timedelta(seconds=rollout.interval_seconds)
    if rollout.status != RolloutStatus.PAUSED:
        rollout.status, rollout.paused_by = RolloutStatus.PAUSED, PausedBy.ANALYSIS
        _transition(session, rollout, channel, CONTROLLER, "rollout.paused",
                    f"inconclusive analysis: {why}")


def _promote(session: Session, rollout: Rollout, channel: Channel, now: datetime) -> None:
    version = session.get_one(AdapterVersion, rollout.version_id)
    _finish(rollout, RolloutStatus.PROMOTED, now, "all steps passed")
    channels.set_stable(session, channel, version, Change(CONTROLLER, reason="rollout "
                                                          f"{rollout.id} promoted"),
                        "rollout.promoted", rollout_id=rollout.id)


def _abort(session: Session, rollout: Rollout, channel: Channel, actor: Actor,
           reason: str) -> None:
    _finish(rollout, RolloutStatus.ABORTED, db_now(session), reason)
    channel.canary = None
    channel.canary_weight_bp = 0
    channel.rollout_id = None
    channels.record(session, channel, Change(actor, reason=reason), "rollout.aborted",
                    rollout_id=rollout.id)


def _finish(rollout: Rollout, status: RolloutStatus, now: datetime, reason: str) -> None:
    rollout.status, rollout.reason = status, reason
    rollout.finished_at = rollout.updated_at = now
    rollout.next_eval_at = None
    rollout.paused_by = None


def _transition(session: Session, rollout: Rollout, channel: Channel, actor: Actor,
                action: str, reason: str) -> None:
    rollout.updated_at = db_now(session)
    channels.record(session, channel, Change(actor, reason=reason), action,
                    rollout_id=rollout.id, extra={"status": rollout.status,
                                                  "step": rollout.step_index})


def _require_active(rollout: Rollout) -> None:
    if rollout.status not in ROLLOUT_ACTIVE:
        raise Conflict(f"rollout {rollout.id} is already {rollout.status}")


def _locked_channel(session: Session, rollout: Rollout, change: Change) -> Channel:
    channel = channels.lock(session, rollout.channel_id)
    channels.check_cas(channel, change)
    return channel


def count_by_status(session: Session) -> dict[str, int]:
    """How many rollouts are in each status (for /metrics)."""
    rows = session.execute(select(Rollout.status, func.count()).group_by(Rollout.status))
    return {str(status): int(n) for status, n in rows}
