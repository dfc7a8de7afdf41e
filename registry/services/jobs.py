"""The durable job queue. Workers coordinate only through these rows.

Life of a job::

    queued --claim--> running --complete--> succeeded
       ^                 |  \\--fail (permanent, or attempts used up)--> failed
       |                 |   \\--cancel honoured--> cancelled
       +--retry/backoff--+    (a lease that expires puts it back in reach of claim)

* **claim** takes the oldest runnable job: ``queued`` with ``run_after`` passed, or ``running``
  with an expired lease (its worker died). On PostgreSQL this is ``SELECT … FOR UPDATE SKIP
  LOCKED``, so concurrent workers never take the same row; on SQLite every write transaction is
  ``BEGIN IMMEDIATE`` (see registry.db), which serializes claims.
* **heartbeat** extends the lease, but only for the worker that holds it; a worker that lost
  its lease learns so and stops.
* Times come from the database clock on PostgreSQL (``now()``), so workers with skewed clocks
  agree; SQLite is a single machine and uses its clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from registry import statuses
from registry.errors import Conflict, NotFound
from registry.models import Job, utcnow
from registry.services import audit
from registry.services.context import Actor
from registry.services.pagination import Page, paginate_by_id
from registry.statuses import JOB_ACTIVE, JOB_FINAL, JobStatus

BACKOFF_BASE = timedelta(seconds=5)
BACKOFF_MAX = timedelta(minutes=10)


def db_now(session: Session) -> datetime:
    """The database's clock on PostgreSQL; this process's clock on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        now: datetime = session.scalar(select(func.now()))  # type: ignore[assignment]
        return now
    return utcnow()


def enqueue(
    session: Session, actor: Actor, kind: str, payload: dict[str, Any], *,
    target: str = "", namespace: str | None = None, dedupe_key: str | None = None,
    max_attempts: int = 3,
) -> tuple[Job, bool]:
    """Queue a job, or return the active job with the same ``dedupe_key``: ``(job, created)``."""
    if dedupe_key:
        existing = session.scalar(
            select(Job).where(Job.dedupe_key == dedupe_key, Job.status.in_(JOB_ACTIVE))
            .order_by(Job.id).limit(1)
        )
        if existing is not None:
            return existing, False
    job = Job(kind=kind, payload=payload, target=target, namespace=namespace,
              dedupe_key=dedupe_key, max_attempts=max_attempts, run_after=db_now(session),
              created_by=actor.name, request_id=actor.request_id)
    session.add(job)
    session.flush()
    audit.record(session, actor, "job.queued", "job", str(job.id), namespace=namespace,
                 payload={"kind": kind, "target": target})
    return job, True


def get_job(session: Session, job_id: int, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    job = session.scalar(stmt)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session, *, scope: Sequence[str] | None = None,
    status: JobStatus | str | None = None, kind: str | None = None, target: str | None = None,
    cursor: str | None = None, limit: int = 50,
) -> Page[Job]:
    stmt = select(Job)
    if scope is not None:
        stmt = stmt.where(Job.namespace.in_(scope))
    if status:
        stmt = stmt.where(Job.status == statuses.parse(JobStatus, status))
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if target:
        stmt = stmt.where(Job.target == target)
    return paginate_by_id(session, stmt, Job.id, cursor=cursor, limit=limit)


def claim(
    session: Session, worker_id: str, *, kinds: Sequence[str] | None = None,
    lease: timedelta = timedelta(seconds=60),
) -> Job | None:
    """Take the oldest runnable job for ``worker_id`` (see the module docstring)."""
    now = db_now(session)
    runnable = or_(
        (Job.status == JobStatus.QUEUED) & (Job.run_after <= now),
        (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now),
    )
    stmt = select(Job).where(runnable).order_by(Job.id).limit(1)
    if kinds:
        stmt = stmt.where(Job.kind.in_(kinds))
    job = session.scalar(stmt.with_for_update(skip_locked=True))
    if job is None:
        return None
    if job.status == JobStatus.RUNNING and job.attempts >= job.max_attempts:
        _finish(job, JobStatus.FAILED, now,
                error=f"worker {job.worker_id} lost its lease on the last attempt "
                      f"({job.attempts}/{job.max_attempts})")
        return claim(session, worker_id, kinds=kinds, lease=lease)
    job.status, job.worker_id = JobStatus.RUNNING, worker_id
    job.attempts += 1
    job.lease_expires_at, job.heartbeat_at = now + lease, now
    job.started_at = job.started_at or now
    job.error = None
    return job


def heartbeat(
    session: Session, job_id: int, worker_id: str, *, lease: timedelta,
    progress: float | None = None, message: str | None = None,
) -> Job:
    """Extend the lease (and record progress); Conflict if this worker no longer holds it."""
    job = _held(session, job_id, worker_id)
    now = db_now(session)
    job.lease_expires_at, job.heartbeat_at = now + lease, now
    if progress is not None:
        job.progress = max(0.0, min(1.0, progress))
    if message is not None:
        job.progress_message = message[:2000]
    return job


def _held(session: Session, job_id: int, worker_id: str) -> Job:
    job = get_job(session, job_id, for_update=True)
    if job.status != JobStatus.RUNNING or job.worker_id != worker_id:
        raise Conflict(f"job {job_id} is no longer held by worker {worker_id}")
    return job


def complete(session: Session, job_id: int, worker_id: str, result: dict[str, Any]) -> Job:
    job = _held(session, job_id, worker_id)
    _finish(job, JobStatus.SUCCEEDED, db_now(session), result=result)
    job.progress = 1.0
    _audit_end(session, job)
    return job


def fail(
    session: Session, job_id: int, worker_id: str, error: str, *, retry: bool,
    error_code: str | None = None,
) -> Job:
    """Record a failure: back to ``queued`` after a backoff if ``retry`` and attempts remain,
    else ``failed``."""
    job = _held(session, job_id, worker_id)
    now = db_now(session)
    job.error_code = error_code
    if retry and job.attempts < job.max_attempts:
        delay = min(BACKOFF_BASE * 2 ** (job.attempts - 1), BACKOFF_MAX)
        job.status, job.run_after, job.error = JobStatus.QUEUED, now + delay, error
        job.worker_id = job.lease_expires_at = None
        return job
    _finish(job, JobStatus.FAILED, now, error=error)
    job.error_code = error_code
    _audit_end(session, job)
    return job


def release(session: Session, job_id: int, worker_id: str) -> Job:
    """Give a job back untouched (graceful shutdown): the attempt does not count."""
    job = _held(session, job_id, worker_id)
    job.status, job.worker_id, job.lease_expires_at = JobStatus.QUEUED, None, None
    job.attempts = max(0, job.attempts - 1)
    job.run_after = db_now(session)
    return job


def request_cancel(session: Session, actor: Actor, job_id: int) -> Job:
    """Cancel a queued job at once; ask a running one to stop between tensors."""
    job = get_job(session, job_id, for_update=True)
    if job.status in JOB_FINAL:
        raise Conflict(f"job {job_id} already {job.status}")
    job.cancel_requested = True
    if job.status == JobStatus.QUEUED:
        _finish(job, JobStatus.CANCELLED, db_now(session))
    audit.record(session, actor, "job.cancel_requested", "job", str(job.id),
                 namespace=job.namespace, payload={"status": job.status})
    return job


def mark_cancelled(session: Session, job_id: int, worker_id: str) -> Job:
    job = _held(session, job_id, worker_id)
    _finish(job, JobStatus.CANCELLED, db_now(session))
    _audit_end(session, job)
    return job


def cancel_requested(session: Session, job_id: int) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _finish(job: Job, status: JobStatus, now: datetime, *, result: dict[str, Any] | None = None,
            error: str | None = None) -> None:
    job.status, job.finished_at = status, now
    job.worker_id, job.lease_expires_at = None, None
    job.result, job.error = result, error


def _audit_end(session: Session, job: Job) -> None:
    audit.record(session, Actor(f"worker:{job.kind}", job.request_id), f"job.{job.status}",
                 "job", str(job.id), namespace=job.namespace,
                 payload={"kind": job.kind, "target": job.target, "error": job.error})


def counts(session: Session, scope: Sequence[str] | None) -> dict[JobStatus, int]:
    """Jobs per status among the namespaces of ``scope`` (None: all)."""
    stmt = select(Job.status, func.count()).group_by(Job.status)
    if scope is not None:
        stmt = stmt.where(Job.namespace.in_(scope))
    return {status: int(n) for status, n in session.execute(stmt)}


def queue_stats(session: Session) -> dict[str, Any]:
    """Queue depth per status and the age of the oldest queued job (for /metrics)."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
    age = (db_now(session) - oldest).total_seconds() if oldest else 0.0
    return {"counts": {s: int(counts.get(s, 0)) for s in JobStatus}, "oldest_queued_age": age}


def outcome_totals(session: Session) -> dict[tuple[str, str], tuple[int, float]]:
    """Finished jobs by ``(kind, outcome)``: how many, and their total run time in seconds
    (for /metrics; read in batches, the table may be long)."""
    rows = session.execute(select(Job.kind, Job.status, Job.started_at, Job.finished_at)
                           .where(Job.finished_at.is_not(None))
                           .execution_options(yield_per=1000))
    totals: dict[tuple[str, str], tuple[int, float]] = {}
    for kind, outcome, started, finished in rows:
        n, seconds = totals.get((kind, outcome), (0, 0.0))
        if started is not None and finished is not None:
            seconds += (finished - started).total_seconds()
        totals[(kind, outcome)] = (n + 1, seconds)
    return totals
