"""Blob store throughput and memory: stream a big file into each store and back.

Peers, measured in the same run on the same file:

* local store  vs ``cp`` (and ``cp`` + ``sync FILE``, since our writes are fsynced);
* S3 store     vs raw boto3 ``upload_file`` / ``download_file`` (managed, 10 threads) against
  the same moto server, which this script starts on a free loopback port.

Ratios are peer time / our time, i.e. our throughput relative to the peer's (1.00 = as fast).
Each transfer runs ``--repeat`` times (interleaved) and the best time counts, since shared
machines are noisy. boto3's default ``download_file`` (parallel 8 MiB ranged GETs) is
pathological against moto, which copies the whole object for every ranged GET, so it runs once
and the ratio uses a single-GET ``download_file`` (``multipart_threshold`` above the size).
Peak RSS is this process's (the moto server is a separate process): sampled from
``/proc/self/status`` VmRSS during each transfer, plus ``ru_maxrss`` after our transfers.
The script fails if our transfers' peak RSS reaches ``--max-rss-mib`` (default 200).

Usage: .venv/bin/python benchmarks/blobs.py [--size-mib 1024] [--repeat 3] [--workdir DIR]
                                            [--only local|s3] [--s3-concurrency 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from registry.blobs import LocalBlobStore, S3BlobStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Result:
    name: str
    seconds: float  # best of the runs
    peak_rss: int  # highest of the runs
    peer: str | None = None  # name of the result this one is compared with


@dataclass
class Bench:
    size: int
    results: dict[str, Result] = field(default_factory=dict)

    @contextmanager
    def measure(self, name: str, peer: str | None = None) -> Iterator[None]:
        """Time the block and sample this process's RSS every 5 ms while it runs."""
        os.sync()  # no dirty pages from an earlier phase are written back during this one
        peak = [rss_bytes()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
            peak[0] = max(peak[0], rss_bytes())
            self._record(Result(name, seconds, peak[0], peer))
            print(
                f"  {name:<44} {seconds:7.2f} s  {self.size / MIB / seconds:8.1f} MiB/s"
                f"  peak RSS {peak[0] / MIB:6.1f} MiB",
                flush=True,
            )

    def _record(self, result: Result) -> None:
        old = self.results.get(result.name)
        if old is not None:
            result.seconds = min(result.seconds, old.seconds)
            result.peak_rss = max(result.peak_rss, old.peak_rss)
        self.results[result.name] = result

    def report(self) -> None:
        print("\nbest of runs:")
        for r in self.results.values():
            print(
                f"  {r.name:<44} {r.seconds:7.2f} s  {self.size / MIB / r.seconds:8.1f} MiB/s"
                f"  peak RSS {r.peak_rss / MIB:6.1f} MiB"
            )
        print("\nratios (peer time / our time; 1.00 = same throughput):")
        for result in self.results.values():
            if result.peer and result.peer in self.results:
                ratio = self.results[result.peer].seconds / result.seconds
                print(f"  {result.name:<44} {ratio:5.2f}x of {result.peer}")


def make_source(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            out.write(piece)
            written += len(piece)
            block = bytes(reversed(block[:64])) + block[64:]  # no two blocks alike


def bench_local(bench: Bench, src: Path, work: Path) -> None:
    store = LocalBlobStore(work / "store")
    with bench.measure("local put (hash+write+fsync+rename)", "cp"), src.open("rb") as f:
        digest = store.put(f, size=bench.size).digest
    out = work / "local-download.bin"
    with bench.measure("local download_to (read+verify+fsync+rename)", "cp"):
        store.download_to(digest, out)
    out.unlink()
    copy = work / "cp-copy.bin"
    with bench.measure("cp"):
        subprocess.run(["cp", str(src), str(copy)], check=True)
    copy.unlink()
    with bench.measure("cp + sync FILE"):
        subprocess.run(["cp", str(src), str(copy)], check=True)
        subprocess.run(["sync", str(copy)], check=True)
    copy.unlink()
    shutil.rmtree(work / "store")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_s3(bench: Bench, src: Path, work: Path, args: argparse.Namespace) -> None:
    # Our store builds its own client from boto3's standard credential chain, as in production.
    os.environ.update(FAKE_CREDENTIALS)
    with moto_server(work / "moto.log") as url:
        raw = boto3.session.Session().client(
            "s3", endpoint_url=url, config=Config(s3={"addressing_style": "path"})
        )
        raw.create_bucket(Bucket="bench")
        store = S3BlobStore(
            "bench", "lorareg", endpoint_url=url, upload_concurrency=args.s3_concurrency
        )
        for run in range(args.repeat):
            run_ours_s3(bench, store, src, work, args.digest)
            if run == 0:
                print(f"  ru_maxrss after our transfers: {ru_maxrss_mib():.1f} MiB", flush=True)
            run_boto3_s3(bench, raw, src, work, first=run == 0)


def run_ours_s3(bench: Bench, store: S3BlobStore, src: Path, work: Path, digest: str) -> None:
    with bench.measure("s3 put, digest declared", "boto3 upload_file"), src.open("rb") as f:
        store.put(f, digest=digest, size=bench.size)
    out = work / "s3-download.bin"
    with bench.measure("s3 download_to (verify)", "boto3 download_file, single GET"):
        store.download_to(digest, out)
    out.unlink()
    store.delete(digest)
    staged = bench.measure("s3 put, no digest (+server copy)", "boto3 upload_file")
    with staged, src.open("rb") as f:
        store.put(f, size=bench.size)
    store.delete(digest)


def run_boto3_s3(bench: Bench, raw: S3Client, src: Path, work: Path, *, first: bool) -> None:
    key = f"raw/{uuid.uuid4().hex}"
    with bench.measure("boto3 upload_file"):
        raw.upload_file(str(src), "bench", key)
    out = work / "boto3-download.bin"
    single = TransferConfig(multipart_threshold=bench.size + 1)
    with bench.measure("boto3 download_file, single GET"):
        raw.download_file("bench", key, str(out), Config=single)
    out.unlink()
    if first:
        with bench.measure("boto3 download_file, default (ranged x10)"):
            raw.download_file("bench", key, str(out))
        out.unlink()
    raw.delete_object(Bucket="bench", Key=key)


def ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=["local", "s3"], default=None)
    parser.add_argument("--s3-concurrency", type=int, default=4)
    parser.add_argument("--max-rss-mib", type=int, default=200)
    args = parser.parse_args()
    bench = Bench(args.size_mib * MIB)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="lorareg-bench-") as tmp:
        work = Path(tmp)
        src = work / "source.bin"
        make_source(src, bench.size)
        args.digest = sha256_file(src)
        print(f"{args.size_mib} MiB file in {work}; baseline RSS {rss_bytes() / MIB:.1f} MiB")
        if args.only in (None, "local"):
            for _ in range(args.repeat):
                bench_local(bench, src, work)
        if args.only in (None, "s3"):
            bench_s3(bench, src, work, args)
    bench.report()
    ours = [r for r in bench.results.values() if r.peer is not None]
    peak = max(r.peak_rss for r in ours) / MIB
    verdict = "OK" if peak < args.max_rss_mib else "FAIL"
    print(f"\npeak RSS during our transfers: {peak:.1f} MiB (limit {args.max_rss_mib}) {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
