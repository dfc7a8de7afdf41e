"""The one error hierarchy of lorareg.

Every expected failure is a subclass of :class:`RegistryError`. Each class carries

* ``status_code`` -- the HTTP status the API answers with (as ``application/problem+json``),
* ``code`` -- a stable machine-readable slug, used as the problem ``type`` suffix,
* ``exit_code`` -- the documented exit code of the ``lorareg`` CLI.

CLI exit codes (also listed in ``lorareg --help`` and the README):

====  ==========================================================
0     success
1     usage error (bad flags or arguments)
2     not found
3     conflict (revision mismatch, already exists, busy)
4     invalid input, invalid adapter or incompatible base
5     authentication or permission failure
6     server or network failure
====  ==========================================================

Hierarchy::

    RegistryError (500, internal, exit 6)
     +-- BadRequest (400, bad_request, exit 4)
     |    +-- InvalidAdapter (422, invalid_adapter)
     |    |    +-- InvalidSafetensors (422, invalid_safetensors)
     |    +-- InvalidPath (422, invalid_path)
     |    +-- DigestMismatch (422, digest_mismatch)
     |    +-- IncompatibleBase (422, incompatible_base)
     |    +-- IncompatiblePool (422, incompatible_pool)
     |    +-- EngineRefused (422, engine_refused)
     |    +-- ValidationFailed (422, validation_failed)
     +-- Unauthenticated (401, unauthenticated, exit 5)
     +-- PermissionDenied (403, permission_denied, exit 5)
     +-- NotFound (404, not_found, exit 2)
     +-- Conflict (409, conflict, exit 3)
     |    +-- PreconditionFailed (412, precondition_failed)
     +-- RequestTimeout (408, request_timeout, exit 6)
     +-- PayloadTooLarge (413, payload_too_large, exit 4)
     +-- TooManyRequests (429, too_many_requests, exit 6)
     +-- StorageError (503, storage_error, exit 6)
     +-- EngineUnavailable (502, engine_unavailable, exit 6)
     +-- CorruptBlob (500, corrupt_blob, exit 4)

``extra`` holds fields that help the caller (for example both fingerprints of an
incompatible base); they are merged into the problem document.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """Base of every expected lorareg failure."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    exit_code: ClassVar[int] = 6

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra

    def to_problem(self) -> dict[str, Any]:
        """RFC 7807 problem document for this error."""
        problem: dict[str, Any] = {
            "type": f"https://lorareg.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
        }
        problem.update(self.extra)
        return problem


class BadRequest(RegistryError):
    status_code = 400
    code = "bad_request"
    title = "Bad request"
    exit_code = 4


class InvalidAdapter(BadRequest):
    status_code = 422
    code = "invalid_adapter"
    title = "Invalid adapter"


class InvalidSafetensors(InvalidAdapter):
    code = "invalid_safetensors"
    title = "Invalid safetensors file"


class InvalidPath(BadRequest):
    status_code = 422
    code = "invalid_path"
    title = "Invalid file path"


class DigestMismatch(BadRequest):
    status_code = 422
    code = "digest_mismatch"
    title = "Digest mismatch"


class IncompatibleBase(BadRequest):
    status_code = 422
    code = "incompatible_base"
    title = "Incompatible base model"


class IncompatiblePool(BadRequest):
    """A version cannot enter a serving pool's desired set (``pools``: each pool's problems)."""

    status_code = 422
    code = "incompatible_pool"
    title = "Incompatible with a serving pool"


class EngineRefused(BadRequest):
    """An inference engine (vLLM) refused an adapter; the detail carries the engine's own
    text. Raised client-side (export's runtime mode), never by the API."""

    status_code = 422
    code = "engine_refused"
    title = "Refused by the inference engine"


class ValidationFailed(BadRequest):
    status_code = 422
    code = "validation_failed"
    title = "Validation failed"


class Unauthenticated(RegistryError):
    status_code = 401
    code = "unauthenticated"
    title = "Authentication required"
    exit_code = 5


class PermissionDenied(RegistryError):
    status_code = 403
    code = "permission_denied"
    title = "Permission denied"
    exit_code = 5


class NotFound(RegistryError):
    status_code = 404
    code = "not_found"
    title = "Not found"
    exit_code = 2


class Conflict(RegistryError):
    status_code = 409
    code = "conflict"
    title = "Conflict"
    exit_code = 3


class PreconditionFailed(Conflict):
    status_code = 412
    code = "precondition_failed"
    title = "Precondition failed"


class RequestTimeout(RegistryError):
    """The client stopped sending its request body (an upload idle past the read timeout)."""

    status_code = 408
    code = "request_timeout"
    title = "Request timeout"
    exit_code = 6


class PayloadTooLarge(RegistryError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"
    exit_code = 4


class TooManyRequests(RegistryError):
    """Over a concurrency limit; ``extra["retry_after"]`` (seconds) becomes ``Retry-After``."""

    status_code = 429
    code = "too_many_requests"
    title = "Too many requests"
    exit_code = 6


class StorageError(RegistryError):
    status_code = 503
    code = "storage_error"
    title = "Blob storage unavailable"
    exit_code = 6


class CorruptBlob(RegistryError):
    """A stored blob holds fewer bytes than the registry recorded: it was truncated or
    replaced in the store behind the registry's back. The server's fault, so 500, but no retry
    helps; the client's ``pull`` reports it as the file's DigestMismatch (exit 4)."""

    status_code = 500
    code = "corrupt_blob"
    title = "Stored blob is corrupt"
    exit_code = 4


class EngineUnavailable(RegistryError):
    """An inference engine could not be reached, or did not answer like one (client-side)."""

    status_code = 502
    code = "engine_unavailable"
    title = "Inference engine unavailable"
    exit_code = 6


_BY_CODE: dict[str, type[RegistryError]] = {}


def _index(cls: type[RegistryError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(RegistryError)


def from_problem(problem: dict[str, Any], status: int) -> RegistryError:
    """Rebuild the matching error from a problem document (used by the client)."""
    cls = _BY_CODE.get(str(problem.get("code", "")))
    if cls is None:
        cls = _class_for_status(status)
    known = {"type", "title", "status", "detail", "code"}
    extra = {k: v for k, v in problem.items() if k not in known}
    return cls(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"), **extra)


def _class_for_status(status: int) -> type[RegistryError]:
    for cls in (Unauthenticated, PermissionDenied, NotFound, Conflict, RequestTimeout,
                PayloadTooLarge, TooManyRequests):
        if cls.status_code == status:
            return cls
    if 400 <= status < 500:
        return BadRequest
    return RegistryError
