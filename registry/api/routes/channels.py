"""Channels, promotions, rollouts, rollback, live metrics and the serving checks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session

from registry.api import problems
from registry.api import schemas as s
from registry.api.routes.adapters import ref_of
from registry.errors import BadRequest
from registry.models import Channel, Rollout
from registry.refs import Ref, parse_adapter_name
from registry.services import channels, live, profiles, rollouts, versions
from registry.services.channels import Change
from registry.web.context import Ctx, CtxDep

router = APIRouter(prefix="/api/v1", tags=["channels"])
IfMatch = Annotated[str | None, Header(description="the channel revision you last read")]
# Answers that carry the channel's revision, for the next If-Match.
ETAG: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"ETag": problems.header('the channel revision, e.g. "7"')}}}
CHANGES = {**ETAG, **problems.responses(409)}


def expected(body_value: int | None, if_match: str | None) -> int | None:
    """The revision to compare-and-swap on: ``If-Match: "7"`` or ``expect_revision``."""
    if if_match is None:
        return body_value
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest('If-Match must be a channel revision, e.g. "7"')
    return int(text)


def change(ctx: Ctx, ns: str, expect: int | None, reason: str) -> Change:
    return Change(ctx.actor, expect, reason, is_admin=ctx.principal.can("admin", ns))


def channel_out(ctx: Ctx, channel: Channel, response: Response) -> s.ChannelOut:
    response.headers["ETag"] = f'"{channel.revision}"'
    ctx.changed_channel(channel.adapter.full_name, channel.name)
    return s.channel_out(channel)


@router.get("/adapters/{ns}/{name}/channels", response_model=s.Page[s.ChannelOut])
def list_channels(ns: str, name: str, ctx: CtxDep) -> s.Page[s.ChannelOut]:
    ctx.require("read", ns)
    with ctx.tx() as session:
        rows = channels.list_channels(session, f"{ns}/{name}")
        return s.Page[s.ChannelOut](items=[s.channel_out(c) for c in rows], next_cursor=None)


@router.get("/adapters/{ns}/{name}/channels/{channel}", response_model=s.ChannelOut,
            responses=ETAG)
def get_channel(ns: str, name: str, channel: str, ctx: CtxDep, response: Response
                ) -> s.ChannelOut:
    ctx.require("read", ns)
    with ctx.tx() as session:
        row = channels.get_channel(session, f"{ns}/{name}", channel)
        response.headers["ETag"] = f'"{row.revision}"'
        return s.channel_out(row)


@router.put("/adapters/{ns}/{name}/channels/{channel}", response_model=s.ChannelOut,
            responses=CHANGES)
def configure_channel(ns: str, name: str, channel: str, body: s.ChannelConfigIn, ctx: CtxDep,
                      response: Response, if_match: IfMatch = None) -> s.ChannelOut:
    """Create a channel or set its profile / protection (protection: admins only)."""
    ctx.require("promote", ns)
    if body.protected is not None:
        ctx.require("admin", ns)
    with ctx.tx() as session:
        row = channels.configure(
            session, f"{ns}/{name}", channel,
            change(ctx, ns, expected(body.expect_revision, if_match), "configure"),
            profile=body.profile, protected=body.protected)
        return channel_out(ctx, row, response)


@router.post("/adapters/{ns}/{name}/channels/{channel}/promote", response_model=s.PromoteOut,
             responses=CHANGES)
def promote(ns: str, name: str, channel: str, body: s.PromoteIn, ctx: CtxDep,
            response: Response, if_match: IfMatch = None) -> s.PromoteOut:
    """Promote a version: at once (``now``) or as a canary rollout with gates."""
    ctx.require("promote", ns)
    chg = change(ctx, ns, expected(body.expect_revision, if_match), body.reason)
    with ctx.tx() as session:
        version = versions.get_version(session, Ref(ns, name, version=body.version))
        adapter = version.adapter
        row = channels.ensure_channel(session, ctx.actor, adapter, channel)
        rollout = None
        if body.now:
            channels.promote_now(session, row, version, chg, body.new_base)
        else:
            spec = rollouts.RolloutSpec(body.steps, body.interval_seconds, body.gates,
                                        body.max_failures, body.deadline_seconds,
                                        body.min_requests)
            rollout = rollouts.start(session, row, version, chg, spec, body.new_base)
        return s.PromoteOut(channel=channel_out(ctx, row, response),
                            rollout=s.rollout_out(rollout) if rollout else None)


@router.post("/adapters/{ns}/{name}/channels/{channel}/rollback", response_model=s.ChannelOut,
             responses=CHANGES)
def rollback(ns: str, name: str, channel: str, body: s.RollbackIn, ctx: CtxDep,
             response: Response, if_match: IfMatch = None) -> s.ChannelOut:
    """Put the previous (or the named) version back as stable, in one call."""
    ctx.require("promote", ns)
    chg = change(ctx, ns, expected(body.expect_revision, if_match), body.reason)
    with ctx.tx() as session:
        row = channels.get_channel(session, f"{ns}/{name}", channel)  # locked by rollback
        row = rollouts.rollback(session, row, chg, body.to_version)
        return channel_out(ctx, row, response)


@router.get("/adapters/{ns}/{name}/channels/{channel}/history",
            response_model=s.Page[s.ChannelEventOut])
def history(ns: str, name: str, channel: str, ctx: CtxDep, cursor: str | None = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100) -> s.Page[s.ChannelEventOut]:
    """Every change of the channel, newest first: who, when, from, to, why, metrics."""
    ctx.require("read", ns)
    with ctx.tx() as session:
        row = channels.get_channel(session, f"{ns}/{name}", channel)
        page = channels.history(session, row, cursor=cursor, limit=limit)
        return s.Page[s.ChannelEventOut](items=[s.channel_event_out(e) for e in page.items],
                                        next_cursor=page.next_cursor)


def _rollout(session: Session, ctx: Ctx, rollout_id: int, permission: str,
             for_update: bool = False) -> Rollout:
    rollout = rollouts.get_rollout(session, rollout_id, for_update=for_update)
    ctx.require(permission, rollout.channel.adapter.namespace.name)
    return rollout


@router.get("/rollouts/{rollout_id}", response_model=s.RolloutOut)
def get_rollout(rollout_id: int, ctx: CtxDep) -> s.RolloutOut:
    with ctx.tx() as session:
        return s.rollout_out(_rollout(session, ctx, rollout_id, "read"))


@router.get("/rollouts/{rollout_id}/evaluations", response_model=s.Items[s.GateEvaluationOut])
def rollout_evaluations(rollout_id: int, ctx: CtxDep) -> s.Items[s.GateEvaluationOut]:
    """Every gate evaluation: step, values, threshold and verdict."""
    with ctx.tx() as session:
        rollout = _rollout(session, ctx, rollout_id, "read")
        return s.Items[s.GateEvaluationOut](items=[
            s.GateEvaluationOut.model_validate(e, from_attributes=True)
            for e in rollouts.evaluations(session, rollout)])


@router.post("/rollouts/{rollout_id}/{action}", response_model=s.RolloutOut,
             responses=problems.responses(409))
def control_rollout(rollout_id: int, action: str, body: s.ControlIn, ctx: CtxDep
                    ) -> s.RolloutOut:
    """``pause``, ``resume`` or ``abort`` a rollout by hand."""
    handlers = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}
    if action not in handlers:
        raise BadRequest("action must be pause, resume or abort")
    with ctx.tx() as session:
        rollout = _rollout(session, ctx, rollout_id, "promote", for_update=True)
        ns = rollout.channel.adapter.namespace.name
        handlers[action](session, rollout, change(ctx, ns, None, body.reason))
        ctx.changed_channel(rollout.channel.adapter.full_name, rollout.channel.name)
        return s.rollout_out(rollout)


@router.post("/metrics/live", response_model=s.LiveAccepted, status_code=202,
             responses=problems.responses(404))
def report_live(body: s.LiveIn, ctx: CtxDep) -> s.LiveAccepted:
    """Serving routers report per-version counts and values, batched. A router resolves with
    a reader token, so reading a namespace is what reporting for it takes: a token scoped to
    one namespace reports only for that one (a batch naming another is refused whole)."""
    reports = []
    with ctx.tx() as session:
        for r in body.reports:
            ns, name = parse_adapter_name(r.adapter)
            ctx.require("read", ns)
            version = versions.get_version(session, Ref(ns, name, version=r.version))
            reports.append(live.LiveReport(version, r.requests, r.errors, dict(r.values)))
        return s.LiveAccepted(accepted=live.record(session, reports, ctx.actor.name))


@router.get("/adapters/{ns}/{name}/versions/{sel}/check", response_model=s.CheckOut)
def check(ns: str, name: str, sel: str, ctx: CtxDep,
          profile: Annotated[str, Query()] = "vllm") -> s.CheckOut:
    """Would this version be accepted by a serving profile? (no change is made)"""
    ctx.require("read", ns)
    with ctx.tx() as session:
        version = versions.get_version(session, ref_of(ns, name, sel))
        found = profiles.problems(session, version, profile)
        return s.CheckOut(ref=f"{ns}/{name}@{version.number}", profile=profile, ok=not found,
                          problems=found)
