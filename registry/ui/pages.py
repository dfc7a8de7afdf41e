"""Read pages: adapters, namespaces, an adapter, a version, a channel, jobs, the audit log.

Each handler checks the same permission the matching API route checks, reads through the
services (the same functions the API calls, plus :mod:`registry.services.summaries`) in one
transaction, and renders one template after
the transaction ends (every relationship the templates touch is loaded eagerly), so that on
SQLite, where every transaction holds the write lock, rendering never holds it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from registry.errors import NotFound
from registry.models import Rollout
from registry.refs import Ref, check_namespace, parse_adapter_name
from registry.services import (
    adapters,
    audit,
    channels,
    jobs,
    merges,
    metrics,
    profiles,
    rollouts,
    summaries,
    versions,
)
from registry.services.adapters import AdapterFilter
from registry.services.pagination import Page
from registry.services.versions import VersionQuery
from registry.statuses import JobStatus
from registry.ui import figures
from registry.ui.rendering import UICtx, UIRoute, render

router = APIRouter(prefix="/ui", route_class=UIRoute, include_in_schema=False)
Limit = Annotated[int, Query(ge=1, le=200)]
Labels = Annotated[list[str], Query()]


@router.get("")
@router.get("/adapters")
def adapter_list(
    request: Request, ctx: UICtx, q: str | None = None, namespace: str | None = None,
    label: Labels = [],  # noqa: B006 - FastAPI copies query defaults per request
    base: str | None = None, sort: str = "updated_at", cursor: str | None = None,
    limit: Limit = 50,
) -> Response:
    if namespace:
        check_namespace(namespace)
    label = [item for item in label if item.strip()]  # an empty filter field filters nothing
    flt = AdapterFilter(scope=ctx.principal.scope, namespace=namespace or None,
                        labels=adapters.parse_label_filters(label), search=q or None,
                        base=base or None, sort=sort)
    with ctx.tx() as session:
        found = adapters.list_adapters(session, flt, cursor=cursor, limit=limit)
        page = Page(summaries.adapters(session, found.items), found.next_cursor)
        spaces = summaries.namespaces(session, ctx.principal.scope)
    return render(request, "adapters.html", page=page, namespaces=spaces, flt=flt,
                  label_filter=label, cursor=cursor)


@router.get("/namespaces")
def namespace_list(request: Request, ctx: UICtx) -> Response:
    with ctx.tx() as session:
        rows = summaries.namespaces(session, ctx.principal.scope)
    return render(request, "namespaces.html", rows=rows)


@router.get("/adapters/{ns}/{name}")
def adapter_page(
    request: Request, ns: str, name: str, ctx: UICtx, sort: str = "version",
    order: str = "desc", status: str | None = None, cursor: str | None = None,
    limit: Limit = 50,
) -> Response:
    full = "/".join(parse_adapter_name(f"{ns}/{name}"))
    ctx.require("read", ns)
    query = VersionQuery(adapter=full, scope=ctx.principal.scope, status=status or None,
                         sort=sort, descending=order != "asc")
    with ctx.tx() as session:
        adapter = adapters.get_adapter(session, full)
        points = summaries.version_points(session, adapter.id)
        keys = summaries.metric_keys(points)
        page = versions.list_versions(session, query, cursor=cursor, limit=limit)
        values: dict[str, Any] = {
            "adapter": adapter, "page": page, "keys": keys,
            "latest": metrics.latest(session, [v.id for v in page.items]),
            "in_channels": summaries.version_channels(session, adapter.id),
            "channels": summaries.channel_badges(session, adapter.id)}
    return render(request, "adapter.html", **values,
                  charts=[figures.metric_chart(k, points) for k in keys],
                  sort=sort, order="asc" if order == "asc" else "desc", status=status,
                  cursor=cursor, total=adapter.next_version - 1)


@router.get("/adapters/{ns}/{name}/versions/{number}")
def version_page(request: Request, ns: str, name: str, number: int, ctx: UICtx) -> Response:
    parse_adapter_name(f"{ns}/{name}")
    ctx.require("read", ns)
    with ctx.tx() as session:
        version = versions.get_version(session, Ref(ns, name, version=number))
        ref = f"{ns}/{name}@{version.number}"
        values: dict[str, Any] = {
            "version": version, "ref": ref,
            "latest": metrics.latest(session, [version.id])[version.id],
            "history": metrics.history(session, version),
            "artifacts": merges.artifacts(session, version.id),
            "jobs": jobs.list_jobs(session, target=ref, limit=20).items,
            "trail": audit.trail(session, "version", ref),
            "in_channels": summaries.version_channels(session, version.adapter_id).get(
                version.id, []),
            "channels": summaries.channel_badges(session, version.adapter_id),
            "vllm": profiles.vllm_problems(version.peft_config, profiles.VLLM_MAX_RANK)}
    return render(request, "version.html", **values)


@router.get("/adapters/{ns}/{name}/channels/{channel}")
def channel_page(
    request: Request, ns: str, name: str, channel: str, ctx: UICtx,
    rollout: int | None = None, cursor: str | None = None,
) -> Response:
    full = "/".join(parse_adapter_name(f"{ns}/{name}"))
    ctx.require("read", ns)
    with ctx.tx() as session:
        row = channels.get_channel(session, full, channel)
        rollouts_list = rollouts.recent(session, row.id)
        shown = _shown_rollout(rollouts_list, row.rollout_id, rollout)
        evaluations = rollouts.evaluations(session, shown) if shown else []
        history = channels.history(session, row, cursor=cursor, limit=50)
        rollback_to = rollouts.previous_stable(session, row)
    active = next((r for r in rollouts_list if r.id == row.rollout_id), None)
    return render(
        request, "channel.html", channel=row, adapter=row.adapter, history=history,
        rollouts=rollouts_list, shown=shown, active=active, evaluations=evaluations,
        gate_charts=figures.gate_charts(evaluations), cursor=cursor, rollback_to=rollback_to)


def _shown_rollout(rows: list[Rollout], active: int | None, asked: int | None
                   ) -> Rollout | None:
    wanted = asked or active
    if wanted is None:
        return rows[0] if rows else None
    found = next((r for r in rows if r.id == wanted), None)
    if found is None:
        raise NotFound(f"rollout {wanted} is not one of this channel's last rollouts")
    return found


JOB_SECTIONS = (("Running", JobStatus.RUNNING, 100), ("Queued", JobStatus.QUEUED, 50),
                ("Failed", JobStatus.FAILED, 25),
                ("Recently succeeded", JobStatus.SUCCEEDED, 10))


@router.get("/jobs")
def job_list(request: Request, ctx: UICtx, status: str | None = None, kind: str | None = None,
             cursor: str | None = None, limit: Limit = 50) -> Response:
    scope = ctx.principal.scope
    with ctx.tx() as session:
        counts = jobs.counts(session, scope)
        if status:
            page = jobs.list_jobs(session, scope=scope, status=status, kind=kind or None,
                                  cursor=cursor, limit=limit)
            sections = []
        else:
            page = None
            sections = [(title, s, jobs.list_jobs(session, scope=scope, status=s,
                                                  kind=kind or None, limit=n).items)
                        for title, s, n in JOB_SECTIONS]
    return render(request, "jobs.html", counts=counts, status=status or None, page=page,
                  sections=sections, kind=kind, cursor=cursor)


@router.get("/audit")
def audit_log(
    request: Request, ctx: UICtx, namespace: str | None = None, actor: str | None = None,
    action: str | None = None, target: str | None = None, cursor: str | None = None,
    limit: Limit = 50,
) -> Response:
    with ctx.tx() as session:
        page = audit.list_events(session, namespaces=ctx.principal.scope,
                                 namespace=namespace or None, actor=actor or None,
                                 action=action or None, target=target or None,
                                 cursor=cursor, limit=limit)
    return render(request, "audit.html", page=page, cursor=cursor,
                  filters={"namespace": namespace or "", "actor": actor or "",
                           "action": action or "", "target": target or ""})
