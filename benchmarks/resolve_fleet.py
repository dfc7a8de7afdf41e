"""Benchmark: the resolve state of a replica holding 100,000 channels (issue 24).

Seeds (once, reused while the counts match) a PostgreSQL database with 100,000 adapters, each
with two versions of two files and a ``prod`` channel on @1 with @2 as a 10 % canary (every
channel has a canary: the state's worst case), rows by ``COPY``. Then measures:

* in this process: the full load (``ResolveState.sync``: one streamed query) and what the
  state holds, traced by ``tracemalloc`` (the allocations made by the load and still alive
  after it), in MiB and bytes per channel; the process's RSS before and after;
* a replica: ``uvicorn registry.api.app:factory --factory --workers 1`` (production, token):
  time from start to the first correct answer for a random channel (the state loads in the
  background; until it has, a request reads its channel from the database), time until
  ``/metrics`` shows every channel held, and the replica's RSS then (VmRSS, VmHWM).

Usage::

    .venv/bin/python benchmarks/resolve_fleet.py [--channels 100000] [--reseed]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
import psycopg
from procs import free_port, start_server
from resolve import DATA, PG, admin_exec, clean_env, copy_rows, database_exists, uvicorn_cmd

from registry import migrate
from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor
from registry.services.resolve_state import ResolveState

DB = "lorareg_bench_resolve_fleet"
NS = "fleet"
NOW = "2026-01-01 00:00:00+00"
FILES = ("adapter_config.json", "adapter_model.safetensors")


def vid(adapter: int, number: int) -> int:
    return adapter * 2 + number - 1


def digest(adapter: int, number: int, index: int) -> str:
    return f"{adapter:08x}{number:04x}{index:04x}".ljust(64, "e")


def seed(channels: int) -> None:
    adapters = range(1, channels + 1)
    peft = json.dumps({"peft_type": "LORA", "r": 16})
    with psycopg.connect(f"{PG}/{DB}") as conn:
        copy_rows(conn, "namespaces", "id, name, description, created_at",
                  iter([(1, NS, "benchmark", NOW)]))
        copy_rows(conn, "adapters", "id, namespace_id, name, description, next_version, "
                  "created_at, updated_at",
                  ((a, 1, f"a{a:06d}", "", 3, NOW, NOW) for a in adapters))
        copy_rows(conn, "blobs", "digest, size, created_at, last_seen_at",
                  ((digest(a, n, i), 1000 + i, NOW, NOW)
                   for a in adapters for n in (1, 2) for i in range(len(FILES))))
        copy_rows(conn, "adapter_versions",
                  "id, adapter_id, number, manifest_digest, peft_config, base_hub_id, "
                  "base_revision, compat_status, provenance, pushed_by, status, total_size, "
                  "created_at",
                  ((vid(a, n), a, n, digest(a, n, 99), peft, "tiny/base", "main",
                    "unverified", "{}", "bench", "active", 2001, NOW)
                   for a in adapters for n in (1, 2)))
        copy_rows(conn, "version_files", "version_id, path, digest, size",
                  ((vid(a, n), p, digest(a, n, i), 1000 + i)
                   for a in adapters for n in (1, 2) for i, p in enumerate(FILES)))
        copy_rows(conn, "channels",
                  "id, adapter_id, name, stable_version_id, canary_version_id, "
                  "canary_weight_bp, rollout_id, profile, protected, revision, created_at, "
                  "updated_at",
                  ((a, a, "prod", vid(a, 1), vid(a, 2), 1000, a, "any", False, 2, NOW, NOW)
                   for a in adapters))
        for table in ("namespaces", "adapters", "adapter_versions", "channels"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
        conn.execute("ANALYZE")


def prepare(channels: int, reseed: bool) -> str:
    """The seeded database (reused when its channel count matches) and an admin token."""
    fresh = reseed or not database_exists(DB)
    if not fresh:
        with psycopg.connect(f"{PG}/{DB}") as conn:
            row = conn.execute("SELECT count(*) FROM channels").fetchone()
            fresh = row is None or row[0] != channels
    engine = make_engine(f"{PG}/{DB}")
    try:
        if fresh:
            engine.dispose()
            admin_exec(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            admin_exec(f"CREATE DATABASE {DB}")
            migrate.upgrade(engine)
            started = time.perf_counter()
            seed(channels)
            print(f"seeded {channels} channels in {time.perf_counter() - started:.1f} s",
                  flush=True)
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("bench"), name="bench-fleet",
                                               role="admin")
        return plaintext
    finally:
        engine.dispose()


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def in_process(channels: int) -> None:
    engine = make_engine(f"{PG}/{DB}")
    sessions = make_session_factory(engine)
    try:
        with transaction(sessions, readonly=True):
            pass  # connect first: the load's figures leave the connection out
        state = ResolveState(sessions, background=False)
        before = rss_mib()
        started = time.perf_counter()
        state.sync()
        took = time.perf_counter() - started
        after = rss_mib()
        held = len(state.snapshots())
        assert held == channels, held
        print(f"  full load of {held} channels: {took:.2f} s; process RSS {before:.0f} -> "
              f"{after:.0f} MiB (+{after - before:.0f})", flush=True)
        del state
        gc.collect()
        traced = ResolveState(sessions, background=False)
        tracemalloc.start()
        traced.sync()
        gc.collect()
        size, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  the state, traced: {size / 2**20:.1f} MiB held ({size / channels:.0f} bytes "
              f"per channel with a canary), {peak / 2**20:.1f} MiB at the peak of the load",
              flush=True)
    finally:
        engine.dispose()


def replica(token: str, channels: int, work: Path) -> None:
    port = free_port()
    env = clean_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=f"{PG}/{DB}",
                    LORAREG_BLOB_URL=f"file://{work / 'blobs'}")
    auth = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}"
    n = random.Random(7).randint(1, channels)
    started = time.monotonic()
    server = start_server("fleet", uvicorn_cmd("registry.api.app:factory", port, 1), env,
                          work / "fleet.log", url, "/healthz", timeout=300)
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            while True:
                r = http.get(f"/api/v1/resolve/{NS}/a{n:06d}:prod", params={"key": "k"})
                if r.status_code == 200 and r.json()["version"] in (1, 2):
                    break
                time.sleep(0.01)
            first = time.monotonic() - started
            while _held(http) < channels:
                time.sleep(0.05)
            loaded = time.monotonic() - started
        print(f"  replica: first correct answer {first:.2f} s after start, every channel "
              f"held {loaded:.2f} s after start; RSS {rss_mib(server.proc.pid):.0f} MiB "
              f"(peak {rss_mib(server.proc.pid, 'VmHWM'):.0f} MiB)", flush=True)
    finally:
        server.stop()


def _held(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    found = re.search(r"^lorareg_resolve_channels (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Python "
          f"{sys.version.split()[0]}", flush=True)
    token = prepare(args.channels, args.reseed)
    in_process(args.channels)
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA, prefix="fleet-") as tmp:
        replica(token, args.channels, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
