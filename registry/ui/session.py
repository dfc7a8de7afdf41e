"""The browser session of the UI: the token cookie, CSRF tokens and the Origin check.

* Signing in stores the API token in the ``lorareg_token`` cookie: ``HttpOnly`` (scripts
  cannot read it), ``SameSite=Strict`` (other sites' requests do not carry it), ``Path=/ui``
  (only UI requests carry it: the JSON API never sees it, so a browser session cannot be used
  against the API from another page) and ``Secure`` when the request came over HTTPS.
  ``registry.web.context.authorize`` reads it, so the UI has the same roles and namespace scopes
  as the API.
* Every form that changes something carries a CSRF token, ``HMAC-SHA256(key=sha256(session
  secret), "lorareg-ui-csrf")``, where the session secret is the API token the request
  authenticates with. Another site cannot read the cookie, so it cannot compute the token;
  the token reveals nothing about the API token. Without a token (embedded mode, no sign-in)
  the session secret is a random nonce kept in the ``lorareg_csrf`` cookie (same flags).
* Every POST must also come from our own origin: its ``Origin`` (or, failing that,
  ``Referer``) must name the scheme, host and port the request was sent to. The scheme is the
  request's own (behind a proxy that terminates TLS, uvicorn's ``--proxy-headers`` takes it
  from ``X-Forwarded-Proto``), so a page on ``http://host`` cannot post to ``https://host``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl, urlsplit

from fastapi import Request, Response

from registry.errors import BadRequest, PayloadTooLarge, PermissionDenied
from registry.web.context import TOKEN_COOKIE as TOKEN_COOKIE  # the UI sets what it reads
from registry.web.context import first_headers
from registry.web.context import presented_token as _presented_token

NONCE_COOKIE = "lorareg_csrf"
COOKIE_PATH = "/ui"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
_CSRF_CONTEXT = b"lorareg-ui-csrf"


def presented_token(request: Request) -> str | None:
    """The API token this request authenticates with (the one reader ``get_ctx`` uses)."""
    return _presented_token(first_headers(request.scope))


def session_secret(request: Request) -> str | None:
    return presented_token(request) or request.cookies.get(NONCE_COOKIE) or None


def csrf_for(secret: str) -> str:
    key = hashlib.sha256(secret.encode()).digest()
    return hmac.new(key, _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=is_https(request))


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=is_https(request))


def new_nonce() -> str:
    """A fresh CSRF secret for a browser without a token (set with :func:`set_cookie`)."""
    return secrets.token_urlsafe(32)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of a URL, the port made explicit; None if it is unreadable."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number, or a broken IPv6 address
        return None
    return (scheme, parts.hostname, port) if parts.hostname else None


def check_origin(request: Request) -> None:
    """Refuse a POST that does not come from a page of this server (same scheme, host and
    port as the request itself)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        raise PermissionDenied("refused: the request names no Origin (cross-site request?)")
    own = origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}")
    if own is None or origin_of(source) != own:
        raise PermissionDenied("refused: the request comes from another origin")


def parse_form(body: bytes) -> dict[str, str]:
    if len(body) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"form body exceeds {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("form body is not UTF-8") from exc
    try:
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=100))
    except ValueError as exc:  # more fields than any of our forms has
        raise BadRequest("form has too many fields") from exc


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (the UI's forms use no other encoding)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest("expected an HTML form (application/x-www-form-urlencoded)")
    return parse_form(await request.body())


async def checked_form(request: Request) -> dict[str, str]:
    """A dependency for every state-changing POST: same origin, then a valid CSRF token."""
    check_origin(request)
    form = await read_form(request)
    secret = session_secret(request)
    sent = form.get(CSRF_FIELD, "")
    if secret is None or not hmac.compare_digest(sent.encode(), csrf_for(secret).encode()):
        raise PermissionDenied("refused: the form's CSRF token is missing or wrong; reload "
                               "the page and try again")
    return form


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of the UI (no open redirect)."""
    inside = target == "/ui" or target.startswith(("/ui/", "/ui?")) if target else False
    if target and inside and "\\" not in target and target.isprintable() and " " not in target:
        return target
    return "/ui"
