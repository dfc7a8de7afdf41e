"""The worker loop: claim a job, run its handler under a heartbeating lease, record the outcome.

Failure policy: expected permanent errors (invalid adapter, incompatible base, validation) fail
the job at once with their message; anything else (storage or database trouble, a crash in a
handler) is retried with exponential backoff until ``max_attempts``. A worker that loses its
lease (it stalled, and another worker took the job) stops the handler between tensors and
records nothing. On shutdown (SIGTERM) the running job is released, not failed, so the next
worker starts it again without spending an attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import BlobStore
from registry.config import Settings
from registry.db import transaction
from registry.egress import Guard
from registry.errors import BadRequest, Conflict, NotFound, RegistryError
from registry.logs import request_id_var
from registry.services import jobs, rollouts, webhooks

log = logging.getLogger("lorareg.worker")


class JobStopped(Exception):
    """The handler was asked to stop (cancel, shutdown or lost lease)."""


class JobContext:
    """What a handler sees: its job, progress reporting and the stop signal."""

    def __init__(self, worker: Worker, job_id: int, payload: dict[str, Any]) -> None:
        self.worker = worker
        self.job_id = job_id
        self.payload = payload
        self.lost = threading.Event()
        self._progress: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._cancel_checked = 0.0
        self._cancelled = False

    @property
    def settings(self) -> Settings:
        return self.worker.settings

    @property
    def store(self) -> BlobStore:
        return self.worker.store

    def session(self) -> Any:
        return transaction(self.worker.sessions)

    def progress(self, fraction: float, message: str) -> None:
        """Record progress; written to the database with the next heartbeat."""
        with self._lock:
            self._progress = (fraction, message)

    def take_progress(self) -> tuple[float, str] | None:
        with self._lock:
            value, self._progress = self._progress, None
            return value

    def should_stop(self) -> bool:
        """True when the job must stop now: cancelled, lease lost, or worker shutting down."""
        if self.lost.is_set() or self.worker.stopping.is_set():
            return True
        now = time.monotonic()
        if now - self._cancel_checked > 0.5:
            self._cancel_checked = now
            with self.session() as session:
                self._cancelled = jobs.cancel_requested(session, self.job_id)
        return self._cancelled


Handler = Callable[[JobContext], dict[str, Any]]
# Errors a retry cannot fix: the job fails at once with the message.
PERMANENT = (BadRequest, NotFound, Conflict)


class Worker:
    """One worker: claims and runs jobs until ``stopping`` is set."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], store: BlobStore,
        handlers: Mapping[str, Handler], *, worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=30), poll_seconds: float = 1.0,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings, self.sessions, self.store = settings, sessions, store
        self.handlers = dict(handlers)
        self.worker_id = worker_id or default_worker_id()
        self.lease, self.poll_seconds = lease, poll_seconds
        self.stopping = stopping or threading.Event()
        self.tick_seconds = min(poll_seconds, 1.0)
        self._last_tick = 0.0
        self._http = webhooks.DeliveryClient(Guard(settings.webhook_allow_private))

    def run(self) -> None:
        """Claim and run jobs until stopped; database outages are waited out."""
        log.info("worker %s started (kinds: %s)", self.worker_id, ", ".join(self.handlers))
        while not self.stopping.is_set():
            try:
                self.tick_controllers()
                self.deliver_webhooks()
                ran = self.run_once()
            except SQLAlchemyError as exc:
                log.warning("worker %s: database unavailable (%s)", self.worker_id, exc)
                ran = False
            if not ran:
                self.stopping.wait(self.poll_seconds)
        log.info("worker %s stopped", self.worker_id)

    def tick_controllers(self) -> None:
        """Run the rollout controller about once a second (every worker does; ticks are
        idempotent and take due rollouts under SKIP LOCKED)."""
        now = time.monotonic()
        if now - self._last_tick < self.tick_seconds:
            return
        self._last_tick = now
        with transaction(self.sessions) as session:
            acted = rollouts.tick(session)
        if acted:
            log.info("worker %s: rollout controller acted on %s", self.worker_id, acted)

    def deliver_webhooks(self, limit: int = 50) -> int:
        """Send due webhook deliveries (each under its own row lock and transaction)."""
        sent = 0
        backoff = timedelta(seconds=self.settings.webhook_backoff_seconds)
        while sent < limit and not self.stopping.is_set():
            with transaction(self.sessions) as session:
                row = webhooks.deliver_one(session, self._http, backoff=backoff,
                                           max_attempts=self.settings.webhook_max_attempts)
            if row is None:
                break
            sent += 1
        return sent

    def run_once(self) -> bool:
        """Run at most one job; False when the queue had nothing runnable."""
        if not self.handlers:  # a controller-only worker claims no jobs
            return False
        with transaction(self.sessions) as session:
            job = jobs.claim(session, self.worker_id, kinds=list(self.handlers), lease=self.lease)
            if job is None:
                return False
            job_id, kind, payload = job.id, job.kind, dict(job.payload)
            request_id = job.request_id
        token = request_id_var.set(request_id)  # logs of the job carry the request's id
        try:
            log.info("worker %s: running job %s (%s)", self.worker_id, job_id, kind)
            self._execute(job_id, kind, JobContext(self, job_id, payload))
        finally:
            request_id_var.reset(token)
        return True

    def _execute(self, job_id: int, kind: str, ctx: JobContext) -> None:
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ctx, beat_stop), daemon=True,
                                name=f"heartbeat-{job_id}")
        beat.start()
        try:
            outcome = self._run_handler(kind, ctx)
        finally:
            beat_stop.set()
            beat.join()
        if ctx.lost.is_set():
            log.warning("job %s: lease lost; another worker owns it now", job_id)
            return
        self._record(job_id, ctx, outcome)

    def _run_handler(self, kind: str, ctx: JobContext) -> tuple[str, Any]:
        try:
            return "ok", self.handlers[kind](ctx)
        except JobStopped:
            return "stopped", None
        except PERMANENT as exc:
            return "permanent", exc
        except RegistryError as exc:
            return "transient", exc
        except Exception as exc:
            log.exception("job %s crashed", ctx.job_id)
            return "transient", f"{type(exc).__name__}: {exc}"

    def _record(self, job_id: int, ctx: JobContext, outcome: tuple[str, Any]) -> None:
        status, value = outcome
        try:
            with transaction(self.sessions) as session:
                if status == "ok":
                    jobs.complete(session, job_id, self.worker_id, value)
                elif status == "stopped" and jobs.cancel_requested(session, job_id):
                    jobs.mark_cancelled(session, job_id, self.worker_id)
                elif status == "stopped":
                    jobs.release(session, job_id, self.worker_id)
                else:
                    code = value.code if isinstance(value, RegistryError) else "internal"
                    detail = value.detail if isinstance(value, RegistryError) else str(value)
                    jobs.fail(session, job_id, self.worker_id, detail, error_code=code,
                              retry=status == "transient")
        except Conflict:
            log.warning("job %s: lease lost before its outcome was recorded", job_id)

    def _heartbeat(self, ctx: JobContext, stop: threading.Event) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.2)
        while not stop.wait(min(interval, 2.0)):
            update = ctx.take_progress()
            try:
                with transaction(self.sessions) as session:
                    jobs.heartbeat(session, ctx.job_id, self.worker_id, lease=self.lease,
                                   progress=update[0] if update else None,
                                   message=update[1] if update else None)
            except Conflict:
                ctx.lost.set()
                return
            except SQLAlchemyError as exc:
                log.warning("job %s: heartbeat failed (%s)", ctx.job_id, exc)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
