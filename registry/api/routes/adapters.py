"""Namespaces, adapters, versions and metrics. Routers only translate HTTP <-> services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.orm import Session

from registry.api import problems
from registry.api import schemas as s
from registry.errors import BadRequest
from registry.manifest import FileEntry
from registry.models import AdapterVersion
from registry.refs import Ref, check_namespace, parse_adapter_name, parse_ref
from registry.services import adapters, metrics, versions
from registry.services.adapters import AdapterFilter
from registry.services.adapters import parse_label_filters as parse_labels
from registry.services.metrics import MetricInput
from registry.services.pagination import Page
from registry.services.versions import PushRequest, VersionQuery, parse_metric_filter
from registry.web.context import Ctx, CtxDep

router = APIRouter(prefix="/api/v1", tags=["adapters"])
SEARCH_DOC = "Only adapters whose name or description contains this text (any case)."
BASE_DOC = "Only adapters with a version trained on this base: `hub_id` or `hub_id@revision`."
Limit = Annotated[int, Query(ge=1, le=500)]


def version_out(session: Session, v: AdapterVersion, created: bool | None = None) -> s.VersionOut:
    latest = metrics.latest(session, [v.id])[v.id]
    config = versions.stored_configs(session, [v.id])[v.id]
    return s.version_out(v, latest, config, created)


def versions_page(session: Session, page: Page[AdapterVersion]) -> s.Page[s.VersionOut]:
    ids = [v.id for v in page.items]
    latest, configs = metrics.latest(session, ids), versions.stored_configs(session, ids)
    items = [s.version_out(v, latest[v.id], configs[v.id]) for v in page.items]
    return s.Page[s.VersionOut](items=items, next_cursor=page.next_cursor)


def ref_of(ns: str, name: str, sel: str) -> Ref:
    """The version reference of a ``/adapters/{ns}/{name}/versions/{sel}`` path."""
    parse_adapter_name(f"{ns}/{name}")
    if sel == "latest":
        return Ref(ns, name)
    return parse_ref(f"{ns}/{name}@{sel}")


@router.get("/namespaces", response_model=s.Page[s.NamespaceOut])
def list_namespaces(ctx: CtxDep, cursor: str | None = None, limit: Limit = 100
                    ) -> s.Page[s.NamespaceOut]:
    with ctx.tx() as session:
        page = adapters.list_namespaces(session, scope=ctx.principal.scope, cursor=cursor,
                                        limit=limit)
        return s.Page[s.NamespaceOut](items=[s.namespace_out(n) for n in page.items],
                                     next_cursor=page.next_cursor)


@router.post("/namespaces", response_model=s.NamespaceOut, status_code=201,
             responses=problems.responses(409))
def create_namespace(body: s.NamespaceIn, ctx: CtxDep) -> s.NamespaceOut:
    ctx.require_global("admin")
    with ctx.tx() as session:
        return s.namespace_out(
            adapters.create_namespace(session, ctx.actor, body.name, body.description))


@router.get("/adapters", response_model=s.Page[s.AdapterOut])
def list_adapters(
    ctx: CtxDep, namespace: str | None = None, label: Annotated[list[str], Query()] = [],  # noqa: B006
    q: Annotated[str | None, Query(description=SEARCH_DOC)] = None,
    base: Annotated[str | None, Query(description=BASE_DOC)] = None,
    sort: str = "updated_at", cursor: str | None = None, limit: Limit = 50,
) -> s.Page[s.AdapterOut]:
    """Adapters the caller may read, newest push first (``sort=name``: by name); the same
    service and filters as the UI's adapter list."""
    if namespace:
        check_namespace(namespace)
    flt = AdapterFilter(scope=ctx.principal.scope, namespace=namespace,
                        labels=parse_labels(label), search=q, base=base, sort=sort)
    with ctx.tx() as session:
        page = adapters.list_adapters(session, flt, cursor=cursor, limit=limit)
        return s.Page[s.AdapterOut](items=[s.adapter_out(a) for a in page.items],
                                   next_cursor=page.next_cursor)


@router.get("/adapters/{ns}/{name}", response_model=s.AdapterOut)
def get_adapter(ns: str, name: str, ctx: CtxDep) -> s.AdapterOut:
    ctx.require("read", ns)
    with ctx.tx() as session:
        return s.adapter_out(adapters.get_adapter(session, f"{ns}/{name}"))


@router.patch("/adapters/{ns}/{name}", response_model=s.AdapterOut)
def patch_adapter(ns: str, name: str, body: s.AdapterPatch, ctx: CtxDep) -> s.AdapterOut:
    ctx.require("write", ns)
    with ctx.tx() as session:
        return s.adapter_out(adapters.update_adapter(
            session, ctx.actor, f"{ns}/{name}", description=body.description,
            labels=body.labels, remove_labels=body.remove_labels,
        ))


def _query(
    adapter: str | None, namespace: str | None, ctx: Ctx, status_: str | None,
    label: list[str], base: str | None, metric: list[str], sort: str, order: str,
) -> VersionQuery:
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    return VersionQuery(
        adapter=adapter, namespace=namespace, scope=ctx.principal.scope, status=status_,
        labels=parse_labels(label), base=base,
        metrics=[parse_metric_filter(m) for m in metric], sort=sort, descending=order == "desc",
    )


@router.get("/adapters/{ns}/{name}/versions", response_model=s.Page[s.VersionOut])
def list_adapter_versions(
    ns: str, name: str, ctx: CtxDep, status: str | None = None,
    label: Annotated[list[str], Query()] = [],  # noqa: B006
    base: str | None = None, metric: Annotated[list[str], Query()] = [],  # noqa: B006
    sort: str = "version", order: str = "desc", cursor: str | None = None, limit: Limit = 50,
) -> s.Page[s.VersionOut]:
    ctx.require("read", ns)
    q = _query(f"{ns}/{name}", None, ctx, status, label, base, metric, sort, order)
    with ctx.tx() as session:
        return versions_page(session, versions.list_versions(session, q, cursor=cursor,
                                                             limit=limit))


@router.get("/versions", response_model=s.Page[s.VersionOut])
def list_all_versions(
    ctx: CtxDep, namespace: str | None = None, status: str | None = None,
    label: Annotated[list[str], Query()] = [],  # noqa: B006
    base: str | None = None, metric: Annotated[list[str], Query()] = [],  # noqa: B006
    sort: str = "version", order: str = "desc", cursor: str | None = None, limit: Limit = 50,
) -> s.Page[s.VersionOut]:
    q = _query(None, namespace, ctx, status, label, base, metric, sort, order)
    with ctx.tx() as session:
        return versions_page(session, versions.list_versions(session, q, cursor=cursor,
                                                             limit=limit))


@router.get("/adapters/{ns}/{name}/versions/{sel}", response_model=s.VersionOut)
def get_version(ns: str, name: str, sel: str, ctx: CtxDep) -> s.VersionOut:
    ctx.require("read", ns)
    with ctx.tx() as session:
        return version_out(session, versions.get_version(session, ref_of(ns, name, sel)))


@router.post("/adapters/{ns}/{name}/versions", response_model=s.VersionOut,
             status_code=201,
             responses={200: {"model": s.VersionOut}, **problems.responses(409, 503)})
def push_version(
    ns: str, name: str, body: s.VersionIn, ctx: CtxDep, response: Response
) -> s.VersionOut:
    ctx.require("write", ns)
    req = PushRequest(
        adapter=f"{ns}/{name}",
        files=[FileEntry(f.path, f.digest, f.size) for f in body.files],
        base_hub_id=body.base.hub_id, base_revision=body.base.revision,
        metrics=[MetricInput(m.key, m.value, m.dataset, m.split) for m in body.metrics],
        labels=body.labels, provenance=body.provenance.model_dump(exclude_none=True),
        description=body.description, idempotency_key=body.idempotency_key,
        blob_view=ctx.blob_view,
        header_limits=ctx.state.settings.safetensors_limits,
    )
    with ctx.tx() as session:
        result = versions.push_version(session, ctx.store, ctx.actor, req)
        out = version_out(session, result.version, result.created)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return out


@router.post("/adapters/{ns}/{name}/versions/{sel}/yank", response_model=s.VersionOut,
             responses=problems.responses(409))
def yank(ns: str, name: str, sel: str, body: s.YankIn, ctx: CtxDep) -> s.VersionOut:
    ctx.require("write", ns)
    with ctx.tx() as session:
        v = versions.yank(session, ctx.actor, ref_of(ns, name, sel), body.reason)
        return version_out(session, v)


@router.post("/adapters/{ns}/{name}/versions/{sel}/unyank", response_model=s.VersionOut,
             responses=problems.responses(409))
def unyank(ns: str, name: str, sel: str, body: s.UnyankIn, ctx: CtxDep) -> s.VersionOut:
    ctx.require("write", ns)
    with ctx.tx() as session:
        v = versions.unyank(session, ctx.actor, ref_of(ns, name, sel), body.reason)
        return version_out(session, v)


@router.post("/adapters/{ns}/{name}/versions/{sel}/metrics", response_model=s.MetricsOut,
             status_code=201)
def log_metrics(ns: str, name: str, sel: str, body: s.MetricsIn, ctx: CtxDep
                ) -> s.MetricsOut:
    ctx.require("write", ns)
    with ctx.tx() as session:
        v = versions.get_version(session, ref_of(ns, name, sel))
        rows = metrics.log_metrics(session, ctx.actor, v, [
            MetricInput(m.key, m.value, m.dataset, m.split) for m in body.metrics])
        return s.MetricsOut(metrics=[s.metric_out(m) for m in rows])


@router.get("/adapters/{ns}/{name}/versions/{sel}/metrics",
            response_model=s.Items[s.MetricOut])
def metric_history(ns: str, name: str, sel: str, ctx: CtxDep) -> s.Items[s.MetricOut]:
    ctx.require("read", ns)
    with ctx.tx() as session:
        v = versions.get_version(session, ref_of(ns, name, sel))
        return s.Items[s.MetricOut](
            items=[s.metric_out(m) for m in metrics.history(session, v)])
