"""Benchmark: server time of the UI's adapter page for an adapter with 1,000 versions.

Builds a fresh migrated database (SQLite file, or PostgreSQL with ``--database-url``), inserts
one adapter with ``--versions`` versions in bulk (one file and ``--metrics`` eval metrics
each; every 97th version yanked), then calls the app in-process (Starlette's TestClient: no
network, no second process) as a signed-in reader and times, after a warm-up:

* ``/ui/adapters/bench/many``: the adapter page (first page of 50 versions, one SVG chart
  per metric over all versions, channels, pagination);
* the same page sorted by a metric (``?sort=metric.m0&order=asc``);
* the peer: ``GET /api/v1/adapters/bench/many/versions?limit=50``, the JSON API's list of the
  same 50 versions with their metrics (the least work any page showing them has to do).

Each contender runs ``--repeat`` times round-robin; median and p95 wall time per request are
reported with the ratio page / API. The page must stay well under a second: the script exits
non-zero if a median reaches ``--budget-ms`` (default 1000).

Usage::

    .venv/bin/python benchmarks/ui.py [--versions 1000] [--metrics 3] [--repeat 30]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from registry import migrate
from registry.api.app import create_app
from registry.blobs import LocalBlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AdapterVersion, Blob, Metric, VersionFile
from registry.services import adapters, tokens
from registry.services.context import Actor

ACTOR = Actor("bench")
ADAPTER = "bench/many"


def bulk_versions(session: Session, count: int, metrics: int) -> None:
    """``count`` versions of ADAPTER in multi-row INSERTs (the adapter via the service)."""
    adapter = adapters.ensure_adapter(session, ACTOR, ADAPTER, description="1,000 versions")
    digest = hashlib.sha256(b"bench").hexdigest()
    session.execute(insert(Blob).values(digest=digest, size=4096))
    rows = [{"adapter_id": adapter.id, "number": n, "manifest_digest": f"{n:064x}",
             "peft_config": {"r": 8}, "base_hub_id": "bench/base", "base_revision": "r1",
             "compat_status": "unverified", "provenance": {"git_commit": f"{n:040x}"},
             "pushed_by": ACTOR.name, "status": "yanked" if n % 97 == 0 else "active",
             "total_size": 4096} for n in range(1, count + 1)]
    ids = session.scalars(insert(AdapterVersion).returning(AdapterVersion.id), rows).all()
    session.execute(insert(VersionFile), [
        {"version_id": vid, "path": "adapter_model.safetensors", "digest": digest, "size": 4096}
        for vid in ids])
    session.execute(insert(Metric), [
        {"version_id": vid, "key": f"m{k}", "value": (n * (k + 3)) % 101 / 100,
         "recorded_by": ACTOR.name}
        for n, vid in enumerate(ids, start=1) for k in range(metrics)])
    adapter.next_version = count + 1


def build(url: str, blobs: Path, versions: int, metrics: int) -> tuple[TestClient, Engine]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    with transaction(make_session_factory(engine)) as session:
        bulk_versions(session, versions, metrics)
        _, reader = tokens.create_token(session, ACTOR, name="bench", role="reader")
    settings = Settings(mode="production", database_url=url, blob_url=f"file://{blobs}")
    app = create_app(settings, engine=engine, store=LocalBlobStore(blobs), host="0.0.0.0")
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {reader}"
    return client, engine


def timed(client: TestClient, path: str) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        response = client.get(path)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
        return elapsed
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--database-url", default=None,
                        help="an empty database to use (default: a temporary SQLite file)")
    parser.add_argument("--budget-ms", type=float, default=1000.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorareg-ui-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        started = time.perf_counter()
        client, engine = build(url, Path(tmp) / "blobs", args.versions, args.metrics)
        print(f"built {args.versions} versions x {args.metrics} metrics on "
              f"{engine.dialect.name} in {time.perf_counter() - started:.2f} s")
        contenders = {
            "UI adapter page": timed(client, f"/ui/adapters/{ADAPTER}"),
            "UI adapter page, sorted by metric": timed(
                client, f"/ui/adapters/{ADAPTER}?sort=metric.m0&order=asc"),
            "API versions list (peer)": timed(client, f"/api/v1/adapters/{ADAPTER}/versions"
                                                      "?limit=50"),
        }
        response = client.get(f"/ui/adapters/{ADAPTER}")  # the client accepts gzip
        page, wire = response.text, int(response.headers["content-length"])
        assert f'data-points="{args.versions}"' in page, "chart lacks a point per version"
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(3):  # warm-up: templates compiled, connections pooled
            for run in contenders.values():
                run()
        for _ in range(args.repeat):
            for name, run in contenders.items():
                samples[name].append(run())
        engine.dispose()
    return report(samples, args.budget_ms, len(page.encode()), wire)


def report(samples: dict[str, list[float]], budget_ms: float, page_bytes: int, wire: int
           ) -> int:
    medians = {name: statistics.median(s) * 1000 for name, s in samples.items()}
    print("\n| request | median | p95 |\n|---|---:|---:|")
    for name, s in samples.items():
        p95 = sorted(s)[max(0, int(len(s) * 0.95) - 1)] * 1000
        print(f"| {name} | {medians[name]:.1f} ms | {p95:.1f} ms |")
    peer = medians["API versions list (peer)"]
    print("\n| ratio (median) | result |\n|---|---:|")
    for name in list(samples)[:2]:
        print(f"| {name} / API list | {medians[name] / peer:.2f} |")
    print(f"\nadapter page size: {page_bytes / 1024:.0f} KiB, {wire / 1024:.0f} KiB gzipped")
    over = [name for name in list(samples)[:2] if medians[name] >= budget_ms]
    if over:
        print(f"over the {budget_ms:.0f} ms budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
