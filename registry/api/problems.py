"""One mapping from errors to RFC 7807 ``application/problem+json``; no stack traces leak."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException

from registry.errors import RegistryError

log = logging.getLogger("lorareg.api")
PROBLEM = "application/problem+json"


def problem_response(
    problem: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(problem, status_code=problem["status"], media_type=PROBLEM,
                        headers=headers)


def _registry_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return problem_response(exc.to_problem(), headers)


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return problem_response({
        "type": "https://lorareg.dev/problems/validation_failed", "title": "Validation failed",
        "status": 422, "code": "validation_failed",
        "detail": f"{where}: {first['msg']}" if where else str(first["msg"]), "errors": errors,
    })


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            416: "range_not_satisfiable"}.get(exc.status_code, "http_error")
    return problem_response({
        "type": f"https://lorareg.dev/problems/{code}", "title": str(exc.detail),
        "status": exc.status_code, "code": code, "detail": str(exc.detail),
    }, dict(exc.headers) if exc.headers else None)


def _out_of_range(_request: Request, exc: Exception) -> JSONResponse:
    # A number too large for the database or for a time span: the client's input, not ours.
    return problem_response({
        "type": "https://lorareg.dev/problems/bad_request", "title": "Bad request",
        "status": 400, "code": "bad_request",
        "detail": "a number in the request is out of range",
    })


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    # exc_info=exc: handlers may run outside the except block, where exception() logs nothing.
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return problem_response({
        "type": "https://lorareg.dev/problems/internal", "title": "Internal error",
        "status": 500, "code": "internal",
        "detail": f"internal error (request id {request_id}); see the server log",
    })


def install(app: FastAPI) -> None:
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)
    app.add_exception_handler(Exception, _unexpected)
