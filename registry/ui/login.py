"""Signing in with an API token and signing out (see :mod:`registry.ui.session`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse

from registry.db import transaction
from registry.errors import Unauthenticated
from registry.services import tokens
from registry.ui import session
from registry.ui.rendering import UIRoute, render

router = APIRouter(prefix="/ui", route_class=UIRoute, include_in_schema=False)
CheckedForm = Annotated[dict[str, str], Depends(session.checked_form)]


async def origin_form(request: Request) -> dict[str, str]:
    """The sign-in form: there is no session yet to derive a CSRF token from, so the
    origin check (and SameSite=Strict on every cookie) is what stops cross-site posts."""
    session.check_origin(request)
    return await session.read_form(request)


OriginForm = Annotated[dict[str, str], Depends(origin_form)]


@router.get("/login")
def login_page(request: Request, target: Annotated[str | None, Query(alias="next")] = None
               ) -> Response:
    return render(request, "login.html", next=session.safe_next(target), error=None)


@router.post("/login")
def login(request: Request, form: OriginForm) -> Response:
    token = form.get("token", "").strip()
    target = session.safe_next(form.get("next"))
    try:
        with transaction(request.app.state.lorareg.sessions) as s:
            tokens.authenticate(s, token)
    except Unauthenticated as exc:
        return render(request, "login.html", status_code=401, next=target, error=exc.detail)
    response = RedirectResponse(target, status_code=303)
    session.set_cookie(response, request, session.TOKEN_COOKIE, token)
    session.clear_cookie(response, request, session.NONCE_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, form: CheckedForm) -> Response:
    response = RedirectResponse("/ui/login?done=signedout", status_code=303)
    session.clear_cookie(response, request, session.TOKEN_COOKIE)
    return response
