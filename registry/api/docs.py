"""The interactive API docs at ``/docs`` (Swagger UI), served entirely from this server.

Swagger UI's files come from the installed ``fastapi-offline`` package (it bundles the
``swagger-ui-dist`` build), not from a CDN: the docs work offline, and no third party can run
script on our origin (FastAPI's default page loads them from a public CDN without integrity
checks). The page starts Swagger UI with a script file of ours rather than inline script, so
its Content-Security-Policy allows scripts from this origin only. ReDoc is not served.
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse

from registry.errors import NotFound

PREFIX = "/docs/assets"
SWAGGER_DIST = Path(str(files("fastapi_offline").joinpath("static")))
OWN = Path(__file__).parent / "static"
JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
#: Every file the page uses: name under PREFIX -> (file, media type). Nothing else is served.
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (SWAGGER_DIST / "swagger-ui-bundle.js", JS),
    "swagger-ui.css": (SWAGGER_DIST / "swagger-ui.css", CSS),
    "favicon.png": (SWAGGER_DIST / "favicon.png", "image/png"),
    "swagger-init.js": (OWN / "swagger-init.js", JS),
}
# Swagger UI sets styles from script (allowed by style-src through the CSSOM) and shows
# data: images from its stylesheet; it talks to this origin only (openapi.json, "Try it out").
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    text = PAGE.format(title=html.escape(f"{request.app.title} API"),
                       assets=html.escape(root + PREFIX),
                       openapi=html.escape(root + (request.app.openapi_url or "")))
    return HTMLResponse(text, headers={**HEADERS, "Cache-Control": "no-cache"})


@router.get(PREFIX + "/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"there is no docs asset {name!r}")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers={**HEADERS, "Cache-Control":
                                                             "public, max-age=86400"})


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets; the app must be built with ``docs_url=None`` and
    ``redoc_url=None`` (FastAPI's own pages load Swagger UI and ReDoc from a CDN)."""
    app.include_router(router)
