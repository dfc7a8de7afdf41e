"""Read pages of serving pools: the pools a viewer may see, and one pool (settings, bound
channels, pinned versions, the desired set with each version's served name and verdict, and
the versions that left it). Same permissions and services as the API routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from registry.refs import check_namespace
from registry.services import desired_sets, pools
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
    return render(request, "pool.html", **values)
