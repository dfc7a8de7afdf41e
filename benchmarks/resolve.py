"""Benchmark: ``GET /api/v1/resolve/{ns}/{name}:prod?key=...`` under load (issue 6).

Seeds (once, cached by row counts) a dedicated PostgreSQL database with 10k adapters and 100k
versions (2 files each, blob rows included; the blob bytes need not exist for resolve), one
``prod`` channel per adapter, and on the adapter under load an active canary: stable v9,
canary v10, weight 1000 bp (10%), rollout id 1. Rows go in with ``COPY`` (a few seconds).

Then ``wrk`` drives 64 concurrent connections for ``--duration`` seconds after a short warm-up,
against each server in turn (the others idle). A Lua script picks, for every request, an
adapter from a *spread* and a new ``key``:

* ``hot``: the one adapter under load (the canary one);
* ``100`` and ``10k``: uniformly among the first 100 / all 10,000 adapters;
* ``zipf``: Zipf(1.1) over the 10,000 adapters (rank r drawn with weight r^-1.1).

Contenders:

* resolve: ``uvicorn registry.api.app:factory --factory`` (tokens required, bearer header);
* trivial: an ``async def`` route returning ``{"ok": True}`` for any resolve-shaped path,
  served by uvicorn with the same flags and worker count, driven by the same Lua script (10k
  spread) and header (it ignores both), so that wrk, which shares the machine's CPUs, costs
  the same in both; each round measures trivial, then every spread, for ``--rounds`` rounds,
  and the ratios are the medians over rounds. One extra run of trivial with plain wrk (no
  script, no header) is shown for reference;
* MLflow: ``GET /api/2.0/mlflow/registered-models/alias?name=...&alias=prod`` against
  ``mlflow server`` (same worker count) on its own PostgreSQL database holding the same
  10,000 models (rows written by SQL into the schema MLflow made), with the same spreads;
  installed only in ``benchmarks/_data/mlflow-venv`` (gitignored; skipped, and said so, when
  that venv is absent).

Usage::

    .venv/bin/python benchmarks/resolve.py [--duration 10] [--rounds 3] [--skip-mlflow]
        [--spreads hot,100,10k,zipf]
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
from concurrent.futures import ThreadPoolExecutor
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

# The spreads: (first adapter index, how many, Zipf exponent or 0 for uniform).
SPREADS = {"hot": (HOT, 1, 0.0), "100": (1, 100, 0.0), "10k": (1, 10_000, 0.0),
           "zipf": (1, 10_000, 1.1)}
RESOLVE_PATH = "/api/v1/resolve/" + NS + "/a%05d:prod?key=user-%d-%d"
MLFLOW_PATH = "/api/2.0/mlflow/registered-models/alias?alias=prod&name=" + NS + "-a%05d&k=%d-%d"

LUA = """
local n, first, count, s = 0, FIRST, COUNT, EXPONENT
local cdf, threads = {}, 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
init = function(args)
  math.randomseed(os.time() * 100 + (id or 0))
  if s > 0 then
    local total = 0
    for i = 1, count do total = total + i ^ -s; cdf[i] = total end
    for i = 1, count do cdf[i] = cdf[i] / total end
  end
end
local function pick()
  if s == 0 then return math.random(0, count - 1) end
  local u, lo, hi = math.random(), 1, count
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end
request = function()
  n = n + 1
  return wrk.format(nil, string.format("PATH", first + pick(), n, math.random(1, 1000000000)))
end
"""


def lua(spread: str, path: str) -> str:
    """The wrk script of a spread, requesting ``path`` (a format with the adapter index, the
    request number and a random number)."""
    first, count, exponent = SPREADS[spread]
    return (LUA.replace("FIRST", str(first)).replace("COUNT", str(count))
            .replace("EXPONENT", str(exponent)).replace("PATH", path))


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
    """The floor: FastAPI + uvicorn answering ``{"ok": true}`` (for any resolve path too, so
    that the spreads' scripts can drive it)."""
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/v1/resolve/{ns}/{target}")
    async def resolve_shaped(ns: str, target: str) -> dict[str, bool]:
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
    """Sanity: 200s, the canary share near 10%, sticky keys; and every spread's adapters
    answer with their stable version (@10; the hot one's @9 or its canary @10)."""
    with httpx.Client(headers=headers, timeout=10) as http:
        first = http.get(url, params={"key": "k0"})
        first.raise_for_status()
        body = first.json()
        canary = sum(http.get(url, params={"key": f"k{i}"}).json()["canary"]
                     for i in range(1000))
        again = http.get(url, params={"key": "k0"}).json()
        base = url.rsplit("/", 1)[0]
        for n in (1, 2, 100, 101, 5000, 9999, 10_000):
            answer = http.get(f"{base}/a{n:05d}:prod", params={"key": "k"}).json()
            assert answer["ref"] == f"{NS}/a{n:05d}@{VERSIONS_PER_ADAPTER}", answer
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


def mlflow_model(http: httpx.Client, index: int) -> None:
    """Registered model ``bench-a<index>`` with version 1 under the alias ``prod``."""
    name = f"{NS}-a{index:05d}"
    mlflow_post(http, "registered-models/create", {"name": name})
    mlflow_post(http, "model-versions/create", {"name": name, "source": f"s3://bench/{name}/v1"})
    mlflow_post(http, "registered-models/alias", {"name": name, "alias": "prod", "version": "1"})


def run_mlflow(work: Path, args: argparse.Namespace, scripts: dict[str, Path]
               ) -> dict[str, Result] | None:
    """MLflow's alias lookup over the same 10,000 models, once per spread."""
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
    with serve("mlflow", cmd, env, work, "/health", timeout=300) as server:
        started = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=60) as http, \
                ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: mlflow_model(http, i), range(1, args.adapters + 1)))
            answer = http.get("/api/2.0/mlflow/registered-models/alias",
                              params={"name": f"{NS}-a{HOT:05d}", "alias": "prod"})
            answer.raise_for_status()
        print(f"  MLflow: {args.adapters} models in {time.perf_counter() - started:.0f} s; "
              f"answers {json.dumps(answer.json())[:100]}", flush=True)
        return {spread: measure(f"MLflow {spread}", f"{server.url}/", {}, args, script)
                for spread, script in scripts.items()}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(rounds: list[dict[str, Result]], plain: Result,
           mlflow: dict[str, Result] | None) -> str:
    """The ratios of every spread to trivial (medians over rounds) and to MLflow."""
    out = io.StringIO()
    for spread in [k for k in rounds[0] if k != "trivial"]:
        tputs = [r[spread].rps / r["trivial"].rps for r in rounds]
        p99s = [r[spread].p99_ms / r["trivial"].p99_ms for r in rounds]
        tput, p99 = statistics.median(tputs), statistics.median(p99s)
        rps = statistics.median(r[spread].rps for r in rounds)
        print(f"\n{spread}: per round throughput ratio {', '.join(f'{x:.2f}' for x in tputs)};"
              f" p99 ratio {', '.join(f'{x:.2f}' for x in p99s)}", file=out)
        print(f"  {spread} / trivial throughput  {tput:6.2f}   (goal >= 0.5: "
              f"{verdict(tput >= 0.5)})", file=out)
        print(f"  {spread} p99 / trivial p99     {p99:6.2f}   (goal <= 2: {verdict(p99 <= 2)})",
              file=out)
        print(f"  {spread} / trivial, plain wrk  {rps / plain.rps:6.2f}   (for reference)",
              file=out)
        if mlflow is not None and spread in mlflow:
            vs = rps / mlflow[spread].rps
            print(f"  {spread} / MLflow throughput   {vs:6.1f}x  (goal > 20x: "
                  f"{verdict(vs > 20)})", file=out)
        else:
            print(f"  {spread} / MLflow throughput   n/a (MLflow not measured)", file=out)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up load")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2,
                        help="uvicorn/MLflow server workers (the same for all three)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of trivial then every spread (ratios: the median)")
    parser.add_argument("--spreads", default=",".join(SPREADS),
                        help=f"comma-separated, of {', '.join(SPREADS)}")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()
    spreads = [s for s in args.spreads.split(",") if s]
    assert set(spreads) <= set(SPREADS), spreads
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; wrk -t2 "
          f"-c{args.connections}, {args.warmup} s warm-up + {args.duration} s each; "
          f"{args.workers} server workers; spreads {', '.join(spreads)}", flush=True)
    token = prepare(args.adapters, args.reseed)
    DATA.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {token}"}
    rounds: list[dict[str, Result]] = []
    with tempfile.TemporaryDirectory(dir=DATA, prefix="resolve-") as tmp:
        work = Path(tmp)
        scripts = {spread: work / f"{spread}.lua" for spread in spreads}
        mlflow_scripts = {spread: work / f"mlflow-{spread}.lua" for spread in spreads}
        for spread in spreads:
            scripts[spread].write_text(lua(spread, RESOLVE_PATH))
            mlflow_scripts[spread].write_text(lua(spread, MLFLOW_PATH))
        trivial_script = work / "trivial.lua"
        trivial_script.write_text(lua("10k", RESOLVE_PATH))
        # Both servers up at once (idle, they cost nothing) so the rounds can alternate.
        with trivial_server(work, args.workers) as trivial, \
                resolve_server(work, args.workers) as api:
            check_resolve(f"{api.url}/api/v1/resolve/{NS}/a{HOT:05d}:prod", auth)
            plain = measure("trivial, plain wrk (no script, no header)", f"{trivial.url}/ok",
                            {}, args)
            for n in range(1, args.rounds + 1):
                print(f" round {n}", flush=True)
                # The same request generator and header for all: wrk shares the CPUs.
                results = {"trivial": measure("trivial", f"{trivial.url}/", auth, args,
                                              trivial_script)}
                for spread in spreads:
                    results[spread] = measure(f"resolve {spread}", f"{api.url}/", auth, args,
                                              scripts[spread])
                rounds.append(results)
        mlflow = None if args.skip_mlflow else run_mlflow(work, args, mlflow_scripts)
    print(report(rounds, plain, mlflow), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
