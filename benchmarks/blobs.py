"""Blob store throughput and memory: stream a big file into each store and back.

Peers, measured in the same run on the same file:

* local store  vs ``cp`` (and ``cp`` + ``sync FILE``, since our writes are fsynced);
* S3 store     vs raw boto3 ``upload_file`` / ``download_file`` against the same moto server,
  which this script starts on a free loopback port.

Every transfer runs in a fresh Python process, so its peak RSS is its own (allocator memory
kept from an earlier transfer would otherwise count against the next). Peak RSS is sampled
from ``/proc/self/status`` VmRSS every 5 ms during the transfer, and VmHWM (the process's
peak, interpreter start and imports included) is read at the end; ``ru_maxrss`` is not used
because Linux carries it over exec from the parent process. The moto server is a separate
process and is not counted. The script fails if one of our transfers peaks at
``--max-rss-mib`` (default 200) or more.

Ratios are peer time / our time, i.e. our throughput relative to the peer's (1.00 = as fast).
Each transfer runs ``--repeat`` times, interleaved, and the best time counts (shared machines
are noisy). boto3's default ``download_file`` (parallel 8 MiB ranged GETs) is pathological
against moto, which copies the whole object for every ranged GET, so it runs once and the
ratio uses a single-GET ``download_file`` (``multipart_threshold`` above the file size).

Usage: .venv/bin/python benchmarks/blobs.py [--size-mib 1024] [--repeat 3] [--workdir DIR]
                                            [--only local|s3] [--s3-concurrency 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from procs import free_port, moto_cmd, start_server

from registry.blobs import LocalBlobStore, S3BlobStore, content_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
BUCKET = "bench"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- one transfer, in its own process -----------------------------------------------------------


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` size field in bytes: VmRSS now, or VmHWM (peak so far)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    return proc_status("VmRSS")


def measured(work: Callable[[], object]) -> dict[str, float]:
    """Run ``work`` while a thread samples VmRSS every 5 ms."""
    peak = [rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
    hwm = proc_status("VmHWM")
    return {"seconds": seconds, "peak_rss": max(peak[0], rss_bytes()), "hwm": hwm}


def s3_store(args: argparse.Namespace) -> S3BlobStore:
    # Built from boto3's standard credential chain (the environment here), as in production.
    return S3BlobStore(
        BUCKET, "lorareg", endpoint_url=args.endpoint, upload_concurrency=args.s3_concurrency
    )


def raw_client(endpoint: str) -> S3Client:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
    )


def put_from(store: LocalBlobStore | S3BlobStore, src: Path, digest: str | None) -> None:
    with src.open("rb") as f:
        store.put(f, digest=digest, size=src.stat().st_size)


def phase_work(args: argparse.Namespace) -> Callable[[], object]:
    src, out, digest = args.src, args.out, args.digest
    size = src.stat().st_size
    single = TransferConfig(multipart_threshold=size + 1)
    phases: dict[str, Callable[[], object]] = {
        "local-put": lambda: put_from(LocalBlobStore(args.store), src, None),
        "local-download": lambda: LocalBlobStore(args.store).download_to(digest, out),
        "s3-put": lambda: put_from(s3_store(args), src, digest),
        "s3-put-nodigest": lambda: put_from(s3_store(args), src, None),
        "s3-download": lambda: s3_store(args).download_to(digest, out),
        "boto3-upload": lambda: raw_client(args.endpoint).upload_file(str(src), BUCKET, args.key),
        "boto3-download-single": lambda: raw_client(args.endpoint).download_file(
            BUCKET, args.key, str(out), Config=single
        ),
        "boto3-download-default": lambda: raw_client(args.endpoint).download_file(
            BUCKET, args.key, str(out)
        ),
    }
    return phases[args.phase]


def run_phase(args: argparse.Namespace) -> int:
    print(json.dumps(measured(phase_work(args))))
    return 0


# --- the orchestrating process --------------------------------------------------------------------


@dataclass
class Result:
    seconds: float  # best of the runs
    peak_rss: float  # highest sampled VmRSS of the runs
    hwm: float  # highest VmHWM (the process's peak RSS, imports included) of the runs
    ours: bool


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, src: Path, digest: str) -> None:
        self.args, self.work, self.src, self.digest = args, work, src, digest
        self.size = src.stat().st_size
        self.results: dict[str, Result] = {}
        self.endpoint = ""

    def phase(self, label: str, phase: str, *, ours: bool, key: str = "") -> None:
        os.sync()  # no dirty pages from an earlier transfer are written back during this one
        cmd = [sys.executable, __file__, "--phase", phase, "--src", str(self.src)]
        cmd += ["--out", str(self.work / "out.bin"), "--store", str(self.work / "store")]
        cmd += ["--digest", self.digest, "--endpoint", self.endpoint, "--key", key]
        cmd += ["--s3-concurrency", str(self.args.s3_concurrency)]
        env = {**os.environ, **FAKE_CREDENTIALS}
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        numbers = json.loads(done.stdout.strip().splitlines()[-1])
        (self.work / "out.bin").unlink(missing_ok=True)
        self.record(label, numbers, ours=ours)

    def timed_command(self, label: str, *cmds: list[str]) -> None:
        os.sync()
        start = time.perf_counter()
        for cmd in cmds:
            subprocess.run(cmd, check=True)
        numbers = {"seconds": time.perf_counter() - start, "peak_rss": 0, "hwm": 0}
        (self.work / "copy.bin").unlink(missing_ok=True)
        self.record(label, numbers, ours=False)

    def record(self, label: str, numbers: dict[str, float], *, ours: bool) -> None:
        seconds, peak, hwm = numbers["seconds"], numbers["peak_rss"], numbers["hwm"]
        print(
            f"  {label:<40} {seconds:7.2f} s {self.size / MIB / seconds:8.1f} MiB/s"
            f"  peak RSS {peak / MIB:6.1f} MiB  VmHWM {hwm / MIB:6.1f} MiB",
            flush=True,
        )
        old = self.results.get(label)
        if old is not None:
            seconds = min(seconds, old.seconds)
            peak, hwm = max(peak, old.peak_rss), max(hwm, old.hwm)
        self.results[label] = Result(seconds, peak, hwm, ours)

    def local_round(self) -> None:
        copy = str(self.work / "copy.bin")
        self.phase("local put", "local-put", ours=True)
        self.phase("local download_to", "local-download", ours=True)
        shutil.rmtree(self.work / "store")
        self.timed_command("cp", ["cp", str(self.src), copy])
        self.timed_command("cp + sync FILE", ["cp", str(self.src), copy], ["sync", copy])

    def s3_round(self, raw: S3Client, first: bool) -> None:
        stored = f"lorareg/{content_key(self.digest)}"
        self.phase("s3 put, digest declared", "s3-put", ours=True)
        self.phase("s3 download_to", "s3-download", ours=True)
        raw.delete_object(Bucket=BUCKET, Key=stored)
        self.phase("s3 put, no digest (+server copy)", "s3-put-nodigest", ours=True)
        raw.delete_object(Bucket=BUCKET, Key=stored)
        key = f"raw/{uuid.uuid4().hex}"
        self.phase("boto3 upload_file", "boto3-upload", ours=False, key=key)
        self.phase("boto3 download_file, single GET", "boto3-download-single", ours=False, key=key)
        if first:
            label = "boto3 download_file, default (ranged)"
            self.phase(label, "boto3-download-default", ours=False, key=key)
        raw.delete_object(Bucket=BUCKET, Key=key)

    def report(self) -> bool:
        print("\nbest of runs:")
        for label, r in self.results.items():
            rss = f"  peak RSS {r.peak_rss / MIB:6.1f} MiB  VmHWM {r.hwm / MIB:6.1f} MiB"
            rss = rss if r.peak_rss else ""
            print(f"  {label:<40} {r.seconds:7.2f} s {self.size / MIB / r.seconds:8.1f} MiB/s{rss}")
        print("\nratios (peer time / our time; 1.00 = same throughput):")
        for ours, peer in PEERS:
            if ours in self.results and peer in self.results:
                ratio = self.results[peer].seconds / self.results[ours].seconds
                print(f"  {ours:<40} {ratio:5.2f}x of {peer}")
        peak = max(max(r.peak_rss, r.hwm) for r in self.results.values() if r.ours) / MIB
        ok: bool = peak < int(self.args.max_rss_mib)
        verdict = "OK" if ok else "FAIL"
        print(
            f"\npeak RSS of our transfers: {peak:.1f} MiB (limit {self.args.max_rss_mib}) {verdict}"
        )
        return ok


PEERS = [
    ("local put", "cp"),
    ("local put", "cp + sync FILE"),
    ("local download_to", "cp"),
    ("local download_to", "cp + sync FILE"),
    ("s3 put, digest declared", "boto3 upload_file"),
    ("s3 put, no digest (+server copy)", "boto3 upload_file"),
    ("s3 download_to", "boto3 download_file, single GET"),
    ("s3 download_to", "boto3 download_file, default (ranged)"),
]


def make_source(path: Path, size: int) -> str:
    block = os.urandom(16 * MIB)
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            out.write(piece)
            hasher.update(piece)
            written += len(piece)
            block = bytes(reversed(block[:64])) + block[64:]  # no two blocks alike
    return hasher.hexdigest()


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    port = free_port()
    server = start_server("moto", moto_cmd(port), None, log, f"http://127.0.0.1:{port}", "/")
    try:
        yield server.url
    finally:
        server.stop()


def orchestrate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="lorareg-bench-") as tmp:
        work = Path(tmp)
        src = work / "source.bin"
        bench = Bench(args, work, src, make_source(src, args.size_mib * MIB))
        print(
            f"{args.size_mib} MiB file in {work}; {args.repeat} runs; S3 parts in flight: "
            f"{args.s3_concurrency}"
        )
        if args.only in (None, "local"):
            for _ in range(args.repeat):
                bench.local_round()
        if args.only in (None, "s3"):
            os.environ.update(FAKE_CREDENTIALS)
            with moto_server(work / "moto.log") as bench.endpoint:
                raw = raw_client(bench.endpoint)
                raw.create_bucket(Bucket=BUCKET)
                for run in range(args.repeat):
                    bench.s3_round(raw, first=run == 0)
        return 0 if bench.report() else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=["local", "s3"], default=None)
    parser.add_argument("--s3-concurrency", type=int, default=3)
    parser.add_argument("--max-rss-mib", type=int, default=200)
    # Internal: run one transfer in this process and print its numbers as JSON.
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    for name in ("src", "out", "store"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    for name in ("digest", "endpoint", "key"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return run_phase(args) if args.phase else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
