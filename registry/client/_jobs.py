"""Client methods for merges and jobs: request a merge, find the merged artifact, list, show,
cancel and wait for jobs.

A merge is idempotent by content: asking again for the same version and base weights returns
the existing artifact (``{"artifact": {...}, "job": None}``) or joins the job already queued or
running (``{"artifact": None, "job": {...}, "created": False}``).

:func:`job_error` turns a job that did not succeed into the :mod:`registry.errors` class a
caller (the CLI's exit code) needs: cancelled -> Conflict (exit 3); failed -> the BadRequest
class named by the job's ``error_code`` when the server records one (exit 4: incompatible base,
invalid adapter), RegistryError for other codes (exit 6); without a code, BadRequest for a
failure the worker judged permanent (it gave up before using every attempt) and RegistryError
for one that exhausted its retries; still running -> RegistryError (the wait timed out, exit 6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from registry import errors
from registry.client._core import Core, poll_until, query, version_path

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class JobsMixin:
    """Merge and job methods of :class:`registry.client.Client`."""

    def merge(self: Core, ref: str, base_id: int | None = None) -> dict[str, Any]:
        """Ask for version ``ref`` merged into its base (or the registered base ``base_id``
        with the same fingerprint): ``{artifact, job, created}`` (see the module docstring)."""
        body = {} if base_id is None else {"base_id": base_id}
        # Idempotent by content on the server: a retried request joins the same job.
        result: dict[str, Any] = self._post(f"{version_path(ref)}/merge", body, idempotent=True)
        return result

    def merged(self: Core, ref: str) -> dict[str, Any]:
        """The newest merged artifact of a version: ``{id, ref, base_id, base_fingerprint,
        merged_fingerprint, total_size, files, job_id, created_at}``; NotFound if none."""
        result: dict[str, Any] = self._get(f"{version_path(ref)}/merged")
        return result

    def jobs(
        self: Core, status: str | None = None, kind: str | None = None,
        target: str | None = None, limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Jobs visible to the token, following cursors."""
        return self._paginate("/api/v1/jobs", query(status=status, kind=kind, target=target),
                              limit)

    def job(self: Core, job_id: int | str) -> dict[str, Any]:
        """One job: ``{id, kind, status, target, progress, progress_message, attempts,
        max_attempts, result, error, ...}``."""
        result: dict[str, Any] = self._get(f"/api/v1/jobs/{int(job_id)}")
        return result

    def cancel_job(self: Core, job_id: int | str) -> dict[str, Any]:
        """Cancel a queued job now, or ask its worker to stop a running one between tensors;
        Conflict if the job already finished."""
        result: dict[str, Any] = self._post(f"/api/v1/jobs/{int(job_id)}/cancel", {})
        return result

    def wait_job(
        self: Core, job_id: int | str, timeout: float | None = None,
        progress: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """Poll a job (every 0.2 s, backing off to 2 s) until it is succeeded, failed or
        cancelled, or ``timeout`` seconds have passed; return the last job seen (check its
        ``status``, or pass it to :func:`job_error`). ``progress`` hears every poll."""
        return poll_until(self, f"/api/v1/jobs/{int(job_id)}", FINAL_STATUSES, timeout, progress)


def job_error(job: Mapping[str, Any]) -> errors.RegistryError | None:
    """The error a job that did not succeed stands for (None if it succeeded)."""
    status, name = job["status"], f"job {job['id']} ({job.get('kind')} {job.get('target')})"
    extra = {"job_id": job["id"], "job_status": status}
    if status == "succeeded":
        return None
    if status == "cancelled":
        return errors.Conflict(f"{name} was cancelled", **extra)
    if status != "failed":
        return errors.RegistryError(
            f"{name} is still {status} ({_percent(job)}); stopped waiting", **extra)
    detail = f"{name} failed: {job.get('error') or 'no error recorded'}"
    code = job.get("error_code")
    if isinstance(code, str) and code:
        err = errors.from_problem({"code": code, "detail": detail, **extra}, 500)
        # Only bad input (exit 4) is the caller's to fix; anything else is a failed service.
        return err if isinstance(err, errors.BadRequest) else errors.RegistryError(
            detail, error_code=code, **extra)
    permanent = int(job.get("attempts", 0)) < int(job.get("max_attempts", 1))
    cls = errors.BadRequest if permanent else errors.RegistryError
    return cls(detail, **extra)


def _percent(job: Mapping[str, Any]) -> str:
    message = job.get("progress_message") or ""
    return f"{float(job.get('progress') or 0.0):.0%}" + (f", {message}" if message else "")
