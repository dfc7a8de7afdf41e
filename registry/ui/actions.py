"""Actions: promote, pause/resume/abort, rollback, yank and cancel-job.

Each action is a confirmation page (GET) and a form post (POST). The POST checks the origin
and the CSRF token (``session.checked_form``), then the same permission as the matching API
route, and calls the same service in one transaction (``ctx.tx()``), so the same audit events
and channel history rows are written. Channel changes compare-and-swap on the revision the
confirmation page showed: if the channel moved meanwhile, the action is refused (409) rather
than applied to a state nobody confirmed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from registry.errors import BadRequest
from registry.refs import Ref, check_channel, parse_adapter_name
from registry.services import channels, jobs, rollouts, summaries, versions
from registry.services.channels import Change
from registry.services.rollouts import RolloutSpec
from registry.ui import session
from registry.ui.rendering import UICtx, UIRoute, render
from registry.web.context import Ctx

router = APIRouter(prefix="/ui", route_class=UIRoute, include_in_schema=False)
Form = Annotated[dict[str, str], Depends(session.checked_form)]
CONTROLS = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}
CONTROL_DONE = {"pause": "paused", "resume": "resumed", "abort": "aborted"}


def _done(url: str, code: str) -> Response:
    return RedirectResponse(f"{url}?done={code}", status_code=303)


def _change(ctx: Ctx, ns: str, form: dict[str, str], expect: bool = True) -> Change:
    revision = form.get("expect_revision", "").strip() if expect else ""
    if revision and not revision.isdigit():
        raise BadRequest("expect_revision must be a channel revision number")
    return Change(ctx.actor, int(revision) if revision else None,
                  form.get("reason", "").strip()[:2000],
                  is_admin=ctx.principal.can("admin", ns))


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise BadRequest(f"{what} must be whole numbers separated by commas") from exc


def _opt_int(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise BadRequest(f"{what} must be a whole number")
    return int(text)


def _int(text: str, what: str, default: int) -> int:
    value = _opt_int(text, what)
    return default if value is None else value


# --- yank ------------------------------------------------------------------------------------


@router.get("/adapters/{ns}/{name}/versions/{number}/yank")
def yank_confirm(request: Request, ns: str, name: str, number: int, ctx: UICtx) -> Response:
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("write", ns)
    with ctx.tx() as s:
        version = versions.get_version(s, Ref(ns, name, version=number))
        serving = summaries.version_channels(s, version.adapter_id).get(version.id, [])
    return render(request, "confirm_yank.html", version=version, in_channels=serving)


@router.post("/adapters/{ns}/{name}/versions/{number}/yank")
def yank(ns: str, name: str, number: int, form: Form, ctx: UICtx) -> Response:
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("write", ns)
    with ctx.tx() as s:
        versions.yank(s, ctx.actor, Ref(ns, name, version=number), form.get("reason", ""))
    return _done(f"/ui/adapters/{ns}/{name}/versions/{number}", "yanked")


# --- promote ---------------------------------------------------------------------------------


@router.get("/adapters/{ns}/{name}/versions/{number}/promote")
def promote_confirm(request: Request, ns: str, name: str, number: int, ctx: UICtx,
                    channel: str = "prod") -> Response:
    parse_adapter_name(f"{ns}/{name}")
    check_channel(channel)
    ctx.require("promote", ns)
    with ctx.tx() as s:
        version = versions.get_version(s, Ref(ns, name, version=number))
        existing = {c.name: c for c in channels.list_channels(s, f"{ns}/{name}")}
    return render(request, "confirm_promote.html", version=version, target=channel,
                  current=existing.get(channel), spec=RolloutSpec())


@router.post("/adapters/{ns}/{name}/versions/{number}/promote")
def promote(ns: str, name: str, number: int, form: Form, ctx: UICtx) -> Response:
    """As ``POST /api/v1/adapters/{ns}/{name}/channels/{channel}/promote``."""
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("promote", ns)
    channel = check_channel(form.get("channel", ""))
    chg = _change(ctx, ns, form)
    now = form.get("mode", "now") == "now"
    spec = None if now else _spec(form)
    new_base = form.get("new_base") == "on"
    with ctx.tx() as s:
        version = versions.get_version(s, Ref(ns, name, version=number))
        row = channels.ensure_channel(s, ctx.actor, version.adapter, channel)
        if spec is None:
            channels.promote_now(s, row, version, chg, new_base)
        else:
            rollouts.start(s, row, version, chg, spec, new_base)
        ctx.changed_channel(f"{ns}/{name}", channel)
    return _done(f"/ui/adapters/{ns}/{name}/channels/{channel}", "promoted" if now else "canary")


def _spec(form: dict[str, str]) -> RolloutSpec:
    gates = [line.strip() for line in form.get("gates", "").splitlines() if line.strip()]
    spec = RolloutSpec(
        steps=_int_list(form.get("steps", ""), "steps"),
        interval_seconds=_int(form.get("interval_seconds", ""), "interval", 600),
        gates=gates, max_failures=_int(form.get("max_failures", ""), "max failures", 0),
        deadline_seconds=_opt_int(form.get("deadline_seconds", ""), "deadline"),
        min_requests=_int(form.get("min_requests", ""), "min requests", 1))
    spec.check()
    return spec


# --- rollback --------------------------------------------------------------------------------


@router.get("/adapters/{ns}/{name}/channels/{channel}/rollback")
def rollback_confirm(request: Request, ns: str, name: str, channel: str, ctx: UICtx,
                     to: int | None = None) -> Response:
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("promote", ns)
    with ctx.tx() as s:
        row = channels.get_channel(s, f"{ns}/{name}", channel)
        target = to or rollouts.previous_stable(s, row)
    return render(request, "confirm_rollback.html", channel=row, target=target)


@router.post("/adapters/{ns}/{name}/channels/{channel}/rollback")
def rollback(ns: str, name: str, channel: str, form: Form, ctx: UICtx) -> Response:
    """As ``POST /api/v1/adapters/{ns}/{name}/channels/{channel}/rollback``."""
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("promote", ns)
    chg = _change(ctx, ns, form)
    to_version = _opt_int(form.get("to_version", ""), "target version")
    with ctx.tx() as s:
        row = channels.get_channel(s, f"{ns}/{name}", channel)  # locked by rollback
        rollouts.rollback(s, row, chg, to_version)
        ctx.changed_channel(f"{ns}/{name}", channel)
    return _done(f"/ui/adapters/{ns}/{name}/channels/{channel}", "rolledback")


# --- pause / resume / abort ------------------------------------------------------------------


@router.get("/rollouts/{rollout_id}/{action}")
def control_confirm(request: Request, rollout_id: int, action: str, ctx: UICtx) -> Response:
    if action not in CONTROLS:
        raise BadRequest("action must be pause, resume or abort")
    with ctx.tx() as s:
        rollout = rollouts.get_rollout(s, rollout_id)
        ctx.require("promote", rollout.channel.adapter.namespace.name)
    return render(request, "confirm_control.html", rollout=rollout, action=action,
                  channel=rollout.channel)


@router.post("/rollouts/{rollout_id}/{action}")
def control(rollout_id: int, action: str, form: Form, ctx: UICtx) -> Response:
    """As ``POST /api/v1/rollouts/{id}/{action}`` (no revision check, like the API: an
    abort must not fail because the controller advanced a step meanwhile)."""
    if action not in CONTROLS:
        raise BadRequest("action must be pause, resume or abort")
    with ctx.tx() as s:
        rollout = rollouts.get_rollout(s, rollout_id, for_update=True)
        ns = rollout.channel.adapter.namespace.name
        ctx.require("promote", ns)
        CONTROLS[action](s, rollout, _change(ctx, ns, form, expect=False))
        adapter, channel = rollout.channel.adapter.full_name, rollout.channel.name
        ctx.changed_channel(adapter, channel)
    return _done(f"/ui/adapters/{adapter}/channels/{channel}", CONTROL_DONE[action])


# --- cancel job ------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/cancel")
def cancel_confirm(request: Request, job_id: int, ctx: UICtx) -> Response:
    with ctx.tx() as s:
        job = jobs.get_job(s, job_id)
        ctx.require("write", job.namespace)
    return render(request, "confirm_cancel.html", job=job)


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: int, form: Form, ctx: UICtx) -> Response:
    """As ``POST /api/v1/jobs/{id}/cancel``."""
    with ctx.tx() as s:
        job = jobs.get_job(s, job_id)
        ctx.require("write", job.namespace)
        jobs.request_cancel(s, ctx.actor, job_id)
    return _done("/ui/jobs", "cancelled")
