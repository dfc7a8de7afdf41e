"""Merges and jobs: request a merge, find the merged artifact, list, show, cancel and wait.

A merge is idempotent by content: asking again for the same version and base weights returns
the existing artifact (``MergeOut(artifact=..., job=None)``) or joins the job already queued or
running (``MergeOut(artifact=None, job=..., created=False)``).

:func:`job_error` turns a job that did not succeed into the :mod:`registry.errors` class a
caller (the CLI's exit code) needs: cancelled -> Conflict (exit 3); failed -> the BadRequest
class named by the job's ``error_code`` when the server records one (exit 4: incompatible base,
invalid adapter), RegistryError for other codes (exit 6); without a code, BadRequest for a
failure the worker judged permanent (it gave up before using every attempt) and RegistryError
for one that exhausted its retries; still running -> RegistryError (the wait timed out, exit 6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from registry import errors
from registry.client._http import Http, query
from registry.client._paths import version_path
from registry.statuses import JOB_FINAL, JobStatus
from registry.wire import ArtifactOut, JobOut, MergeOut


def merge(http: Http, ref: str, base_id: int | None) -> MergeOut:
    body = {} if base_id is None else {"base_id": base_id}
    # Idempotent by content on the server: a retried request joins the same job.
    return http.post(f"{version_path(ref)}/merge", body, MergeOut, idempotent=True)


def merged(http: Http, ref: str) -> ArtifactOut:
    return http.get(f"{version_path(ref)}/merged", ArtifactOut)


def jobs(http: Http, status: str | None, kind: str | None, target: str | None,
         limit: int | None) -> Iterator[JobOut]:
    params = query(status=status, kind=kind, target=target)
    return http.paginate("/api/v1/jobs", JobOut, params, limit)


def job(http: Http, job_id: int | str) -> JobOut:
    return http.get(f"/api/v1/jobs/{int(job_id)}", JobOut)


def cancel_job(http: Http, job_id: int | str) -> JobOut:
    return http.post(f"/api/v1/jobs/{int(job_id)}/cancel", {}, JobOut)


def wait_job(http: Http, job_id: int | str, timeout: float | None,
             progress: Callable[[JobOut], object] | None) -> JobOut:
    return http.poll(f"/api/v1/jobs/{int(job_id)}", JobOut, lambda j: j.status in JOB_FINAL,
                     timeout, progress)


def job_error(job: JobOut) -> errors.RegistryError | None:
    """The error a job that did not succeed stands for (None if it succeeded)."""
    status, name = job.status, f"job {job.id} ({job.kind} {job.target})"
    extra = {"job_id": job.id, "job_status": status.value}
    if status == JobStatus.SUCCEEDED:
        return None
    if status == JobStatus.CANCELLED:
        return errors.Conflict(f"{name} was cancelled", **extra)
    if status != JobStatus.FAILED:
        return errors.RegistryError(
            f"{name} is still {status} ({_percent(job)}); stopped waiting", **extra)
    detail = f"{name} failed: {job.error or 'no error recorded'}"
    if job.error_code:
        err = errors.from_problem({"code": job.error_code, "detail": detail, **extra}, 500)
        # Only bad input (exit 4) is the caller's to fix; anything else is a failed service.
        return err if isinstance(err, errors.BadRequest) else errors.RegistryError(
            detail, error_code=job.error_code, **extra)
    permanent = job.attempts < job.max_attempts
    cls = errors.BadRequest if permanent else errors.RegistryError
    return cls(detail, **extra)


def _percent(job: JobOut) -> str:
    message = job.progress_message
    return f"{job.progress:.0%}" + (f", {message}" if message else "")
