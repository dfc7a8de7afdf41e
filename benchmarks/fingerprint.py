"""Benchmark: lorareg's base-weights fingerprint against sha256sum and a plain hashlib pass.

Builds once (cached under benchmarks/_data/, gitignored) a random-weights bf16 model laid out
like TinyLlama-1.1B (~2.2 GB, 5 shards + model.safetensors.index.json), written in 64 MiB
pieces so memory stays bounded. Then, in one run, with the page cache warm:

(a) ``fingerprint_files`` without a cache, on every usable CPU;
(b) ``sha256sum`` over the same files (one process, as people run it);
(c) a plain threaded hashlib pass over the raw files (2 threads, 16 MiB reads);
(d) a re-check through a populated ``FingerprintCache``.

The contenders run round-robin ``--repeat`` times and each keeps its best wall-clock run (with
that run's CPU seconds, which other processes' load does not inflate). When the page cache can
be dropped (root, not in a restricted container), one cold run of (a) and (b) comes first.
Usage::

    .venv/bin/python benchmarks/fingerprint.py [--repeat 5] [--data benchmarks/_data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.fingerprint import FingerprintCache, fingerprint_files

# TinyLlama-1.1B: hidden 2048, MLP 5632, 22 layers, 4 KV heads of 64, vocab 32000.
HIDDEN, MLP, LAYERS, KV, VOCAB = 2048, 5632, 22, 256, 32000
SHARDS = 5
PIECE = 64 * 1024 * 1024
LAYOUT_VERSION = "tinyllama-bf16-v1"


def model_tensors() -> list[tuple[str, list[int]]]:
    tensors = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
            (p + "self_attn.k_proj.weight", [KV, HIDDEN]),
            (p + "self_attn.v_proj.weight", [KV, HIDDEN]),
            (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
            (p + "mlp.gate_proj.weight", [MLP, HIDDEN]),
            (p + "mlp.up_proj.weight", [MLP, HIDDEN]),
            (p + "mlp.down_proj.weight", [HIDDEN, MLP]),
            (p + "input_layernorm.weight", [HIDDEN]),
            (p + "post_attention_layernorm.weight", [HIDDEN]),
        ]
    return [*tensors, ("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]


def nbytes(shape: list[int]) -> int:
    return 2 * int(np.prod(shape))


def split_shards(tensors: list[tuple[str, list[int]]]) -> list[list[tuple[str, list[int]]]]:
    budget = sum(nbytes(s) for _, s in tensors) / SHARDS
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, shape in tensors:
        if size >= budget and len(shards) < SHARDS:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes(shape)
    return shards


def write_shard(path: Path, tensors: list[tuple[str, list[int]]], rng: np.random.Generator) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        end = offset + nbytes(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data region to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        remaining = offset
        while remaining:  # random bytes in bounded pieces: never the whole shard in memory
            piece = min(PIECE, remaining)
            f.write(rng.bytes(piece))
            remaining -= piece


def build_model(folder: Path) -> list[Path]:
    marker = folder / ".complete"
    shards = split_shards(model_tensors())
    count = len(shards)
    paths = [folder / f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    if marker.exists() and marker.read_text() == LAYOUT_VERSION:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    weight_map = {}
    for path, tensors in zip(paths, shards, strict=True):
        print(f"writing {path} ...", flush=True)
        write_shard(path, tensors, rng)
        weight_map.update({name: path.name for name, _ in tensors})
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    marker.write_text(LAYOUT_VERSION)
    return paths


def hash_file(path: Path) -> str:
    digest, buf = hashlib.sha256(), bytearray(16 * 1024 * 1024)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def threaded_hashlib(paths: list[Path]) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(hash_file, paths))


def sha256sum(paths: list[Path]) -> None:
    subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


@dataclass
class Timing:
    """Best wall-clock time and the CPU time of that same run (all threads and children)."""

    wall: float = float("inf")
    cpu: float = 0.0

    def add(self, wall: float, cpu: float) -> None:
        if wall < self.wall:
            self.wall, self.cpu = wall, cpu


def cpu_seconds() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def race(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, Timing]:
    # Round-robin rather than one contender at a time: on a shared machine, load from other
    # processes then falls on every contender alike, and best-of-N filters the worst of it.
    timings = {label: Timing() for label in contenders}
    for _ in range(repeat):
        for label, run in contenders.items():
            timings[label].add(*measure(run))
    return timings


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "_data")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = build_model(args.data / "tinyllama-bf16")
    total = sum(p.stat().st_size for p in paths)
    cpus = len(os.sched_getaffinity(0))
    print(f"model: {len(paths)} shards, {total / 1e9:.2f} GB; usable CPUs: {cpus}")
    if drop_page_cache():
        cold_ours = measure(lambda: fingerprint_files(paths))[0]
        drop_page_cache()
        cold_sum = measure(lambda: sha256sum(paths))[0]
        print(f"cold page cache: lorareg {cold_ours:.3f} s, sha256sum {cold_sum:.3f} s")
    else:
        print("page cache: cannot be dropped here (no permission); all figures are warm")
    threaded_hashlib(paths)  # warm the page cache so every contender reads from memory

    print(f"load average before: {os.getloadavg()}")
    timings = race(
        {
            "(a) lorareg fingerprint_files, no cache": lambda: fingerprint_files(paths),
            "(b) sha256sum": lambda: sha256sum(paths),
            "(c) threaded hashlib, 2 threads": lambda: threaded_hashlib(paths),
        },
        args.repeat,
    )
    recheck = cached_recheck(paths)
    print(f"load average after: {os.getloadavg()}")
    report(timings, total, recheck)


def cached_recheck(paths: list[Path]) -> float:
    """Median milliseconds of 10 re-checks through a populated cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = FingerprintCache(Path(tmp) / "fp.sqlite")
        fingerprint_files(paths, cache=cache)
        runs = [measure(lambda: fingerprint_files(paths, cache=cache))[0] for _ in range(10)]
    return statistics.median(runs) * 1e3


def report(timings: dict[str, Timing], total: int, recheck_ms: float) -> None:
    for label, t in timings.items():
        rate = total / t.wall / 1e9
        print(f"{label:<42} {t.wall:7.3f} s wall {rate:5.2f} GB/s  {t.cpu:7.3f} s CPU")
    print(f"{'(d) cached re-check (median of 10)':<42} {recheck_ms:7.1f} ms")
    ours, coreutils, plain = timings.values()
    goals = [
        ("ours / sha256sum (wall)", ours.wall / coreutils.wall, 0.35),
        ("ours / threaded hashlib (wall)", ours.wall / plain.wall, 1.2),
        ("ours / threaded hashlib (CPU)", ours.cpu / plain.cpu, 1.2),
    ]
    for label, ratio, goal in goals:
        print(f"{label:<42} {ratio:7.3f}   goal <= {goal}: {'met' if ratio <= goal else 'MISSED'}")
    met = "met" if recheck_ms < 50 else "MISSED"
    print(f"{'cached re-check':<42} {recheck_ms:7.1f} ms goal < 50 ms: {met}")


if __name__ == "__main__":
    main()
