"""The one error hierarchy of lorareg, and the one source of its problem documents and exit codes.

Every expected failure is a subclass of :class:`RegistryError`. Each class carries

* ``status_code`` -- the HTTP status the API answers with (as ``application/problem+json``),
* ``code`` -- a stable machine-readable slug, used as the problem ``type`` suffix,
* ``exit_code`` -- the documented exit code of the ``lorareg`` CLI, a key of :data:`EXIT_CODES`,
* ``client_side`` -- raised by the client or the CLI only, never sent by the API.

:data:`EXIT_CODES` says what each exit code means: ``lorareg --help`` and the README's table
are generated from it, and a test holds them (and the tree below) to the classes.

Hierarchy (``tests/registry/test_errors.py`` checks it against the classes)::

    RegistryError (500, internal, exit 6)
     +-- BadRequest (400, bad_request, exit 4)
     |    +-- InvalidAdapter (422, invalid_adapter)
     |    |    +-- InvalidSafetensors (422, invalid_safetensors)
     |    +-- InvalidPath (422, invalid_path)
     |    +-- DigestMismatch (422, digest_mismatch)
     |    +-- IncompatibleBase (422, incompatible_base)
     |    +-- IncompatiblePool (422, incompatible_pool)
     |    +-- EngineRefused (422, engine_refused, client-side)
     |    +-- ValidationFailed (422, validation_failed)
     |    +-- MethodNotAllowed (405, method_not_allowed)
     |    +-- RangeNotSatisfiable (416, range_not_satisfiable)
     +-- Unauthenticated (401, unauthenticated, exit 5)
     +-- PermissionDenied (403, permission_denied, exit 5)
     +-- NotFound (404, not_found, exit 2)
     +-- Conflict (409, conflict, exit 3)
     |    +-- PreconditionFailed (412, precondition_failed)
     +-- RequestTimeout (408, request_timeout)
     +-- PayloadTooLarge (413, payload_too_large, exit 4)
     +-- TooManyRequests (429, too_many_requests)
     +-- StorageError (503, storage_error)
     +-- CorruptBlob (500, corrupt_blob, exit 4)
     +-- EngineUnavailable (502, engine_unavailable, client-side)
     +-- UsageError (400, usage_error, exit 1, client-side)
     +-- GateFailed (422, gate_failed, exit 7, client-side)

(An exit code is shown where it differs from the parent's.)

``extra`` holds fields that help the caller (for example both fingerprints of an
incompatible base); they are merged into the problem document.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "usage error (bad flags or arguments), local file error, interrupted",
    2: "not found",
    3: "conflict (already exists, revision mismatch, cancelled job, aborted rollout)",
    4: "invalid input, invalid adapter or incompatible base (also a merge job that failed so)",
    5: "authentication or permission failure",
    6: "server or network failure (also a job that failed otherwise, or a wait that timed out)",
    7: "a `lorareg gate` requirement is not met",
}
"""What each exit code of the ``lorareg`` CLI means (Markdown). Every code but 0 is the
``exit_code`` of some class below; the CLI's help and the README's table are made from this."""


class RegistryError(Exception):
    """Base of every expected lorareg failure."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    exit_code: ClassVar[int] = 6
    client_side: ClassVar[bool] = False

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
    client_side = True


class ValidationFailed(BadRequest):
    status_code = 422
    code = "validation_failed"
    title = "Validation failed"


class MethodNotAllowed(BadRequest):
    """The path exists, not with this method (the answer's ``Allow`` header lists those)."""

    status_code = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class RangeNotSatisfiable(BadRequest):
    """A ``Range`` that starts past the end; ``extra["size"]`` becomes ``Content-Range``."""

    status_code = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"


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
    client_side = True


class UsageError(RegistryError):
    """The CLI was called wrongly (flags, arguments), or a local file could not be used."""

    status_code = 400
    code = "usage_error"
    title = "Usage error"
    exit_code = 1
    client_side = True


class GateFailed(RegistryError):
    """``lorareg gate``: a requirement on a version's metrics is not met."""

    status_code = 422
    code = "gate_failed"
    title = "Gate requirement not met"
    exit_code = 7
    client_side = True


def tree(root: type[RegistryError] = RegistryError) -> str:
    """The hierarchy as the module docstring draws it: status, code, and the exit code where
    it differs from the parent's."""
    return "\n".join([_label(root, None), *_branches(root, "")])


def _branches(cls: type[RegistryError], prefix: str) -> list[str]:
    subs = cls.__subclasses__()
    lines = []
    for i, sub in enumerate(subs):
        lines.append(f"{prefix} +-- {_label(sub, cls)}")
        lines += _branches(sub, prefix + ("     " if i == len(subs) - 1 else " |   "))
    return lines


def _label(cls: type[RegistryError], parent: type[RegistryError] | None) -> str:
    fields = [str(cls.status_code), cls.code]
    if parent is None or cls.exit_code != parent.exit_code:
        fields.append(f"exit {cls.exit_code}")
    if cls.client_side:
        fields.append("client-side")
    return f"{cls.__name__} ({', '.join(fields)})"


def classes(root: type[RegistryError] = RegistryError) -> list[type[RegistryError]]:
    """Every class of the tree, parents before their children."""
    return [root, *(c for sub in root.__subclasses__() for c in classes(sub))]


_BY_CODE: dict[str, type[RegistryError]] = {cls.code: cls for cls in classes()}
# The class of an answer that says no (known) code: what a status means by itself.
_BY_STATUS: dict[int, type[RegistryError]] = {cls.status_code: cls for cls in (
    RegistryError, BadRequest, ValidationFailed, Unauthenticated, PermissionDenied, NotFound,
    MethodNotAllowed, RequestTimeout, Conflict, PreconditionFailed, PayloadTooLarge,
    RangeNotSatisfiable, TooManyRequests)}


def for_code(code: str) -> type[RegistryError] | None:
    return _BY_CODE.get(code)


def for_status(status: int) -> type[RegistryError]:
    """The class for an HTTP error status: its own if it has one, else the generic client
    (4xx) or server (5xx) error."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return BadRequest if 400 <= status < 500 else RegistryError


def from_problem(problem: dict[str, Any], status: int) -> RegistryError:
    """Rebuild the matching error from a problem document (used by the client)."""
    cls = _BY_CODE.get(str(problem.get("code", ""))) or for_status(status)
    known = {"type", "title", "status", "detail", "code"}
    extra = {k: v for k, v in problem.items() if k not in known}
    return cls(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"), **extra)
