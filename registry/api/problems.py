"""One mapping from errors to RFC 7807 ``application/problem+json``; no stack traces leak.

Every problem document the API sends is built by :func:`render` from a class of
``registry.errors``: its own errors, request validation (``ValidationFailed``), Starlette's
404/405/416 (``errors.for_status``), body limits, numbers out of range and unexpected
failures (``RegistryError``, 500). ASGI middleware that answer before the app use :func:`send`.

The same module makes ``/openapi.json`` say so: every operation documents the problem
statuses it can answer with (see :func:`document`), with the ``Problem`` schema below and,
per status, the codes of the classes that answer with it.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import errors
from registry.errors import RegistryError
from registry.logs import request_id_var
from registry.web.context import get_ctx

log = logging.getLogger("lorareg.api")
PROBLEM = "application/problem+json"


class Rendered(NamedTuple):
    """A problem answer, ready to send: status, headers (with ``Content-Type``) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def render(error: RegistryError, headers: Mapping[str, str] | None = None) -> Rendered:
    """The answer for ``error``: its problem document, and the headers its class implies
    (``WWW-Authenticate``, ``Retry-After``, ...) over ``headers``."""
    # default=str: a helpful field that JSON cannot carry must not turn the answer into a 500.
    body = json.dumps(error.to_problem(), ensure_ascii=False, separators=(",", ":"),
                      default=str).encode()
    out = {**(headers or {}), **_error_headers(error), "Content-Type": PROBLEM}
    return Rendered(error.status_code, out, body)


def problem_response(error: RegistryError, headers: Mapping[str, str] | None = None
                     ) -> Response:
    status, out, body = render(error, headers)
    return Response(body, status_code=status, headers=out)


async def send(send: Send, error: RegistryError) -> None:
    """Answer ``error`` from ASGI middleware, before (or instead of) the app."""
    status, headers, body = render(error)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _error_headers(exc: RegistryError) -> dict[str, str]:
    if exc.status_code == 401:
        return {"WWW-Authenticate": "Bearer"}
    if exc.status_code == 408:
        # The client stalled mid-body: close rather than keep reading what it may still send.
        return {"Connection": "close"}
    if isinstance(exc, errors.RangeNotSatisfiable) and "size" in exc.extra:
        return {"Content-Range": f"bytes */{exc.extra['size']}"}
    if "retry_after" in exc.extra:
        return {"Retry-After": str(exc.extra["retry_after"])}
    return {}


def _registry_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return problem_response(exc)


def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = issues[0] if issues else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return problem_response(errors.ValidationFailed(detail, errors=issues))


def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own refusals (no route, wrong method, a body that is not
    JSON), and ours raised as HTTPException: the class of their status."""
    assert isinstance(exc, HTTPException)
    if exc.status_code < 400:  # not an error (e.g. a 304 raised as one): no problem body
        return Response(status_code=exc.status_code, headers=exc.headers)
    return problem_response(errors.for_status(exc.status_code)(str(exc.detail)), exc.headers)


def _out_of_range(_request: Request, exc: Exception) -> Response:
    # A number too large for the database or for a time span: the client's input, not ours.
    return problem_response(errors.BadRequest("a number in the request is out of range"))


def _unexpected(_request: Request, exc: Exception) -> Response:
    request_id = request_id_var.get()  # set by RequestObserver for the whole request
    # exc_info=exc: handlers may run outside the except block, where exception() logs nothing.
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return problem_response(RegistryError(
        f"internal error (request id {request_id}); see the server log"))


class InternalErrors:
    """ASGI middleware: an exception that no handler took becomes the problem+json 500 of
    :func:`_unexpected`, sent like any other answer, and the connection stays open.

    Starlette's own catch-all (``ServerErrorMiddleware``, where an ``Exception`` handler goes)
    answers too, but then re-raises, and uvicorn closes the connection of a request whose app
    raised: a client that reuses it gets ECONNRESET on its next request. An exception after
    the answer started cannot be answered: it goes on, and uvicorn closes the connection, as
    it must, since the body is incomplete.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            await _unexpected(Request(scope), exc)(scope, receive, send)


def install(app: FastAPI) -> None:
    """Error handlers, and the OpenAPI document's error answers. Call it before adding any
    middleware: :class:`InternalErrors` must be the innermost, so that the others (request
    metrics, body limits) see its 500 as an ordinary answer."""
    app.add_middleware(InternalErrors)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)
    app.add_exception_handler(Exception, _unexpected)  # outside our middleware: rare
    generate = app.openapi
    documented: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        # FastAPI caches its document (and rebuilds it when routes change); ours is that very
        # object, post-processed once.
        spec = generate()
        if not documented or documented[0] is not spec:
            documented[:] = [document(spec, app.routes)]
        return spec

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


# --- The OpenAPI document -------------------------------------------------------------------

SCHEMAS = "#/components/schemas/"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 7807 problem document: the body of every error answer. Errors add "
                   "the fields that help (e.g. `missing`, both fingerprints, `mismatches`).",
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri",
                 "description": "https://lorareg.dev/problems/<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "code": {"type": "string",
                 "description": "stable slug, one per class of registry.errors; each error "
                                "answer's examples name the codes of its status"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"$ref": SCHEMAS + "ValidationIssue"},
                   "description": "validation_failed: every invalid field"},
        "missing": {"type": "array", "items": {"type": "string"},
                    "description": "digests of blobs not uploaded yet"},
        "expected_fingerprint": {"type": "string"},
        "actual_fingerprint": {"type": "string"},
        "computed_fingerprint": {"type": "string"},
        "mismatches": {"type": "array", "items": {"type": "string"},
                       "description": "incompatible_base: every tensor that does not fit"},
        "problems": {"type": "array", "items": {"type": "string"},
                     "description": "invalid_adapter: what a serving profile refuses"},
        "expected": {"type": "string", "description": "digest_mismatch: the declared digest"},
        "actual": {"type": "string", "description": "digest_mismatch: the received digest"},
        "expected_size": {"type": "integer"},
        "received_size": {"type": "integer"},
        "stored_size": {"type": "integer",
                        "description": "corrupt_blob: the bytes the blob store holds"},
        "s3_code": {"type": "string"},
        "retry_after": {"type": "integer",
                        "description": "too_many_requests: seconds to wait (as Retry-After)"},
        "limit": {"type": "integer", "description": "too_many_requests: the limit reached"},
        "size": {"type": "integer",
                 "description": "range_not_satisfiable: the size of what was asked for"},
    },
    "additionalProperties": True,
}
VALIDATION_ISSUE_SCHEMA: dict[str, Any] = {
    "title": "ValidationIssue",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
    },
}
DESCRIPTIONS = {
    400: "Bad request: a malformed name, reference or digest, or a number out of range",
    401: "Authentication required: no valid API token",
    403: "Permission denied: the token's role or namespace does not allow this",
    404: "Not found",
    408: "Request timeout: the upload sent nothing for LORAREG_UPLOAD_READ_TIMEOUT_SECONDS",
    409: "Conflict with the current state (already exists, revision changed, yanked, busy)",
    413: "Request body over the server's limit",
    416: "Range not satisfiable",
    422: "Validation failed, or an invalid adapter / incompatible base",
    500: "Internal error; the detail names the request id to look up in the server log",
    503: "Blob storage or database unavailable",
}
# FastAPI's own description of its default 422 entry, replaced by ours.
_FASTAPI_422 = "Validation Error"


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the problem statuses it answers with besides those every
    operation of its shape gets (see :func:`_implied`). :func:`document` adds the body."""
    return {str(status): {"description": DESCRIPTIONS[status]} for status in statuses}


def header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _implied(operation: dict[str, Any], identifies_caller: bool) -> set[int]:
    """Problem statuses an operation can answer with because of its shape alone."""
    statuses = {500}  # _unexpected: any operation
    if identifies_caller:
        statuses |= {401, 403}  # get_ctx authenticates; ctx.require authorizes
    params = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if params or has_body:
        # 422: request validation; 400: references that do not parse, numbers out of range
        statuses |= {400, 422}
    if has_body:
        statuses.add(413)  # BodyLimit (registry/api/app.py)
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)  # a path names something that may not exist
    return statuses


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _callers(routes: Sequence[BaseRoute]) -> set[tuple[str, str]]:
    """``(method, path)`` of the operations that identify their caller (depend on get_ctx)."""
    # Newer FastAPI keeps included routers nested and flattens them (full paths, effective
    # dependencies) with iter_route_contexts; older ones list flat APIRoutes.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    out: set[tuple[str, str]] = set()
    candidates: Iterable[Any] = flatten(routes) if flatten else routes  # both duck-typed
    for route in candidates:
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant) and get_ctx in set(_calls(dependant)):
            out |= {(method.lower(), route.path_format) for method in route.methods or ()}
    return out


def _problem(status: int, declared: dict[str, Any]) -> dict[str, Any]:
    description = declared.get("description")
    if not description or description == _FASTAPI_422:
        description = DESCRIPTIONS.get(status, "Error")
    headers = dict(declared.get("headers", {}))
    if status == 401:
        headers["WWW-Authenticate"] = header("Bearer")
    body: dict[str, Any] = {"schema": {"$ref": SCHEMAS + "Problem"}}
    codes = _codes(status)
    if codes:
        body["examples"] = {code: {"$ref": EXAMPLES + code} for code in codes}
    out: dict[str, Any] = {"description": description, "content": {PROBLEM: body}}
    if headers:
        out["headers"] = headers
    return out


def document(spec: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Post-process FastAPI's OpenAPI document so that it tells the truth about errors and
    the answers FastAPI cannot infer (binary downloads, redirects, headers)."""
    callers = _callers(routes)
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            answers: dict[str, Any] = operation.setdefault("responses", {})
            elsewhere = copy.deepcopy(_ELSEWHERE.get((method, path), {}))
            for code, entry in elsewhere.get("responses", {}).items():
                merged = {**answers.get(code, {}), **entry}
                if not merged.get("content"):  # "content": {} -- an answer without a body
                    merged.pop("content", None)
                answers[code] = merged
            operation["parameters"] = [*operation.get("parameters", []),
                                       *elsewhere.get("parameters", [])]
            if not operation["parameters"]:
                del operation["parameters"]
            statuses = _implied(operation, (method, path) in callers)
            statuses |= {int(code) for code in answers if code.isdigit() and int(code) >= 400}
            for status in statuses:
                answers[str(status)] = _problem(status, answers.get(str(status), {}))
            operation["responses"] = dict(sorted(answers.items()))
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, replaced
        schemas.pop(unused, None)
    schemas["Problem"] = copy.deepcopy(PROBLEM_SCHEMA)
    schemas["ValidationIssue"] = copy.deepcopy(VALIDATION_ISSUE_SCHEMA)
    spec["components"]["schemas"] = dict(sorted(schemas.items()))
    spec["components"]["examples"] = {cls.code: _example(cls) for cls in _sent()}
    return spec


# --- Problem codes in the document: one example per class the API sends ----------------------

EXAMPLES = "#/components/examples/"


def _sent() -> list[type[RegistryError]]:
    """The classes whose problems the API sends (the client-side ones it never does)."""
    return [cls for cls in errors.classes() if not cls.client_side]


def _codes(status: int) -> list[str]:
    """The codes an answer with ``status`` may carry."""
    return [cls.code for cls in _sent() if cls.status_code == status]


def _example(cls: type[RegistryError]) -> dict[str, Any]:
    doc = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else cls.title
    return {"summary": f"{cls.code}: {cls.title}", "description": " ".join(doc.split()),
            "value": cls(cls.title).to_problem()}


# What FastAPI cannot infer for the blob and resolve routes (registry/api/routes/blobs.py and
# resolve.py), which answer with their own Response objects. Kept here, by operation, so that
# the whole error and media-type story of the document is in one place.
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_BLOB_HEADERS = {
    "ETag": header('the quoted sha256 digest, e.g. "ab12…"'),
    "Accept-Ranges": header("bytes"),
    "Content-Length": header("bytes in this answer"),
    "Cache-Control": header("public, max-age=31536000, immutable"),
}
_PART_HEADERS = {**_BLOB_HEADERS, "Content-Range": header("bytes <first>-<last>/<size>")}
_REDIRECT = {"description": "Presigned URL of the blob store (LORAREG_PRESIGN_DOWNLOADS)",
             "headers": {"Location": header("the presigned URL")}}
_UNSATISFIABLE = {"description": DESCRIPTIONS[416],
                  "headers": {"Content-Range": header("bytes */<size>")}}
_RANGE = {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "one range, `bytes=<first>-[<last>]` or `bytes=-<suffix>`; "
                         "anything else is ignored (RFC 9110)"}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False,
                  "schema": {"type": "string"}, "description": "the ETag you hold: 304"}
_BLOB_NOT_MODIFIED = {"description": "Not modified: If-None-Match named this blob (decided "
                                     "before Range)",
                      "headers": {"ETag": _BLOB_HEADERS["ETag"]}}
_RESOLVE_HEADERS = {"ETag": header("the channel's state; changes with every promotion"),
                    "Cache-Control": header("no-cache")}
_ELSEWHERE: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/api/v1/blobs/{digest}"): {
        "parameters": [_RANGE, _IF_NONE_MATCH],
        "responses": {
            "200": {"description": "The blob's bytes", "headers": _BLOB_HEADERS,
                    "content": _BINARY},
            "206": {"description": "The requested range of the blob", "headers": _PART_HEADERS,
                    "content": _BINARY},
            "304": _BLOB_NOT_MODIFIED, "307": _REDIRECT, "416": _UNSATISFIABLE,
            **responses(503)},
    },
    ("head", "/api/v1/blobs/{digest}"): {
        "parameters": [_RANGE, _IF_NONE_MATCH],
        "responses": {
            "200": {"description": "The blob exists (headers only)", "headers": _BLOB_HEADERS,
                    "content": {}},
            "206": {"description": "The range exists (headers only)", "headers": _PART_HEADERS,
                    "content": {}},
            "304": _BLOB_NOT_MODIFIED, "307": _REDIRECT, "416": _UNSATISFIABLE,
            **responses(503)},
    },
    ("put", "/api/v1/blobs/{digest}"): {"responses": {
        **responses(408, 503),
        "429": {"description": "Too many uploads of this token in flight "
                               "(LORAREG_MAX_CONCURRENT_UPLOADS_PER_TOKEN); nothing was read",
                "headers": {"Retry-After": header("seconds to wait before retrying")}}}},
    ("get", "/api/v1/resolve/{ns}/{target}"): {
        "parameters": [{**_IF_NONE_MATCH,
                        "description": "the ETag of your last answer: 304 while the channel "
                                       "is unchanged (never with presigned URLs)"}],
        "responses": {
            "200": {"headers": _RESOLVE_HEADERS},
            "304": {"description": "Not modified: the channel is as your ETag says",
                    "headers": _RESOLVE_HEADERS}}},
    ("post", "/api/v1/resolve"): {"responses": responses(404)},
    ("get", "/api/v1/pools/{ns}/{pool}/desired"): {
        "parameters": [{**_IF_NONE_MATCH,
                        "description": "the ETag of your last answer: 304 while the desired "
                                       "set is unchanged (held up to `wait` seconds)"}],
        "responses": {
            "200": {"headers": {"ETag": header("the set's revision")}},
            "304": {"description": "Not modified: the desired set is as your ETag says",
                    "headers": {"ETag": header("the set's revision")}}}},
}
