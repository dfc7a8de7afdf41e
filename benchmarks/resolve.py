"""Benchmark: ``GET /api/v1/resolve/{ns}/{name}:prod?key=...`` under load (issue 6).

Seeds (once, cached by row counts) a dedicated PostgreSQL database with 10k adapters and 100k
versions (2 files each, blob rows included; the blob bytes need not exist for resolve), one
``prod`` channel per adapter, and on the adapter under load an active canary: stable v9,
canary v10, weight 1000 bp (10%), rollout id 1. Rows go in with ``COPY`` (a few seconds).

Then ``wrk`` drives 64 concurrent connections for ``--duration`` seconds after a short warm-up,
against each server in turn (the others idle):

* resolve: ``uvicorn registry.api.app:factory --factory`` (tokens required, bearer header),
  a Lua script gives every request a new ``key``;
* trivial: ``@app.get("/ok") async def ok(): return {"ok": True}`` served by uvicorn with the
  same flags and worker count, driven by the same Lua script and header (it ignores both), so
  that wrk, which shares the machine's CPUs, costs the same in both; trivial and resolve
  alternate for ``--rounds`` rounds and the ratios are the medians over rounds. One extra run
  of trivial with plain wrk (no script, no header) is shown for reference;
* MLflow: ``GET /api/2.0/mlflow/registered-models/alias?name=...&alias=prod`` against
  ``mlflow server`` (same worker count) on its own PostgreSQL database, installed only in
  ``benchmarks/_data/mlflow-venv`` (gitignored; skipped, and said so, when that venv is absent).

Usage::

    .venv/bin/python benchmarks/resolve.py [--duration 10] [--rounds 3] [--skip-mlflow]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from fastapi import FastAPI
from procs import Server, free_port, start_server

from registry import migrate
from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "_data"
MLFLOW_BIN = DATA / "mlflow-venv" / "bin" / "mlflow"
PG = "postgresql://postgres@127.0.0.1:5432"
DB = "lorareg_bench_resolve"
MLFLOW_DB = "lorareg_bench_resolve_mlflow"
NS = "bench"
HOT = 4242  # index of the adapter under load
VERSIONS_PER_ADAPTER = 10
FILES = ("adapter_config.json", "adapter_model.safetensors")
NOW = "2026-01-01 00:00:00+00"

LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?key=user-" .. n .. "-" .. math.random(1, 1000000000))
end
"""


# --- database --------------------------------------------------------------------------------


def admin_exec(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def database_exists(name: str) -> bool:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None


def copy_rows(conn: psycopg.Connection, table: str, columns: str,
              rows: Iterator[tuple[object, ...]]) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(
            f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def vid(adapter: int, number: int) -> int:
    """The id of version ``number`` of adapter ``adapter``."""
    return adapter * VERSIONS_PER_ADAPTER + number


def seed(adapters: int) -> None:
    """Bulk rows with COPY: namespaces, adapters, adapter_versions, blobs, files, channels."""
    versions = adapters * VERSIONS_PER_ADAPTER
    digest = {(a, n, p): f"{a:08x}{n:04x}{i:04x}".ljust(64, "a")
              for a in range(1, adapters + 1) for n in range(1, VERSIONS_PER_ADAPTER + 1)
              for i, p in enumerate(FILES)}
    peft = json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                       "target_modules": ["q_proj", "v_proj"]})
    with psycopg.connect(f"{PG}/{DB}") as conn:
        copy_rows(conn, "namespaces", "id, name, description, created_at",
                  iter([(1, NS, "benchmark", NOW)]))
        copy_rows(conn, "adapters", "id, namespace_id, name, description, next_version, "
                  "created_at, updated_at",
                  ((a, 1, f"a{a:05d}", "", VERSIONS_PER_ADAPTER + 1, NOW, NOW)
                   for a in range(1, adapters + 1)))
        copy_rows(conn, "blobs", "digest, size, created_at, last_seen_at",
                  ((d, 1000 + len(d), NOW, NOW) for d in digest.values()))
        copy_rows(conn, "adapter_versions",
                  "id, adapter_id, number, manifest_digest, peft_config, base_hub_id, "
                  "base_revision, compat_status, provenance, pushed_by, status, total_size, "
                  "created_at",
                  ((vid(a, n), a, n, f"{a:08x}{n:04x}".ljust(64, "m"), peft,
                    "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "main", "unverified", "{}", "bench",
                    "active", 4096, NOW)
                   for a in range(1, adapters + 1) for n in range(1, VERSIONS_PER_ADAPTER + 1)))
        copy_rows(conn, "version_files", "version_id, path, digest, size",
                  ((vid(a, n), p, d, 1000 + len(d)) for (a, n, p), d in digest.items()))
        copy_rows(conn, "channels",
                  "id, adapter_id, name, stable_version_id, canary_version_id, "
                  "canary_weight_bp, rollout_id, profile, protected, revision, created_at, "
                  "updated_at",
                  ((a, a, "prod",
                    vid(a, VERSIONS_PER_ADAPTER - (1 if a == HOT else 0)),
                    vid(a, VERSIONS_PER_ADAPTER) if a == HOT else None,
                    1000 if a == HOT else 0, 1 if a == HOT else None, "any", False, 3, NOW, NOW)
                   for a in range(1, adapters + 1)))
        for table in ("namespaces", "adapters", "adapter_versions", "channels"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
        conn.execute("ANALYZE")
    print(f"seeded {adapters} adapters, {versions} versions, {len(digest)} files", flush=True)


def counts() -> tuple[int, int]:
    with psycopg.connect(f"{PG}/{DB}") as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM adapters), "
                           "(SELECT count(*) FROM adapter_versions)").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def prepare(adapters: int, reseed: bool) -> str:
    """The seeded database (reused when its counts match) and a fresh admin token."""
    want = (adapters, adapters * VERSIONS_PER_ADAPTER)
    if reseed or not database_exists(DB) or counts() != want:
        admin_exec(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin_exec(f"CREATE DATABASE {DB}")
        engine = make_engine(f"{PG}/{DB}")
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        started = time.perf_counter()
        seed(adapters)
        print(f"  (seeding took {time.perf_counter() - started:.1f} s)", flush=True)
    else:
        print(f"reusing {DB}: {want[0]} adapters, {want[1]} versions", flush=True)
    engine = make_engine(f"{PG}/{DB}")
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("bench"), name="bench-resolve",
                                               role="admin")
        return plaintext
    finally:
        engine.dispose()


# --- servers ---------------------------------------------------------------------------------


def trivial_app() -> FastAPI:
    """The floor: FastAPI + uvicorn answering ``{"ok": true}``."""
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    return app


@contextmanager
def serve(name: str, cmd: list[str], env: dict[str, str], work: Path, probe: str,
          timeout: float = 180) -> Iterator[Server]:
    port = cmd[cmd.index("--port") + 1]
    server = start_server(name, cmd, env, work / f"{name}.log", f"http://127.0.0.1:{port}",
                          probe, timeout)
    try:
        yield server
    finally:
        server.stop()


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAREG_", "MLFLOW_"))}
    return {**env, **values}


def uvicorn_cmd(app: str, port: int, workers: int, *extra: str) -> list[str]:
    """The same flags for ours and for the trivial app."""
    return [sys.executable, "-m", "uvicorn", app, "--factory", *extra, "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--log-level", "warning",
            "--no-access-log"]


# --- load --------------------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    load: float


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, headers: dict[str, str], connections: int, seconds: int,
        script: Path | None) -> Result:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise RuntimeError(f"no p{p} in wrk output:\n{out}")
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return Result(float(rps.group(1)), percentile("50"), percentile("99"), int(total.group(1)),
                  os.getloadavg()[0])


def measure(label: str, url: str, headers: dict[str, str], args: argparse.Namespace,
            script: Path | None = None) -> Result:
    wrk(url, headers, args.connections, args.warmup, script)
    result = wrk(url, headers, args.connections, args.duration, script)
    print(f"  {label:<10} {result.rps:9.0f} req/s   p50 {result.p50_ms:8.2f} ms   "
          f"p99 {result.p99_ms:8.2f} ms   ({result.requests} requests, load average "
          f"{result.load:.1f})", flush=True)
    return result


# --- contenders --------------------------------------------------------------------------------


@contextmanager
def resolve_server(work: Path, workers: int) -> Iterator[Server]:
    env = clean_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=f"{PG}/{DB}",
                    LORAREG_BLOB_URL=f"file://{work / 'blobs'}")
    with serve("resolve", uvicorn_cmd("registry.api.app:factory", free_port(), workers), env,
               work, "/healthz") as api:
        yield api


def check_resolve(url: str, headers: dict[str, str]) -> None:
    """Sanity: 200s, the canary share near 10%, sticky keys."""
    with httpx.Client(headers=headers, timeout=10) as http:
        first = http.get(url, params={"key": "k0"})
        first.raise_for_status()
        body = first.json()
        canary = sum(http.get(url, params={"key": f"k{i}"}).json()["canary"]
                     for i in range(1000))
        again = http.get(url, params={"key": "k0"}).json()
    assert again["version"] == body["version"], (body, again)
    assert 50 <= canary <= 150, canary
    print(f"  resolve answers e.g. {body['ref']} (canary={body['canary']}, "
          f"{len(body['files'])} files); {canary / 10:.1f}% of 1000 keys on the canary",
          flush=True)


@contextmanager
def trivial_server(work: Path, workers: int) -> Iterator[Server]:
    cmd = uvicorn_cmd("resolve:trivial_app", free_port(), workers,
                      "--app-dir", str(ROOT / "benchmarks"))
    with serve("trivial", cmd, clean_env(), work, "/ok") as app:
        yield app


def mlflow_post(http: httpx.Client, path: str, body: dict[str, object]) -> dict[str, object]:
    response = http.post(f"/api/2.0/mlflow/{path}", json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"MLflow {path}: {response.status_code} {response.text}")
    out: dict[str, object] = response.json()
    return out


def run_mlflow(work: Path, args: argparse.Namespace) -> Result | None:
    if not MLFLOW_BIN.exists():
        print(f"  MLflow   skipped: {MLFLOW_BIN} not installed", flush=True)
        return None
    admin_exec(f"DROP DATABASE IF EXISTS {MLFLOW_DB} WITH (FORCE)")
    admin_exec(f"CREATE DATABASE {MLFLOW_DB}")
    port = free_port()
    cmd = [str(MLFLOW_BIN), "server", "--backend-store-uri",
           f"{PG.replace('postgresql:', 'postgresql+psycopg2:')}/{MLFLOW_DB}",
           "--default-artifact-root", f"file://{work / 'mlartifacts'}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    env = clean_env(PATH=f"{MLFLOW_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    name = f"{NS}-a{HOT:05d}"
    with serve("mlflow", cmd, env, work, "/health", timeout=300) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            mlflow_post(http, "registered-models/create", {"name": name})
            mlflow_post(http, "model-versions/create",
                        {"name": name, "source": "s3://bench/adapters/v1"})
            mlflow_post(http, "registered-models/alias",
                        {"name": name, "alias": "prod", "version": "1"})
            answer = http.get("/api/2.0/mlflow/registered-models/alias",
                              params={"name": name, "alias": "prod"})
            answer.raise_for_status()
            print(f"  MLflow answers {json.dumps(answer.json())[:120]}", flush=True)
        url = f"{server.url}/api/2.0/mlflow/registered-models/alias?name={name}&alias=prod"
        return measure("MLflow", url, {}, args)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up load")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2,
                        help="uvicorn/MLflow server workers (the same for all three)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating trivial/resolve rounds (ratios: the median)")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; wrk -t2 "
          f"-c{args.connections}, {args.warmup} s warm-up + {args.duration} s each; "
          f"{args.workers} server workers", flush=True)
    token = prepare(args.adapters, args.reseed)
    DATA.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {token}"}
    rounds: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory(dir=DATA, prefix="resolve-") as tmp:
        work = Path(tmp)
        script = work / "keys.lua"
        script.write_text(LUA)
        # Both servers up at once (idle, they cost nothing) so the rounds can alternate.
        with trivial_server(work, args.workers) as trivial, \
                resolve_server(work, args.workers) as api:
            url = f"{api.url}/api/v1/resolve/{NS}/a{HOT:05d}:prod"
            check_resolve(url, auth)
            plain = measure("trivial, plain wrk (no script, no header)", f"{trivial.url}/ok",
                            {}, args)
            for n in range(1, args.rounds + 1):
                print(f" round {n}", flush=True)
                # The same request generator and header for both: wrk shares the CPUs.
                rounds.append((measure("trivial", f"{trivial.url}/ok", auth, args, script),
                               measure("resolve", url, auth, args, script)))
        mlflow = None if args.skip_mlflow else run_mlflow(work, args)
    tputs = [r.rps / t.rps for t, r in rounds]
    p99s = [r.p99_ms / t.p99_ms for t, r in rounds]
    tput, p99 = statistics.median(tputs), statistics.median(p99s)
    resolve_rps = statistics.median(r.rps for _, r in rounds)
    out = io.StringIO()
    print(f"\nper round: throughput ratio {', '.join(f'{x:.2f}' for x in tputs)}; "
          f"p99 ratio {', '.join(f'{x:.2f}' for x in p99s)}", file=out)
    print(f"resolve / trivial throughput  {tput:6.2f}   median of {len(rounds)} "
          f"(goal >= 0.5: {verdict(tput >= 0.5)})", file=out)
    print(f"resolve p99 / trivial p99     {p99:6.2f}   median of {len(rounds)} "
          f"(goal <= 2: {verdict(p99 <= 2)})", file=out)
    print(f"resolve / trivial, plain wrk  {resolve_rps / plain.rps:6.2f}   (for reference)",
          file=out)
    if mlflow is not None:
        vs = resolve_rps / mlflow.rps
        print(f"resolve / MLflow throughput   {vs:6.1f}x  (goal > 20x: {verdict(vs > 20)})",
              file=out)
    else:
        print("resolve / MLflow throughput   n/a (MLflow not measured)", file=out)
    print(out.getvalue(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
