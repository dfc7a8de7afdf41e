"""Seeding a registry for the UI tests straight through the services (and one bulk path)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from registry.blobs import BlobStore, LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AdapterVersion, Blob, Metric, Rollout, VersionFile
from registry.services import adapters, bases, channels, jobs, live, rollouts, versions
from registry.services.channels import Change
from registry.services.context import Actor
from registry.services.jobs import db_now
from registry.services.metrics import MetricInput
from registry.services.rollouts import RolloutSpec
from registry.services.versions import PushRequest
from tests.fixtures.adapters import adapter_files, store_files
from tests.registry.test_bases import entries, registration

ACTOR = Actor("ci-pipeline")
ADAPTER = "acme/support-bot"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
ACCURACY = [0.81, 0.84, 0.86, 0.85, 0.9]
F1 = [0.70, 0.74, 0.78, 0.77, 0.83]


@dataclass
class Seeded:
    versions: list[int]
    rollout_id: int
    queued_job: int
    failed_job: int


def push(session: Session, store: BlobStore, name: str, seed: int, metrics: dict[str, float],
         **extra: object) -> AdapterVersion:
    files = store_files(session, store, adapter_files(seed=seed))
    req = PushRequest(name, files, "tiny/llama", "abc",
                      metrics=[MetricInput(k, v) for k, v in metrics.items()], **extra)  # type: ignore[arg-type]
    return versions.push_version(session, store, ACTOR, req).version


def seed_registry(session: Session, store: BlobStore) -> Seeded:
    """acme/support-bot with 5 versions, a prod canary at its second step with gate
    evaluations, a staging channel with a rollback, and a queued and a failed job."""
    bases.register_base(session, ACTOR, registration(entries()))
    pushed = [push(session, store, ADAPTER, i, {"accuracy": a, "f1": f},
                   labels={"team": "support", "lang": "de"},
                   description="German customer-support assistant",
                   provenance={"git_commit": hashlib.sha1(bytes([i])).hexdigest(),  # noqa: S324
                               "ci_run_url": f"https://ci.example.com/runs/{100 + i}"})
              for i, (a, f) in enumerate(zip(ACCURACY, F1, strict=True))]
    adapters.update_adapter(session, ACTOR, ADAPTER, labels={"team": "support", "lang": "de"})
    push(session, store, "ml-infra/router", 50, {"accuracy": 0.7})
    v = {p.number: p for p in pushed}
    staging = channels.ensure_channel(session, ACTOR, v[1].adapter, "staging")
    channels.promote_now(session, staging, v[1], Change(ACTOR, reason="first"))
    channels.promote_now(session, staging, v[2], Change(ACTOR, reason="newer"))
    rollouts.rollback(session, staging, Change(ACTOR, reason="latency regression"))
    prod = channels.ensure_channel(session, ACTOR, v[1].adapter, "prod")
    channels.promote_now(session, prod, v[4], Change(ACTOR, reason="baseline"))
    spec = RolloutSpec(steps=[10, 50, 100], interval_seconds=3600,
                       gates=["live.error_rate <= 0.02", "live.latency_p95_ms <= stable * 1.1"])
    rollout = rollouts.start(session, prod, v[5], Change(ACTOR, reason="canary"), spec)
    _bake(session, rollout, v[4], v[5])
    failed = _claimed_job(session, 1)
    jobs.fail(session, failed, "worker-1", "base weights fingerprint mismatch: expected "
              "1f2e... got 9a8b... (first differing tensor model.layers.0.q_proj.weight)",
              retry=False, error_code="incompatible_base")
    running = _claimed_job(session, 4)
    jobs.heartbeat(session, running, "worker-1", lease=timedelta(hours=1), progress=0.42,
                   message="merging layer 9 of 22")
    queued, _ = jobs.enqueue(session, ACTOR, "merge", {"version_id": v[5].id},
                             target=f"{ADAPTER}@5", namespace="acme")
    return Seeded(sorted(v), rollout.id, queued.id, failed)


def _bake(session: Session, rollout: Rollout, stable: AdapterVersion,
          canary: AdapterVersion) -> None:
    """One controller decision with healthy live numbers: the canary moves to step 2."""
    for version, errors, p95 in ((stable, 5, 100.0), (canary, 4, 103.0)):
        live.record(session, [live.LiveReport(version, 1000, errors,
                                              {"latency_p95_ms": p95})], "router")
    session.execute(update(Rollout).where(Rollout.id == rollout.id).values(
        next_eval_at=db_now(session) - timedelta(seconds=1)))
    rollouts.tick(session)


def _claimed_job(session: Session, number: int) -> int:
    job, _ = jobs.enqueue(session, ACTOR, "merge", {"version_id": number},
                          target=f"{ADAPTER}@{number}", namespace="acme")
    claimed = jobs.claim(session, "worker-1")
    assert claimed is not None and claimed.id == job.id
    return job.id


def seed_xss(session: Session, store: BlobStore) -> AdapterVersion:
    """acme/xss: HTML in its description, a label and metrics (a metric *name* cannot hold
    HTML through the services, so one row is written as a direct database writer would)."""
    version = push(session, store, "acme/xss", 90, {"accuracy": 0.5},
                   labels={XSS: XSS}, description=XSS,
                   provenance={"ci_run_url": "javascript:window.__xss=1", "source": XSS})
    adapters.update_adapter(session, ACTOR, "acme/xss", labels={XSS: XSS})
    session.add(Metric(version_id=version.id, key=XSS, value=1.0, dataset=XSS,
                       recorded_by=XSS))
    session.flush()
    return version


def seed_database(url: str, blob_dir: Path) -> Seeded:
    """Seed a committed database (e.g. a live server's) through the services."""
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            seeded = seed_registry(session, LocalBlobStore(blob_dir))
            seed_xss(session, LocalBlobStore(blob_dir))
            return seeded
    finally:
        engine.dispose()


def bulk_versions(session: Session, name: str, count: int,
                  metric_keys: tuple[str, ...] = ("accuracy", "f1")) -> int:
    """``count`` versions of ``name`` inserted in bulk (the adapter through the service, the
    version, file and metric rows with multi-row INSERTs); returns the adapter id."""
    adapter = adapters.ensure_adapter(session, ACTOR, name)
    digest = hashlib.sha256(name.encode()).hexdigest()
    session.execute(insert(Blob).values(digest=digest, size=1024))
    rows = [{"adapter_id": adapter.id, "number": n, "manifest_digest": f"{n:064x}",
             "peft_config": {"r": 8}, "base_hub_id": "tiny/llama", "base_revision": "abc",
             "compat_status": "unverified", "provenance": {}, "pushed_by": ACTOR.name,
             "status": "yanked" if n % 97 == 0 else "active", "total_size": 1024}
            for n in range(1, count + 1)]
    ids = session.scalars(insert(AdapterVersion).returning(AdapterVersion.id), rows).all()
    session.execute(insert(VersionFile), [
        {"version_id": vid, "path": "adapter_model.safetensors", "digest": digest, "size": 1024}
        for vid in ids])
    session.execute(insert(Metric), [
        {"version_id": vid, "key": key, "value": 0.5 + (n % 50) / 100 + k / 10,
         "recorded_by": ACTOR.name}
        for n, vid in enumerate(ids, start=1) for k, key in enumerate(metric_keys)])
    adapter.next_version = count + 1
    session.flush()
    return adapter.id
