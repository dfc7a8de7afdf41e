"""The worker in-process against a real database and real blob stores: merge jobs end to end,
bad inputs failing cleanly, cancellation, and idempotency by content."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from merge_worker.handlers import HANDLERS
from merge_worker.merge import merge_adapter
from merge_worker.worker import JobContext, JobStopped, Worker
from registry.blobs import BlobStore, LocalBlobStore, S3BlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AdapterVersion, Job, MergedArtifact
from registry.services import jobs, merges
from tests.fixtures.models import TinyModels, read_folder
from tests.merge_worker.helpers import ACTOR, push, register


@dataclass
class Env:
    settings: Settings
    sessions: sessionmaker[Session]
    store: BlobStore
    engine: Engine

    def worker(self, **handlers: Any) -> Worker:
        return Worker(self.settings, self.sessions, self.store, handlers or HANDLERS,
                      worker_id="w-test", lease=timedelta(seconds=30), poll_seconds=0.05)

    def job(self, job_id: int) -> Job:
        with transaction(self.sessions) as session:
            return jobs.get_job(session, job_id)


@pytest.fixture
def env(fresh_db_url: str, tmp_path: Path, blob_store: BlobStore) -> Iterator[Env]:
    settings = Settings(home=tmp_path / "home", database_url=fresh_db_url,
                        fingerprint_cache=tmp_path / "fp.sqlite", base_dirs=[])
    engine = make_engine(fresh_db_url)
    yield Env(settings, make_session_factory(engine), blob_store, engine)
    engine.dispose()


def queue_merge(env: Env, base_dir: Path, adapter_dir: Path, *, upload: bool) -> int:
    with transaction(env.sessions) as session:
        register(session, env.store, base_dir, upload=upload)
        version = push(session, env.store, adapter_dir)
        req = merges.request_merge(session, ACTOR, version)
        assert req.job is not None
        return req.job.id


def merged_tensors(env: Env, artifact_id: int, dest: Path) -> dict[str, torch.Tensor]:
    with transaction(env.sessions) as session:
        artifact = session.get_one(MergedArtifact, artifact_id)
        files = [(f.path, f.digest) for f in artifact.files]
    for path, digest in files:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        env.store.download_to(digest, dest / path)
    return read_folder(dest)


@pytest.mark.parametrize("upload", [True, False], ids=["base-in-store", "base-in-base-dirs"])
def test_merge_job_end_to_end(env: Env, tiny_models: TinyModels, tmp_path: Path,
                              upload: bool) -> None:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    if not upload:
        env.settings.base_dirs = [base.parent]
    job_id = queue_merge(env, base, adapter, upload=upload)
    assert env.worker().run_once()
    job = env.job(job_id)
    assert job.status == "succeeded", job.error
    assert job.result is not None and job.progress == 1.0
    got = merged_tensors(env, job.result["artifact_id"], tmp_path / "pulled")
    merge_adapter(base, adapter, tmp_path / "direct")
    want = read_folder(tmp_path / "direct")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # Asking again returns the artifact instead of queueing a second merge.
    with transaction(env.sessions) as session:
        artifact = session.get_one(MergedArtifact, job.result["artifact_id"])
        version = session.get_one(AdapterVersion, artifact.version_id)
        again = merges.request_merge(session, ACTOR, version)
        assert again.artifact is not None and again.job is None


def test_base_with_other_weights_fails_with_both_fingerprints(
    env: Env, tiny_models: TinyModels, tmp_path: Path
) -> None:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    job_id = queue_merge(env, base, adapter, upload=False)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for f in base.iterdir():
        (impostor / f.name).write_bytes(f.read_bytes())
    shard = sorted(impostor.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, shard, metadata={"format": "pt"})
    env.settings.base_dirs = [impostor]
    assert env.worker().run_once()
    job = env.job(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error_code == "incompatible_base"
    assert "fingerprint" in (job.error or "") and name in (job.error or "")
    with env.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(MergedArtifact)) == 0


def test_missing_base_weights_fail_clearly(env: Env, tiny_models: TinyModels) -> None:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    job_id = queue_merge(env, base, adapter, upload=False)
    assert env.worker().run_once()
    job = env.job(job_id)
    assert job.status == "failed" and "not available to this worker" in (job.error or "")


def test_corrupted_adapter_blob_fails_the_job(env: Env, tiny_models: TinyModels) -> None:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    job_id = queue_merge(env, base, adapter, upload=True)
    with transaction(env.sessions) as session:
        job = jobs.get_job(session, job_id)
        v = session.get_one(AdapterVersion, job.payload["version_id"])
        weights = next(f for f in v.files if f.path == "adapter_model.safetensors")
        digest, size = weights.digest, weights.size
    corrupt(env.store, digest, size)
    assert env.worker().run_once()
    job = env.job(job_id)
    assert job.status == "failed" and "corrupt" in (job.error or "")


def corrupt(store: BlobStore, digest: str, size: int) -> None:
    """Overwrite a stored blob's bytes behind the store's back (bit rot at rest)."""
    if isinstance(store, LocalBlobStore):
        path = store.path_for(digest)
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    assert isinstance(store, S3BlobStore)
    body = b"".join(store.open(digest))
    bad = body[:-1] + bytes([body[-1] ^ 0xFF])
    store.client.put_object(Bucket=store.bucket, Key=store.key_for(digest), Body=io.BytesIO(bad))
    assert len(bad) == size


def test_nan_producing_adapter_fails_and_worker_goes_on(
    env: Env, tiny_models: TinyModels, tmp_path: Path
) -> None:
    base = tiny_models.base("llama")
    good = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    for f in good.iterdir():
        (poisoned / f.name).write_bytes(f.read_bytes())
    tensors = load_file(poisoned / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key] = torch.full_like(tensors[key], float("inf"))
    save_file(tensors, poisoned / "adapter_model.safetensors", metadata={"format": "pt"})
    bad_job = queue_merge(env, base, poisoned, upload=True)
    with transaction(env.sessions) as session:
        version = push(session, env.store, good, "acme/good")
        good_job = merges.request_merge(session, ACTOR, version).job
        assert good_job is not None
    worker = env.worker()
    assert worker.run_once() and worker.run_once()
    assert env.job(bad_job).status == "failed"
    assert "finite" in (env.job(bad_job).error or "") or "NaN" in (env.job(bad_job).error or "")
    assert env.job(good_job.id).status == "succeeded"


def test_cancel_and_shutdown_are_honoured(env: Env) -> None:
    seen: list[int] = []

    def slow(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx.job_id)
        with transaction(env.sessions) as session:
            if len(seen) == 1:
                jobs.request_cancel(session, ACTOR, ctx.job_id)
        if len(seen) == 2:
            ctx.worker.stopping.set()
        while not ctx.should_stop():
            pass
        raise JobStopped

    with transaction(env.sessions) as session:
        first, _ = jobs.enqueue(session, ACTOR, "slow", {})
        second, _ = jobs.enqueue(session, ACTOR, "slow", {})
    worker = env.worker(slow=slow)
    assert worker.run_once()
    assert env.job(first.id).status == "cancelled"
    assert worker.run_once()
    released = env.job(second.id)
    assert released.status == "queued" and released.attempts == 0


def test_transient_errors_retry_with_backoff(env: Env) -> None:
    def flaky(ctx: JobContext) -> dict[str, Any]:
        raise OSError("disk full")

    with transaction(env.sessions) as session:
        job, _ = jobs.enqueue(session, ACTOR, "flaky", {}, max_attempts=2)
    assert env.worker(flaky=flaky).run_once()
    again = env.job(job.id)
    assert again.status == "queued" and "disk full" in (again.error or "")
