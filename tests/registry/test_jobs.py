"""The job queue: claim, leases, retries with backoff, cancellation, dedupe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from registry.db import make_engine, make_session_factory, transaction
from registry.errors import Conflict
from registry.models import Job
from registry.services import jobs
from registry.services.context import Actor

ACTOR = Actor("alice")
LEASE = timedelta(seconds=30)


def expire(session: Session, job: Job) -> None:
    session.execute(update(Job).where(Job.id == job.id).values(
        lease_expires_at=jobs.db_now(session) - timedelta(seconds=1)))
    session.refresh(job)


def test_claim_complete_and_dedupe(session: Session) -> None:
    job, created = jobs.enqueue(session, ACTOR, "merge", {"v": 1}, dedupe_key="merge:1:fp")
    same, created_again = jobs.enqueue(session, ACTOR, "merge", {"v": 1}, dedupe_key="merge:1:fp")
    assert created and not created_again and same.id == job.id
    claimed = jobs.claim(session, "w1", lease=LEASE)
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    assert jobs.claim(session, "w2", lease=LEASE) is None
    jobs.heartbeat(session, job.id, "w1", lease=LEASE, progress=0.5, message="layer 3")
    with pytest.raises(Conflict):
        jobs.heartbeat(session, job.id, "w2", lease=LEASE)
    done = jobs.complete(session, job.id, "w1", {"artifact": 7})
    assert done.status == "succeeded" and done.progress == 1.0 and done.result == {"artifact": 7}
    fresh, created = jobs.enqueue(session, ACTOR, "merge", {"v": 1}, dedupe_key="merge:1:fp")
    assert created and fresh.id != job.id


def test_expired_lease_is_reclaimed_and_old_worker_locked_out(session: Session) -> None:
    job, _ = jobs.enqueue(session, ACTOR, "merge", {})
    assert jobs.claim(session, "w1", lease=LEASE) is not None
    expire(session, job)
    again = jobs.claim(session, "w2", lease=LEASE)
    assert again is not None and again.worker_id == "w2" and again.attempts == 2
    with pytest.raises(Conflict):
        jobs.complete(session, job.id, "w1", {})
    jobs.complete(session, job.id, "w2", {})


def test_lease_lost_on_last_attempt_fails_the_job(session: Session) -> None:
    job, _ = jobs.enqueue(session, ACTOR, "merge", {}, max_attempts=1)
    jobs.claim(session, "w1", lease=LEASE)
    expire(session, job)
    assert jobs.claim(session, "w2", lease=LEASE) is None
    assert job.status == "failed" and "lost its lease" in (job.error or "")


def test_retry_with_backoff_then_fail(session: Session) -> None:
    job, _ = jobs.enqueue(session, ACTOR, "merge", {}, max_attempts=2)
    jobs.claim(session, "w1", lease=LEASE)
    jobs.fail(session, job.id, "w1", "s3 timeout", retry=True)
    assert job.status == "queued" and job.run_after > jobs.db_now(session)
    assert jobs.claim(session, "w1", lease=LEASE) is None  # still backing off
    session.execute(update(Job).where(Job.id == job.id).values(run_after=jobs.db_now(session)))
    assert jobs.claim(session, "w1", lease=LEASE) is not None
    jobs.fail(session, job.id, "w1", "s3 timeout again", retry=True)
    assert job.status == "failed" and job.error == "s3 timeout again"


def test_cancel_queued_and_running(session: Session) -> None:
    queued, _ = jobs.enqueue(session, ACTOR, "merge", {}, dedupe_key="a")
    assert jobs.request_cancel(session, ACTOR, queued.id).status == "cancelled"
    with pytest.raises(Conflict):
        jobs.request_cancel(session, ACTOR, queued.id)
    running, _ = jobs.enqueue(session, ACTOR, "merge", {}, dedupe_key="b")
    jobs.claim(session, "w1", lease=LEASE)
    jobs.request_cancel(session, ACTOR, running.id)
    assert jobs.cancel_requested(session, running.id) and running.status == "running"
    assert jobs.mark_cancelled(session, running.id, "w1").status == "cancelled"


def test_release_does_not_count_an_attempt(session: Session) -> None:
    job, _ = jobs.enqueue(session, ACTOR, "merge", {})
    jobs.claim(session, "w1", lease=LEASE)
    jobs.release(session, job.id, "w1")
    assert job.status == "queued" and job.attempts == 0
    assert jobs.queue_stats(session)["counts"]["queued"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_claims_never_share_a_job(fresh_db_url: str) -> None:
    engine = make_engine(fresh_db_url, pool_size=10) if "postgresql" in fresh_db_url else (
        make_engine(fresh_db_url))
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        for i in range(40):
            jobs.enqueue(session, ACTOR, "merge", {"i": i})

    def drain(worker: str) -> list[int]:
        got = []
        while True:
            with transaction(factory) as session:
                job = jobs.claim(session, worker, lease=LEASE)
                if job is None:
                    return got
                got.append(job.id)
                jobs.complete(session, job.id, worker, {})

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(drain, [f"w{i}" for i in range(8)]))
        claimed = [j for r in results for j in r]
        assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    finally:
        engine.dispose()
