"""Read pages of serving pools: the pools a viewer may see, and one pool (settings, bound
channels, pinned versions, the desired set with each version's served name and verdict, the
versions that left it, and its replicas: a replicas x versions matrix of what each reports,
drift highlighted). Same permissions and services as the API routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from registry.refs import check_namespace
from registry.services import desired_sets, pools, residency
from registry.ui.rendering import UICtx, UIRoute, render

router = APIRouter(prefix="/ui/pools", route_class=UIRoute, include_in_schema=False)


@router.get("")
def pool_list(request: Request, ctx: UICtx, namespace: str | None = None) -> Response:
    if namespace:
        check_namespace(namespace)
    with ctx.tx() as session:
        rows = [(pool, desired_sets.bound_channels(session, pool))
                for pool in pools.list_pools(session, ctx.principal.scope, namespace or None)]
    return render(request, "pools.html", rows=rows, namespace=namespace or "")


@router.get("/{ns}/{name}")
def pool_page(request: Request, ns: str, name: str, ctx: UICtx) -> Response:
    check_namespace(ns)
    ctx.require("read", ns)
    with ctx.tx() as session:
        pool = pools.get_pool(session, f"{ns}/{name}")
        values: dict[str, Any] = {
            "pool": pool, "settings": pools.describe(pool),
            "channels": desired_sets.bound_channels(session, pool),
            "pinned": desired_sets.pinned(session, pool),
            "members": desired_sets.desired(session, ctx.store, pool),
            "set_problems": desired_sets.set_problems(session, pool),
            "left": desired_sets.left(session, pool, limit=50)}
        fleet = residency.status(session, pool)
        values.update(fleet=fleet, columns=columns(fleet),
                      cells={r.row.replica_id: cells(r, columns(fleet)) for r in fleet.replicas})
    return render(request, "pool.html", **values)


@dataclass(frozen=True)
class Column:
    """A version of the residency matrix: desired, draining, or held by a replica though
    the pool does not want it (``ref`` None: it names no version of the namespace)."""

    served_name: str
    ref: str | None
    role: str  # desired | draining | unwanted


@dataclass(frozen=True)
class Cell:
    label: str  # loaded, loading, pending, or a drift kind
    drift: bool
    title: str


def columns(fleet: residency.PoolStatus) -> list[Column]:
    want = fleet.expected
    cols = [Column(n, desired_sets.ref(e.version), "desired")
            for n, e in sorted(want.desired.items(), key=lambda i: desired_sets.ref(i[1].version))]
    cols += [Column(n, desired_sets.ref(e.version), "draining")
             for n, e in sorted(want.draining.items()) if want.drain_ends(e) > want.now]
    seen = {c.served_name for c in cols}
    extra = sorted({a.served_name for r in fleet.replicas for a in r.row.adapters} - seen)
    refs = {n: ref for r in fleet.replicas for n, ref in r.refs.items()}
    return cols + [Column(n, refs.get(n), "unwanted") for n in extra]


def cells(view: residency.ReplicaView, cols: list[Column]) -> list[Cell | None]:
    """What the replica reports for each column: its drift first, then its state."""
    drift = {d.served_name: d for d in view.drift}
    held = {a.served_name: a for a in view.row.adapters}
    out: list[Cell | None] = []
    for col in cols:
        name = col.served_name
        if name in drift:
            d = drift[name]
            out.append(Cell(d.kind.value, True, d.detail))
        elif name in held:
            out.append(Cell(held[name].state.value, False, held[name].digest or ""))
        elif name in view.pending:
            out.append(Cell("pending", False, "desired, not reported yet"))
        else:
            out.append(None)
    return out
