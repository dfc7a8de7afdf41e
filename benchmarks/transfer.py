"""Benchmark: push and pull of a 1 GiB adapter through the API, and read latency under load.

Builds once (cached under benchmarks/_data/, gitignored) a valid PEFT LoRA adapter folder:
``adapter_config.json`` (r=64 on q/k/v/o_proj) and an ``adapter_model.safetensors`` of
lora_A/lora_B F32 pairs (64 x 4096 and 4096 x 64, 2 MiB per module, 128 layers for 1 GiB),
written tensor by tensor so memory stays bounded. Then, in one run:

Transfers (``registry.client.Client.push`` / ``.pull``; a real ``uvicorn`` subprocess, the
production entry point, on SQLite):

* S3: the API server's blob store is S3 on a moto server this script starts on a free port.
  Peers on the same moto server and the same bytes: raw boto3 ``upload_file`` (default: 8 MiB
  parts, 10 threads) and ``download_file``, both with its default (8 MiB ranged GETs on 10
  threads) and as one GET (``multipart_threshold`` above the size). The pull is measured
  twice: proxied by the API (the default), and with ``LORAREG_PRESIGN_DOWNLOADS=true`` (the
  API answers 307 to a presigned moto URL, the client follows it).
* Local: the API server's blob store is a local folder; peers: ``cp`` and ``cp`` + ``sync``.

Every transfer starts after ``os.sync()`` (no earlier dirty pages are written back during it)
and right after the previous transfer's output is deleted (see ``Bench.start``); the source
folder is in the page cache. Push and raw upload run once (a second push uploads
nothing; it is timed too); downloads run ``--repeat`` times and the best counts, except
boto3's default ranged download, which moto makes pathologically slow (it copies the whole
object for every ranged GET) and which runs once. A pull hashes (sha256) and fsyncs every file;
boto3 and ``cp`` do neither, so ``+ fsync`` rows show that part of the gap.

Latency: p50/p99 of ``GET /api/v1/adapters/{ns}/{name}/versions/1`` (bearer token, the local
store's server) with 32 concurrent connections, against a trivial FastAPI app (``{"ok": true}``
from a ``def`` and from an ``async def`` route) served by uvicorn the same way (one worker, no
access log). Load comes from ``wrk`` when it is installed (``apt-get install wrk``), otherwise
from an asyncio httpx client in this process (which then shares the 2 CPUs with the server).

Ratios are throughput ours / throughput peer (1.00 = as fast; above 1 = faster).
Usage::

    .venv/bin/python benchmarks/transfer.py [--size-mib 1024] [--repeat 2] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import numpy as np
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from fastapi import FastAPI
from procs import Server, free_port, moto_cmd, start_server
from safetensors import safe_open

from registry import migrate
from registry.client import Client, scan_folder
from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "_data" / "transfer"
HIDDEN, RANK = 4096, 64
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
ADAPTER = "bench/adapter-1g"
BASE = "meta-llama/Llama-2-7b-hf@" + "0" * 40  # not registered: the push is "unverified"
BUCKET = "bench"
WORKERS = "1"  # uvicorn workers, the same for the API and the trivial app
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- the adapter -----------------------------------------------------------------------------


def lora_config() -> dict[str, Any]:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK,
        "target_modules": list(MODULES), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "base_model_name_or_path": BASE.split("@")[0], "revision": None,
        "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
    }


def lora_tensors(layers: int) -> list[tuple[str, tuple[int, int]]]:
    out: list[tuple[str, tuple[int, int]]] = []
    for i in range(layers):
        for m in MODULES:
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            out += [(f"{key}.lora_A.weight", (RANK, HIDDEN)),
                    (f"{key}.lora_B.weight", (HIDDEN, RANK))]
    return out


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, int]]]) -> None:
    """A valid safetensors file, written one tensor at a time (memory: one tensor)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = shape[0] * shape[1] * 4
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    rng = np.random.default_rng(0)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for _, shape in tensors:
            out.write((rng.standard_normal(shape, dtype=np.float32) * 0.01).tobytes())


def ensure_adapter(size_mib: int) -> Path:
    """The adapter folder, built on first use; ``.complete`` (hidden: not pushed) marks it."""
    folder = DATA / f"adapter-{size_mib}mib"
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    layers = max(1, size_mib // (2 * len(MODULES)))  # 2 MiB per module
    tensors = lora_tensors(layers)
    print(f"building {folder} ({len(tensors)} tensors) ...", flush=True)
    (folder / CONFIG).write_text(json.dumps(lora_config(), indent=2))
    write_safetensors(folder / WEIGHTS, tensors)
    with safe_open(str(folder / WEIGHTS), framework="numpy") as check:
        assert len(list(check.keys())) == len(tensors)
    marker.write_text("")
    return folder


# --- processes -------------------------------------------------------------------------------


def start(stack: ExitStack, name: str, cmd: list[str], env: dict[str, str], log: Path,
          url: str, probe: str) -> Server:
    server = start_server(name, cmd, env, log, url, probe)
    stack.callback(server.stop)
    return server


def server_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAREG_")}
    return {**env, **CREDENTIALS, **values}


def uvicorn_cmd(app: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--factory", *extra, "--host", "127.0.0.1",
            "--port", str(port), "--workers", WORKERS, "--log-level", "warning",
            "--no-access-log"]


def start_api(stack: ExitStack, work: Path, name: str, db: Path, blob_url: str,
              **settings: str) -> tuple[Server, str]:
    """``uvicorn registry.api.app:factory`` on a migrated SQLite file; returns an admin token."""
    token = prepare_database(f"sqlite:///{db}")
    port = free_port()
    env = server_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=f"sqlite:///{db}",
                     LORAREG_BLOB_URL=blob_url, **settings)
    cmd = uvicorn_cmd("registry.api.app:factory", port)
    return start(stack, name, cmd, env, work / f"{name}.log", f"http://127.0.0.1:{port}",
                 "/healthz"), token


def prepare_database(url: str) -> str:
    """Migrate (idempotent) and create an admin token."""
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("bench"), name="bench",
                                               role="admin")
        return plaintext
    finally:
        engine.dispose()


def start_moto(stack: ExitStack, work: Path) -> Server:
    port = free_port()
    return start(stack, "moto", moto_cmd(port), server_env(), work / "moto.log",
                 f"http://127.0.0.1:{port}", "/")


def trivial_app() -> FastAPI:
    """The floor: FastAPI + uvicorn answering ``{"ok": true}`` (for the latency comparison)."""
    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict[str, bool]:  # a `def` route runs on the threadpool, as ours do
        return {"ok": True}

    @app.get("/ok-async")
    async def ok_async() -> dict[str, bool]:
        return {"ok": True}

    return app


def start_trivial(stack: ExitStack, work: Path) -> Server:
    port = free_port()
    cmd = uvicorn_cmd("transfer:trivial_app", port, "--app-dir", str(ROOT / "benchmarks"))
    return start(stack, "trivial", cmd, server_env(), work / "trivial.log",
                 f"http://127.0.0.1:{port}", "/ok")


def raw_s3(endpoint: str) -> S3Client:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


# --- transfers ---------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of its finished children (cp, sync)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Result:
    seconds: float  # best of the runs
    size: int  # bytes moved
    cpu: tuple[float, float, float]  # CPU seconds of that run: client, API server, moto

    @property
    def mib_s(self) -> float:
        return self.size / MIB / self.seconds


@dataclass
class Bench:
    """Timed transfers; CPU seconds are taken per process, since this machine is shared and
    CPU time, unlike wall time, does not grow with other jobs' load."""

    results: dict[str, Result] = field(default_factory=dict)
    apis: list[Server] = field(default_factory=list)
    moto: Server | None = None
    pending: list[Callable[[], object]] = field(default_factory=list)  # deletions, see start

    def cpu(self) -> tuple[float, float, float]:
        moto = proc_cpu(self.moto.proc.pid) if self.moto else 0.0
        return own_cpu(), sum(proc_cpu(api.proc.pid) for api in self.apis), moto

    def start(self) -> tuple[tuple[float, float, float], float]:
        """Flush, then delete the previous transfer's output, then start the clock.

        The deletion comes last, just before the transfer, so every tool starts from the same
        memory state: pages freed a moment ago. (This VM hands freed memory back to its host,
        and writing into memory the host must fault in again costs several times a normal
        page-cache write; benchmarks/README.md, Transfer, has the measurements.)
        """
        os.sync()  # no dirty pages from an earlier transfer are written back during this one
        while self.pending:
            self.pending.pop()()
        return self.cpu(), time.perf_counter()

    def time(self, label: str, size: int, work: Callable[[], object],
             cleanup: Callable[[], object] | None = None) -> None:
        cpu, start_ = self.start()
        work()
        self.record(label, size, start_, cpu)
        if cleanup is not None:
            self.pending.append(cleanup)

    def record(self, label: str, size: int, start_: float, cpu: tuple[float, ...]) -> None:
        seconds = time.perf_counter() - start_
        used = tuple(b - a for a, b in zip(cpu, self.cpu(), strict=True))
        client, api, moto = used
        print(f"  {label:<44} {seconds:7.2f} s {size / MIB / seconds:8.1f} MiB/s"
              f"   CPU s: client {client:5.2f}  API {api:5.2f}  moto {moto:5.2f}"
              f"   load {os.getloadavg()[0]:.1f}", flush=True)
        old = self.results.get(label)
        if old is None or seconds < old.seconds:
            self.results[label] = Result(seconds, size, (client, api, moto))

    def ratio(self, ours: str, peer: str) -> float | None:
        if ours not in self.results or peer not in self.results:
            return None
        return self.results[ours].mib_s / self.results[peer].mib_s


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if not f.name.startswith("."))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def api_push(bench: Bench, label: str, url: str, token: str, folder: Path) -> None:
    size = folder_bytes(folder)
    with Client(url, token, timeout=300) as client:
        pushed: dict[str, Any] = {}
        bench.time(f"{label} push", size,
                   lambda: pushed.update(client.push(folder, ADAPTER, BASE)))
        assert pushed["uploaded_bytes"] == size and pushed["version"] == 1, pushed
        start_ = time.perf_counter()  # identical content: hash, `missing`, create (a no-op)
        again = client.push(folder, ADAPTER, BASE)
        assert again.uploaded_bytes == 0 and again.version == 1, again
        print(f"  {label + ' push again (uploads nothing)':<44} "
              f"{time.perf_counter() - start_:7.2f} s")


def api_pull(bench: Bench, label: str, url: str, token: str, dest: Path, size: int) -> None:
    with Client(url, token, timeout=300) as client:
        pulled: dict[str, Any] = {}
        bench.time(label, size, lambda: pulled.update(client.pull(f"{ADAPTER}@1", dest)),
                   cleanup=lambda: shutil.rmtree(dest))
        assert pulled["downloaded_bytes"] == size, pulled


def raw_download(bench: Bench, label: str, raw: S3Client, key: str, out: Path, size: int,
                 config: TransferConfig | None, *, fsync: bool = True) -> None:
    """boto3 ``download_file``; with ``fsync``, a second row includes flushing the file."""
    cpu, start_ = bench.start()
    raw.download_file(BUCKET, key, str(out), Config=config)
    bench.record(label, size, start_, cpu)
    if fsync:
        fsync_file(out)
        bench.record(f"{label} + fsync", size, start_, cpu)
    bench.pending.append(out.unlink)


def s3_section(bench: Bench, stack: ExitStack, work: Path, folder: Path, args: Any) -> None:
    bench.moto = moto = start_moto(stack, work)
    raw = raw_s3(moto.url)
    raw.create_bucket(Bucket=BUCKET)
    print(f"S3 (moto at {moto.url}):", flush=True)
    s3 = {"LORAREG_S3_ENDPOINT_URL": moto.url, "LORAREG_S3_REGION": "us-east-1"}
    db, blob_url = work / "s3.db", f"s3://{BUCKET}/lorareg"
    api, token = start_api(stack, work, "api-s3", db, blob_url, **s3)
    presign, _ = start_api(stack, work, "api-s3-presign", db, blob_url,
                           LORAREG_PRESIGN_DOWNLOADS="true", **s3)
    bench.apis += [api, presign]
    weights, size = folder / WEIGHTS, folder_bytes(folder)
    api_push(bench, "API S3", api.url, token, folder)
    key = f"raw/{uuid.uuid4().hex}"
    bench.time("boto3 upload_file", weights.stat().st_size,
               lambda: raw.upload_file(str(weights), BUCKET, key))
    single = TransferConfig(multipart_threshold=weights.stat().st_size + 1)
    for _ in range(args.repeat):
        api_pull(bench, "API S3 pull (proxied)", api.url, token, work / "pull", size)
        api_pull(bench, "API S3 pull (presigned redirect)", presign.url, token, work / "pull",
                 size)
        raw_download(bench, "boto3 download_file, one GET", raw, key, work / "raw.bin",
                     weights.stat().st_size, single)
    if not args.skip_ranged:
        raw_download(bench, "boto3 download_file, default (ranged)", raw, key,
                     work / "raw.bin", weights.stat().st_size, None, fsync=False)
    print(f"  peak RSS: API S3 server {api.peak_rss_mib():.0f} MiB, "
          f"presigning server {presign.peak_rss_mib():.0f} MiB")


def cp_sync(source: Path, target: Path) -> None:
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sync", str(target)], check=True)


def local_section(bench: Bench, stack: ExitStack, work: Path, folder: Path, args: Any
                  ) -> tuple[Server, str]:
    print("local folder:", flush=True)
    api, token = start_api(stack, work, "api-local", work / "local.db",
                           f"file://{work / 'blobs'}")
    bench.apis.append(api)
    api_push(bench, "API local", api.url, token, folder)
    size = folder_bytes(folder)
    weights, copy = folder / WEIGHTS, work / "copy.bin"
    for _ in range(args.repeat):
        api_pull(bench, "API local pull", api.url, token, work / "pull", size)
        bench.time("cp", weights.stat().st_size,
                   lambda: subprocess.run(["cp", str(weights), str(copy)], check=True),
                   cleanup=copy.unlink)
        bench.time("cp + sync FILE", weights.stat().st_size, lambda: cp_sync(weights, copy),
                   cleanup=copy.unlink)
    print(f"  peak RSS: API local server {api.peak_rss_mib():.0f} MiB")
    return api, token


# --- latency -----------------------------------------------------------------------------------


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, headers: dict[str, str], connections: int, seconds: int) -> Latency:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Latency(percentile("50"), percentile("99"), rps, total)


def httpx_load(url: str, headers: dict[str, str], connections: int, seconds: int) -> Latency:
    """Fallback without wrk: ``connections`` closed-loop clients, one connection each."""

    async def client(deadline: float, latencies: list[float]) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
            while time.perf_counter() < deadline:
                start_ = time.perf_counter()
                (await http.get(url)).raise_for_status()
                latencies.append((time.perf_counter() - start_) * 1e3)

    async def run() -> list[float]:
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(client(deadline, latencies) for _ in range(connections)))
        return latencies

    latencies = asyncio.run(run())
    cuts = statistics.quantiles(latencies, n=100)
    return Latency(cuts[49], cuts[98], len(latencies) / seconds, len(latencies))


def measure(url: str, headers: dict[str, str], args: Any) -> Latency:
    load = wrk if shutil.which("wrk") else httpx_load
    load(url, headers, args.connections, 2)  # warm-up: connections, caches, JIT-free paths
    return load(url, headers, args.connections, args.duration)


def latency_section(stack: ExitStack, work: Path, api: Server, token: str, args: Any
                    ) -> dict[str, Latency]:
    tool = "wrk" if shutil.which("wrk") else "httpx (asyncio, in-process)"
    print(f"latency: {args.connections} concurrent connections, {args.duration} s each, {tool}")
    trivial = start_trivial(stack, work)
    version_url = f"{api.url}/api/v1/adapters/{ADAPTER}/versions/1"
    targets = {
        "GET .../versions/1 (lorareg API)": (version_url, {"Authorization": f"Bearer {token}"}),
        "trivial FastAPI, def route": (f"{trivial.url}/ok", {}),
        "trivial FastAPI, async def route": (f"{trivial.url}/ok-async", {}),
    }
    out: dict[str, Latency] = {}
    for label, (url, headers) in targets.items():
        out[label] = result = measure(url, headers, args)
        print(f"  {label:<36} p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
              f"  {result.rps:8.0f} req/s  ({result.requests} requests)", flush=True)
    return out


# --- report ----------------------------------------------------------------------------------


PEERS = [
    ("API S3 push", "boto3 upload_file"),
    ("API S3 pull (proxied)", "boto3 download_file, one GET"),
    ("API S3 pull (proxied)", "boto3 download_file, one GET + fsync"),
    ("API S3 pull (proxied)", "boto3 download_file, default (ranged)"),
    ("API S3 pull (presigned redirect)", "boto3 download_file, one GET"),
    ("API S3 pull (presigned redirect)", "boto3 download_file, one GET + fsync"),
    ("API local push", "cp"),
    ("API local push", "cp + sync FILE"),
    ("API local pull", "cp"),
    ("API local pull", "cp + sync FILE"),
]
PULL_GOAL = 0.7


def report(bench: Bench, latency: dict[str, Latency]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load}")
    print("best of runs (CPU seconds of that run):")
    for label, r in bench.results.items():
        client, server, moto = r.cpu
        print(f"  {label:<44} {r.seconds:7.2f} s {r.mib_s:8.1f} MiB/s"
              f"   CPU s: client {client:5.2f}  API {server:5.2f}  moto {moto:5.2f}")
    print("\nratios (throughput ours / peer; 1.00 = as fast):")
    for ours, peer in PEERS:
        ratio = bench.ratio(ours, peer)
        if ratio is None:
            continue
        goal = ""
        if "pull" in ours and "S3" in ours and "fsync" not in peer:
            goal = f"  (goal >= {PULL_GOAL}: {'met' if ratio >= PULL_GOAL else 'NOT met'})"
        print(f"  {ours:<34} / {peer:<40} {ratio:6.2f}{goal}")
    if latency:
        api = latency["GET .../versions/1 (lorareg API)"]
        for label, floor in latency.items():
            if floor is not api:
                print(f"  versions/1 vs {label:<34} p50 x{api.p50_ms / floor.p50_ms:5.2f}"
                      f"  p99 x{api.p99_ms / floor.p99_ms:5.2f}")


@contextmanager
def workdir() -> Iterator[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA, prefix="run-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each download")
    parser.add_argument("--duration", type=int, default=10, help="seconds per latency run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-ranged", action="store_true",
                        help="skip boto3's default ranged download (about 90 s on moto)")
    parser.add_argument("--only", choices=["s3", "local", "latency"], default=None)
    args = parser.parse_args()
    folder = ensure_adapter(args.size_mib)
    print(f"adapter: {folder} ({folder_bytes(folder) / MIB:.1f} MiB); {args.repeat} download "
          f"runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    start_ = time.perf_counter()
    scan_folder(folder)  # reads the folder into the page cache, and times the client's hash
    print(f"client-side hash of the folder (scan_folder): {time.perf_counter() - start_:.2f} s")
    bench = Bench()
    latency: dict[str, Latency] = {}
    with workdir() as work, ExitStack() as stack:
        if args.only in (None, "s3"):
            s3_section(bench, stack, work, folder, args)
        if args.only in (None, "local", "latency"):
            api, token = local_section(bench, stack, work, folder, args)
            if args.only in (None, "latency"):
                latency = latency_section(stack, work, api, token, args)
    report(bench, latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
