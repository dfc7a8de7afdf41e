"""Fault tests with real worker processes on PostgreSQL: a worker killed mid-job loses it to
another after its lease, nothing partial becomes visible, and many workers never share a job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AuditEvent, Job, MergedArtifact
from registry.services import merges
from tests.fixtures.models import TinyModels
from tests.fixtures.server import ROOT, base_env
from tests.merge_worker.helpers import ACTOR, push, register

pytestmark = pytest.mark.e2e

# Big enough that a merge job takes a noticeable moment (fingerprint, merge, upload ~80 MB).
MEDIUM = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8000}


@pytest.fixture
def pg_url(pg_databases: object, request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_databases").fresh()
    return url


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


def spawn_worker(pg_url: str, tmp_path: Path, name: str, lease: float = 2.0
                 ) -> subprocess.Popen[bytes]:
    env = base_env(LORAREG_DATABASE_URL=pg_url, LORAREG_BLOB_URL=f"file://{tmp_path / 'blobs'}",
                   LORAREG_HOME=str(tmp_path / name), LORAREG_WORKER_LEASE_SECONDS=str(lease),
                   LORAREG_WORKER_POLL_SECONDS="0.1",
                   LORAREG_FINGERPRINT_CACHE=str(tmp_path / f"{name}-fp.sqlite"))
    with (tmp_path / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "merge_worker"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate: object, timeout: float, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def job_row(engine: Engine, job_id: int) -> Job:
    with transaction(make_session_factory(engine)) as session:
        return session.get_one(Job, job_id)


def test_worker_killed_mid_merge_is_replaced_after_its_lease(
    pg_url: str, engine: Engine, tiny_models: TinyModels, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    base = tiny_models.base("llama", **MEDIUM)
    adapter = tiny_models.adapter(base, r=8, target_modules=["q_proj", "v_proj", "up_proj"])
    with transaction(make_session_factory(engine)) as session:
        register(session, store, base, upload=True)
        job = merges.request_merge(session, ACTOR, push(session, store, adapter)).job
        assert job is not None
        job_id = job.id
    first = spawn_worker(pg_url, tmp_path, "first")
    try:
        wait_for(lambda: job_row(engine, job_id).status == "running", timeout=60)
        first.send_signal(signal.SIGSTOP)  # frozen mid-job, then killed: it never resumes
        assert job_row(engine, job_id).status == "running"
        first.kill()
        first.wait()
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(MergedArtifact)) == 0
        second = spawn_worker(pg_url, tmp_path, "second")
        try:
            wait_for(lambda: job_row(engine, job_id).status == "succeeded", timeout=120,
                     interval=0.2)
        finally:
            second.terminate()
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    done = job_row(engine, job_id)
    assert done.attempts == 2 and done.result is not None
    with transaction(make_session_factory(engine)) as session:
        artifacts = list(session.scalars(select(MergedArtifact)))
        assert len(artifacts) == 1
        for f in artifacts[0].files:  # every recorded file is complete and intact
            assert sum(len(c) for c in store.read_verified(f.digest)) == f.size


def test_four_workers_forty_jobs_each_runs_exactly_once(
    pg_url: str, engine: Engine, tiny_models: TinyModels, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    job_ids = []
    with transaction(make_session_factory(engine)) as session:
        register(session, store, base, upload=True)
        for i in range(40):
            version = push(session, store, adapter, f"acme/bot-{i}")
            job = merges.request_merge(session, ACTOR, version).job
            assert job is not None
            job_ids.append(job.id)
    workers = [spawn_worker(pg_url, tmp_path, f"w{i}", lease=30) for i in range(4)]
    try:
        wait_for(lambda: all(job_row(engine, j).status == "succeeded" for j in job_ids),
                 timeout=240, interval=0.5)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(30)
    assert all(w.returncode == 0 for w in workers)
    with engine.connect() as conn:
        attempts = conn.execute(select(Job.attempts).where(Job.id.in_(job_ids))).scalars().all()
        succeeded = conn.scalar(select(func.count()).select_from(AuditEvent)
                                .where(AuditEvent.action == "job.succeeded"))
        artifacts = conn.scalar(select(func.count()).select_from(MergedArtifact))
    assert attempts == [1] * 40 and succeeded == 40 and artifacts == 40
    ran_by = {p.name: p.read_text().count("running job") for p in tmp_path.glob("w*.log")}
    assert sum(ran_by.values()) == 40, ran_by


def test_sigterm_releases_the_running_job(pg_url: str, engine: Engine, tiny_models: TinyModels,
                                          tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    base = tiny_models.base("llama", **MEDIUM)
    adapter = tiny_models.adapter(base, r=8, target_modules=["q_proj", "v_proj", "up_proj"])
    with transaction(make_session_factory(engine)) as session:
        register(session, store, base, upload=True)
        job = merges.request_merge(session, ACTOR, push(session, store, adapter)).job
        assert job is not None
    worker = spawn_worker(pg_url, tmp_path, "graceful", lease=30)
    try:
        wait_for(lambda: job_row(engine, job.id).status == "running", timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    row = job_row(engine, job.id)
    # Either the job finished before the signal landed, or it was released untouched.
    assert (row.status, row.attempts) in {("succeeded", 1), ("queued", 0)}, (row.status,
                                                                              row.attempts)
