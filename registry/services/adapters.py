"""Namespaces and adapters: create, get, list, describe, label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, select
from sqlalchemy.orm import Session

from registry.db import insert_ignore
from registry.errors import BadRequest, Conflict, NotFound
from registry.models import Adapter, AdapterLabel, AdapterVersion, Namespace, utcnow
from registry.refs import check_namespace, parse_adapter_name
from registry.services import audit
from registry.services.context import Actor
from registry.services.pagination import Page, paginate

LABEL_KEY_MAX = 128
LABEL_VALUE_MAX = 512
MAX_LABELS = 64


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels are short string key/value pairs; keys are non-empty and printable."""
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadRequest("label keys and values must be strings")
        if not key or len(key) > LABEL_KEY_MAX or not key.isprintable():
            raise BadRequest(f"label key {key!r} must be 1..{LABEL_KEY_MAX} printable characters")
        if len(value) > LABEL_VALUE_MAX or not value.isprintable():
            raise BadRequest(f"label {key!r} value must be at most {LABEL_VALUE_MAX} characters")
        out[key] = value
    return out


def parse_label_filters(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` (a query string's repeated ``label``) as the pairs a filter matches."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"label filter {item!r} must look like key=value")
        out[key] = value
    return out


def create_namespace(
    session: Session, actor: Actor, name: str, description: str = ""
) -> Namespace:
    """Create a namespace; Conflict if it exists."""
    check_namespace(name)
    if session.scalar(select(Namespace).where(Namespace.name == name)):
        raise Conflict(f"namespace {name!r} already exists")
    ns = Namespace(name=name, description=description)
    session.add(ns)
    session.flush()
    audit.record(session, actor, "namespace.created", "namespace", name, namespace=name)
    return ns


def ensure_namespace(session: Session, actor: Actor, name: str) -> Namespace:
    """Get a namespace, creating it (race-free) on first use."""
    check_namespace(name)
    ns = session.scalar(select(Namespace).where(Namespace.name == name))
    if ns is not None:
        return ns
    insert_ignore(session, Namespace, {"name": name, "description": "", "created_at": utcnow()})
    ns = session.scalars(select(Namespace).where(Namespace.name == name)).one()
    audit.record(session, actor, "namespace.created", "namespace", name, namespace=name)
    return ns


def get_namespace(session: Session, name: str) -> Namespace:
    ns = session.scalar(select(Namespace).where(Namespace.name == name))
    if ns is None:
        raise NotFound(f"namespace {name!r} not found")
    return ns


def list_namespaces(
    session: Session, *, scope: Sequence[str] | None = None, cursor: str | None = None,
    limit: int = 100,
) -> Page[Namespace]:
    stmt = select(Namespace)
    if scope is not None:
        stmt = stmt.where(Namespace.name.in_(scope))
    return paginate(
        session, stmt, Namespace.name, Namespace.id, descending=False, cursor=cursor,
        limit=limit, sort_value=lambda n: n.name,
    )


def _adapter_stmt(namespace: str, name: str) -> Select[Any]:
    return (
        select(Adapter)
        .join(Namespace, Adapter.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, Adapter.name == name)
    )


def get_adapter(session: Session, full_name: str, *, for_update: bool = False) -> Adapter:
    """Get ``ns/name``; ``for_update`` takes the adapter row lock (version counter)."""
    ns, name = parse_adapter_name(full_name)
    stmt = _adapter_stmt(ns, name)
    if for_update:  # populate_existing: an adapter this session loaded before is re-read too
        stmt = stmt.with_for_update(of=Adapter).execution_options(populate_existing=True)
    adapter: Adapter | None = session.scalar(stmt)
    if adapter is None:
        raise NotFound(f"adapter {full_name!r} not found")
    return adapter


def ensure_adapter(
    session: Session, actor: Actor, full_name: str, *, description: str | None = None
) -> Adapter:
    """Get ``ns/name`` under its row lock, creating namespace and adapter on first push."""
    ns_name, name = parse_adapter_name(full_name)
    ns = ensure_namespace(session, actor, ns_name)
    now = utcnow()
    if session.scalar(_adapter_stmt(ns_name, name)) is None:
        insert_ignore(session, Adapter, {
            "namespace_id": ns.id, "name": name, "description": description or "",
            "next_version": 1, "created_at": now, "updated_at": now,
        })
        audit.record(session, actor, "adapter.created", "adapter", full_name, namespace=ns_name)
    return get_adapter(session, full_name, for_update=True)


def update_adapter(
    session: Session, actor: Actor, full_name: str, *, description: str | None = None,
    labels: Mapping[str, str] | None = None, remove_labels: Sequence[str] = (),
) -> Adapter:
    """Change the description and labels (labels merge; ``remove_labels`` deletes keys)."""
    adapter = get_adapter(session, full_name, for_update=True)
    changes: dict[str, Any] = {}
    if description is not None and description != adapter.description:
        adapter.description = description
        changes["description"] = description
    if labels or remove_labels:
        merged = {lab.key: lab.value for lab in adapter.labels}
        merged.update(check_labels(labels or {}))
        for key in remove_labels:
            merged.pop(key, None)
        adapter.labels = [AdapterLabel(key=k, value=v) for k, v in sorted(merged.items())]
        changes["labels"] = merged
    if changes:
        adapter.updated_at = utcnow()
        audit.record(session, actor, "adapter.updated", "adapter", full_name,
                     namespace=adapter.namespace.name, payload=changes)
    session.flush()
    return adapter


KEEP_LAST_MAX = 100_000


def set_retention(session: Session, actor: Actor, full_name: str, keep_last: int | None
                  ) -> Adapter:
    """Keep the newest ``keep_last`` versions (plus any a channel serves; see
    :func:`registry.services.gc.apply_retention`); None keeps every version."""
    if keep_last is not None and not 1 <= keep_last <= KEEP_LAST_MAX:
        raise BadRequest(f"keep_last must be between 1 and {KEEP_LAST_MAX}, or null")
    adapter = get_adapter(session, full_name, for_update=True)
    adapter.keep_last = keep_last
    audit.record(session, actor, "adapter.retention", "adapter", full_name,
                 namespace=adapter.namespace.name, payload={"keep_last": keep_last})
    return adapter


ADAPTER_SORTS = ("updated_at", "name")


@dataclass(frozen=True)
class AdapterFilter:
    """Which adapters a listing shows. The API route, the UI page and (through the API) the
    CLI all build one and call :func:`list_adapters`, so a filter means the same everywhere."""

    scope: Sequence[str] | None = None  # the namespaces the caller may read; None: every one
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # every pair must match
    search: str | None = None  # a substring of the name or the description, any case
    base: str | None = None  # ``hub_id[@revision]`` that some version was trained on
    sort: str = "updated_at"  # newest push first, or "name"


def list_adapters(
    session: Session, flt: AdapterFilter | None = None, *, cursor: str | None = None,
    limit: int = 50,
) -> Page[Adapter]:
    """One keyset page of the adapters ``flt`` selects, in its sort order."""
    flt = flt or AdapterFilter()
    stmt = _filtered(flt)
    if flt.sort == "name":
        return paginate(session, stmt, Adapter.name, Adapter.id, descending=False,
                        cursor=cursor, limit=limit, sort_value=lambda a: a.name)
    if flt.sort != "updated_at":
        raise BadRequest(f"unknown sort {flt.sort!r}: use {' or '.join(ADAPTER_SORTS)}")
    return paginate(session, stmt, Adapter.updated_at, Adapter.id, descending=True,
                    cursor=cursor, limit=limit, sort_value=lambda a: a.updated_at)


def _filtered(flt: AdapterFilter) -> Select[Any]:
    stmt = select(Adapter).join(Namespace, Adapter.namespace_id == Namespace.id)
    if flt.scope is not None:
        stmt = stmt.where(Namespace.name.in_(flt.scope))
    if flt.namespace:
        stmt = stmt.where(Namespace.name == flt.namespace)
    for key, value in flt.labels.items():
        stmt = stmt.where(exists().where(
            AdapterLabel.adapter_id == Adapter.id, AdapterLabel.key == key,
            AdapterLabel.value == value,
        ))
    if flt.search:  # icontains: LIKE is case-sensitive on PostgreSQL and not on SQLite
        stmt = stmt.where(Adapter.name.icontains(flt.search, autoescape=True)
                          | Adapter.description.icontains(flt.search, autoescape=True))
    if flt.base:
        stmt = stmt.where(exists().where(_trained_on(flt.base)))
    return stmt


def _trained_on(base: str) -> ColumnElement[bool]:
    hub_id, _, revision = base.partition("@")
    on_base = (AdapterVersion.adapter_id == Adapter.id) & (AdapterVersion.base_hub_id == hub_id)
    if revision:
        on_base = on_base & (AdapterVersion.base_revision == revision)
    return on_base
