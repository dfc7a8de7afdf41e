"""Templates, filters and the page/error responses of the UI.

Jinja2 autoescapes every template (``autoescape=True`` for all names, not only ``.html``):
a value is HTML only when it is built as ``Markup`` by our code (the SVG charts).
Undefined template variables are errors (``StrictUndefined``), so tests catch template typos.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.exceptions import HTTPException

from registry import __version__, statuses
from registry.errors import BadRequest, NotFound, RegistryError, Unauthenticated
from registry.services.tokens import Principal
from registry.ui import session
from registry.units import human_size
from registry.web.context import Ctx, CtxDep

log = logging.getLogger("lorareg.ui")
TEMPLATE_DIR = Path(__file__).parent / "templates"
SECURITY_HEADERS = {
    # No inline script or style anywhere: even a missed escape could not run a script.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",  # the action buttons must not be clickjacked
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Messages shown after an action redirects back (?done=<code>): never text from the URL.
NOTICES = {
    "aborted": "Rollout aborted; the stable version keeps serving.",
    "paused": "Rollout paused.", "resumed": "Rollout resumed.",
    "rolledback": "Channel rolled back.", "promoted": "Version promoted.",
    "canary": "Canary rollout started.", "yanked": "Version yanked.",
    "cancelled": "Job cancellation requested.", "signedout": "Signed out.",
}


def short(value: str | None, n: int = 12) -> str:
    return (value or "")[:n]


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    text = f"{abs(seconds)} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            text = f"{abs(seconds) // size} {unit}"
            break
    return f"in {text}" if seconds < 0 else f"{text} ago"


def percent(basis_points: int | None) -> str:
    return f"{(basis_points or 0) / 100:g}%"


def metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def http_url(value: Any) -> str | None:
    """The value if it is an http(s) URL (so ``javascript:`` never becomes a link)."""
    if not isinstance(value, str):
        return None
    parts = urlsplit(value.strip())
    return value.strip() if parts.scheme in ("http", "https") and parts.netloc else None


_TARGET_RE = re.compile(
    r"^(?P<adapter>[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
    r"(?:@(?P<version>[0-9]+)|:(?P<channel>[a-z0-9_-]+))?$")


def target_href(target_type: str, target: str) -> str | None:
    """The page of an audit event's target (adapters, versions, channels), if it has one."""
    m = _TARGET_RE.match(target)
    if target_type not in ("adapter", "version", "channel") or m is None:
        return None
    if m["version"]:
        return f"/ui/adapters/{m['adapter']}/versions/{m['version']}"
    if m["channel"]:
        return f"/ui/adapters/{m['adapter']}/channels/{m['channel']}"
    return f"/ui/adapters/{m['adapter']}"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))


def with_query(request: Request, **changes: Any) -> str:
    """The current path and query with ``changes`` applied (None or "" drops a key)."""
    keep = [(k, v) for k, v in request.query_params.multi_items()
            if k not in changes and k != "done"]
    for key, value in changes.items():
        if isinstance(value, list | tuple):
            keep.extend((key, str(v)) for v in value if v not in (None, ""))
        elif value not in (None, ""):
            keep.append((key, str(value)))
    return request.url.path + ("?" + urlencode(keep) if keep else "")


ENV = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(short=short, size=human_size, when=when, iso=iso, ago=ago,
                   percent=percent, metric=metric, http_url=http_url, pretty_json=pretty_json,
                   compact_json=compact_json)
ENV.globals.update(app_version=__version__, target_href=target_href, **statuses.NAMES)


@dataclass
class Viewer:
    """Who looks at a page, what they may do, and the CSRF token their forms carry."""

    principal: Principal | None
    csrf: str
    auth_required: bool

    def can(self, permission: str, namespace: str | None = None) -> bool:
        return self.principal is not None and self.principal.can(permission, namespace)

    @property
    def signed_in(self) -> bool:
        return self.principal is not None and self.principal.token_id is not None


def ui_ctx(request: Request, ctx: CtxDep) -> Ctx:
    """The API's request context, remembered so that error pages know the viewer too."""
    request.state.ui_ctx = ctx
    return ctx


UICtx = Annotated[Ctx, Depends(ui_ctx)]


def _viewer_ctx(request: Request) -> Ctx | None:
    ctx = getattr(request.state, "ui_ctx", None)
    return ctx if isinstance(ctx, Ctx) else None


def _auth_required(request: Request) -> bool:
    return bool(request.app.state.lorareg.auth_required)


def render(request: Request, template: str, *, status_code: int = 200, **values: Any
           ) -> Response:
    """Render a page for the request's viewer (see ``pages.ui_ctx``)."""
    ctx = _viewer_ctx(request)
    secret, nonce = session.session_secret(request), None
    if secret is None:
        secret = nonce = session.new_nonce()
    viewer = Viewer(ctx.principal if ctx else None, session.csrf_for(secret),
                    _auth_required(request))
    notice = NOTICES.get(request.query_params.get("done", ""))
    html = ENV.get_template(template).render(
        request=request, viewer=viewer, notice=notice, csrf_field=session.CSRF_FIELD,
        with_query=lambda **kw: with_query(request, **kw), **values)
    response = HTMLResponse(html, status_code=status_code)
    if nonce is not None:
        session.set_cookie(response, request, session.NONCE_COOKIE, nonce)
    return response


def error_response(request: Request, exc: RegistryError) -> Response:
    """An HTML page for an expected error; a sign-in redirect for an unauthenticated GET."""
    if isinstance(exc, Unauthenticated) and request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response: Response = RedirectResponse(
            "/ui/login?" + urlencode({"next": target}), status_code=303)
        if session.presented_token(request):
            session.clear_cookie(response, request, session.TOKEN_COOKIE)
        return response
    return render(request, "error.html", status_code=exc.status_code, error=exc)


def _validation_detail(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid request')}"


class UIRoute(APIRoute):
    """Routes of the UI answer every failure with an HTML page (never a stack trace) and
    every response with the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except RegistryError as exc:
                response = error_response(request, exc)
            except RequestValidationError as exc:
                response = error_response(request, BadRequest(_validation_detail(exc)))
            except HTTPException as exc:
                error = NotFound("page not found") if exc.status_code == 404 else BadRequest(
                    str(exc.detail))
                response = error_response(request, error)
            except Exception:
                request_id = getattr(request.state, "request_id", None)
                log.exception("unhandled UI error", extra={"request_id": request_id})
                response = error_response(request, RegistryError(
                    f"internal error (request id {request_id}); see the server log"))
            response.headers.update(SECURITY_HEADERS)
            return response

        return route
