"""The web UI: server-rendered pages under ``/ui`` over the same services as the API.

:func:`install` adds it to the API app: static files first, then the pages and actions, then
a catch-all that answers any other ``/ui`` path with an HTML 404 page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from registry.errors import NotFound
from registry.ui import actions, login, pages, pool_pages
from registry.ui.rendering import UICtx, UIRoute

STATIC_DIR = Path(__file__).parent / "static"
fallback = APIRouter(route_class=UIRoute, include_in_schema=False)


@fallback.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@fallback.api_route("/ui/{path:path}", methods=["GET", "POST"])
def unknown(path: str, ctx: UICtx) -> None:
    raise NotFound(f"there is no page at /ui/{path}")


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    for router in (login.router, pages.router, pool_pages.router, actions.router, fallback):
        app.include_router(router)
