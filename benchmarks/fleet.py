"""Fleet convergence: time from ``promote`` to "loaded on every replica", and what an idle agent
costs.

Setup: uvicorn (production entry point, tokens) on a fresh PostgreSQL database at
127.0.0.1:5432, local blobs, a tiny random Llama registered as the base, one pool bound to
``bench/bot:prod`` (drain 0 s), N ``lorareg agent`` processes in filesystem mode (no engine,
``--interval 2s``), each with its own cache folder. For each of ``--promotions`` new versions:
``promote --now``, then ``Client.wait_loaded`` (what ``promote --wait-loaded`` runs: it polls
the pool status every 0.1 s, backing off to 0.5 s) until every live replica reports the new
served name loaded. The time is wall clock from just before the promote call to its return.

Steady state: after the last promotion, each agent's CPU (utime + stime from /proc) over
``--idle`` seconds, and its RSS (VmRSS).

    .venv/bin/python benchmarks/fleet.py --replicas 1 20 --promotions 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from registry.client import Client  # noqa: E402 (after the path setup above)
from tests.cli.helpers import LORAREG, uvicorn_server  # noqa: E402
from tests.conftest import PgDatabases  # noqa: E402
from tests.fixtures.models import TinyModels  # noqa: E402

BASE = "tiny/llama@bench"
POOL = "bench/cpu"
TICK = os.sysconf("SC_CLK_TCK")


def push(client: Client, adapter: Path, tmp: Path, seed: int) -> int:
    folder = tmp / f"push-{seed}"
    shutil.copytree(adapter, folder)
    (folder / "notes.txt").write_text(f"seed {seed}\n")
    return int(client.push(folder, "bench/bot", BASE).version)


def start_agents(env: dict[str, str], base: Path, tmp: Path, n: int, tag: str
                 ) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        name = f"{tag}-{i:02d}"
        log = (tmp / f"{name}.log").open("ab")
        procs.append(subprocess.Popen(
            [LORAREG, "agent", "--pool", POOL, "--model-dir", str(base), "--cache-dir",
             str(tmp / f"cache-{name}"), "--replica-id", name, "--interval", "2s"],
            env={**env, "LORAREG_FINGERPRINT_CACHE": str(tmp / f"fp-{name}.sqlite")},
            stdout=log, stderr=log))
        log.close()
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def run(n: int, client: Client, env: dict[str, str], base: Path, adapter: Path, tmp: Path,
        promotions: int, idle: float) -> dict[str, float]:
    # One pool for every run: the previous run's replicas are forgotten first.
    for r in client.pool_status(POOL).replicas:
        client.forget_replica(POOL, r.replica_id)
    procs = start_agents(env, base, tmp, n, f"n{n}")
    try:
        first = push(client, adapter, tmp, 1000 * n)
        client.promote(f"bench/bot@{first}", "prod", now=True)
        client.wait_loaded(POOL, client.served_name(f"bench/bot@{first}"), timeout=300)
        times = []
        for i in range(promotions):
            number = push(client, adapter, tmp, 1000 * n + i + 1)
            name = client.served_name(f"bench/bot@{number}")
            t0 = time.perf_counter()
            client.promote(f"bench/bot@{number}", "prod", now=True)
            client.wait_loaded(POOL, name, timeout=120)
            times.append(time.perf_counter() - t0)
        before = {p.pid: cpu_seconds(p.pid) for p in procs}
        time.sleep(idle)
        cpu = [(cpu_seconds(p.pid) - before[p.pid]) / idle * 100 for p in procs]
        rss = [rss_mib(p.pid) for p in procs]
        return {"replicas": n, "p50": statistics.median(times), "p99": percentile(times, 0.99),
                "max": max(times), "cpu_pct_mean": statistics.mean(cpu),
                "rss_mib_max": max(rss)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    dbs = PgDatabases()
    try:
        models = TinyModels(tmp / "models")
        base = models.base("llama")
        adapter = models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
        with uvicorn_server(tmp, dbs.fresh(), f"file://{tmp / 'blobs'}") as server:
            assert server.admin_token is not None
            with Client(server.url, server.admin_token) as client:
                client.register_base(base, "tiny/llama", "bench", no_cache=True)
                client.create_pool(POOL, base=BASE, model_id="/models/tiny", dtype="float32",
                                   drain_seconds=0)
                first = push(client, adapter, tmp, 0)
                client.promote(f"bench/bot@{first}", "prod", now=True)
                client.bind_pool(POOL, "bench/bot:prod")
                print("| replicas | p50 | p99 | max | agent CPU (idle, mean) | agent RSS (max) |")
                print("|---:|---:|---:|---:|---:|---:|")
                for n in args.replicas:
                    r = run(n, client, server.env, base, adapter, tmp, args.promotions,
                            args.idle)
                    print(f"| {n} | {r['p50']:.2f} s | {r['p99']:.2f} s | {r['max']:.2f} s "
                          f"| {r['cpu_pct_mean']:.1f} % | {r['rss_mib_max']:.0f} MiB |",
                          flush=True)
    finally:
        dbs.drop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
