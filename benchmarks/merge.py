"""Benchmark: lorareg's streaming merge against PEFT's merge_and_unload and a plain ``cp -r``.

Builds once (cached under benchmarks/_data/merge/, gitignored) a random-weights bf16
Llama-architecture base with TinyLlama-1.1B's shapes (hidden 2048, MLP 5632, 22 layers, 32 heads,
4 KV heads, vocab 32000; ~2.2 GB in 2 GB shards + index, tensor names taken from a meta-device
``LlamaForCausalLM``, written tensor by tensor so memory stays bounded) and an r=16 adapter on
every linear layer of the decoder (float32, PEFT's key names and adapter_config.json).

Then, with the page cache warm, each run in a fresh subprocess (wall time, peak RSS and CPU
times of that child, from ``os.wait4``), (a) and (c) interleaved ``--repeat`` times (each first
in every other round, after ``--warmup`` uncounted rounds), then (b) ``--repeat`` times:

(a) ``merge_worker.merge.merge_adapter``;
(b) PEFT: ``AutoModelForCausalLM.from_pretrained(bf16)`` + ``PeftModel.from_pretrained`` +
    ``merge_and_unload`` + ``save_pretrained`` (2 GB shards, like the base);
(c) ``cp -r`` of the base folder.

Each run starts right after the base was read once more (this VM evicts page cache), ``sync``
ran and the previous output of its command was deleted (see ``clear``). Neither (a) nor (c)
fsyncs its output. Figures: the best and the median of the runs (RSS: the largest), and the
ratio of (a) to (c) round by round. "work" is the time the child spends after its imports (torch
alone takes 1-3 s to import; a worker process pays that once, not per merge). Finally every
tensor of (a)'s output is compared with (b)'s (``torch.equal``). Usage::

    .venv/bin/python benchmarks/merge.py [--repeat 3] [--warmup 1] [--skip-peft]
        [--data benchmarks/_data/merge]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The measuring parent imports no torch: a child's peak RSS (ru_maxrss) starts from the RSS of
# the process it was forked from, so a fat parent would inflate every figure.

ROOT = Path(__file__).resolve().parent.parent
TINYLLAMA = {
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARD_BYTES = 2 * 1000**3  # transformers' "2GB"
RANK, ALPHA = 16, 32
LAYOUT_VERSION = "merge-tinyllama-bf16-r16-v1"


# --- data ----------------------------------------------------------------------------------


def base_tensors() -> list[tuple[str, tuple[int, ...]]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**TINYLLAMA))
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def write_safetensors(path: Path, names: list[tuple[str, tuple[int, ...]]], dtype: str,
                      make: Callable[[str, tuple[int, ...]], torch.Tensor]) -> int:
    import torch

    """Header first, then each tensor's bytes in order: memory of one tensor."""
    size = {"BF16": 2, "F32": 4}[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in names:
        nbytes = math.prod(shape) * size
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in names:
            f.write(make(name, shape).contiguous().view(torch.uint8).numpy().tobytes())
    return offset


def base_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, dtype=torch.float32) * 0.02).to(torch.bfloat16)


def build_base(folder: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig

    folder.mkdir(parents=True)
    tensors = base_tensors()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        if shards[-1] and used + nbytes > SHARD_BYTES:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(folder / file, shard, "BF16", base_value)
        weight_map.update({name: file for name, _ in shard})
    params = sum(math.prod(s) for _, s in tensors)
    index = {"metadata": {"total_parameters": params, "total_size": total},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = LlamaConfig(**TINYLLAMA)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(folder)


def build_adapter(folder: Path, base: Path) -> None:
    import torch

    folder.mkdir(parents=True)
    names = []
    for name, shape in base_tensors():
        module = name.removesuffix(".weight")
        if module.rpartition(".")[2] in TARGETS:
            out_f, in_f = shape
            names.append((f"base_model.model.{module}.lora_A.weight", (RANK, in_f)))
            names.append((f"base_model.model.{module}.lora_B.weight", (out_f, RANK)))

    def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if ".lora_A." in name:
            bound = 1 / math.sqrt(shape[1])
            return torch.empty(shape).uniform_(-bound, bound)
        return torch.randn(shape) * 0.01

    write_safetensors(folder / "adapter_model.safetensors", names, "F32", value)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
        "target_modules": TARGETS, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "base_model_name_or_path": None, "revision": None, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def build_data(data: Path) -> None:
    import torch

    base, adapter = data / "base", data / "adapter"
    shutil.rmtree(data, ignore_errors=True)
    torch.manual_seed(0)
    print(f"building {base} (~2.2 GB) and {adapter} ...", flush=True)
    build_base(base)
    build_adapter(adapter, base)
    (data / "VERSION").write_text(LAYOUT_VERSION)


def ensure_data(data: Path, me: list[str]) -> tuple[Path, Path]:
    marker = data / "VERSION"
    if not marker.is_file() or marker.read_text() != LAYOUT_VERSION:
        subprocess.run([*me, "--child", "build", str(data)], check=True, cwd=ROOT)
    return data / "base", data / "adapter"


# --- runs ----------------------------------------------------------------------------------
# This VM hands memory freed for about 2 s back to its host (free page reporting), and the
# first touch of such memory costs several times a normal page-cache write (seen here: the same
# `cp -r` takes 0.6 s right after a delete and up to 3 s on such memory). So every run starts
# writing right after the previous output of the same command is deleted: the parent deletes it
# just before starting `cp`; a Python child deletes it itself after its imports, instead of 2-3 s
# of imports earlier, and that deletion (0.3-0.4 s) is taken out of its wall time, as it is
# outside cp's.


def clear(out: Path) -> None:
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    print(f"CLEAR {time.perf_counter() - start:.3f}", flush=True)  # taken out of the wall time


def child_ours(base: Path, adapter: Path, out: Path) -> None:
    from merge_worker.merge import merge_adapter

    clear(out)
    start = time.perf_counter()
    merge_adapter(base, adapter, out)
    print(f"WORK {time.perf_counter() - start:.3f}", flush=True)


def child_peft(base: Path, adapter: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    clear(out)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, max_shard_size="2GB")
    print(f"WORK {time.perf_counter() - start:.3f}", flush=True)


@dataclass(frozen=True)
class Run:
    wall: float  # s, fresh process
    work: float  # s, in the child after its imports
    rss: float  # MiB, peak
    user: float  # s of CPU
    sys: float
    load: float  # 1-minute load average when it started


def measure(command: list[str], out: Path, python_child: bool) -> Run:
    """Wall time, work time, peak RSS and CPU times of one fresh child process."""
    os.sync()  # other runs' dirty pages: flushed outside every timing
    if not python_child:
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start - sum(
        float(line.split()[1]) for line in output.splitlines() if line.startswith("CLEAR "))
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed with exit code {proc.returncode}")
    work = [float(line.split()[1]) for line in output.splitlines() if line.startswith("WORK ")]
    return Run(wall, work[0] if work else wall, usage.ru_maxrss / 1024, usage.ru_utime,
               usage.ru_stime, load)


def warm(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            while f.read(64 << 20):
                pass


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:

    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                yield key, f.get_tensor(key)


def same_tensors(ours: Path, peft: Path) -> tuple[int, list[str]]:
    import torch
    from safetensors import safe_open

    where = {}
    for file in peft.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            where.update(dict.fromkeys(f.keys(), file))
    differing, count = [], 0
    for key, tensor in iter_tensors(ours):
        with safe_open(where[key], "pt") as f:
            differing += [] if torch.equal(tensor, f.get_tensor(key)) else [key]
        count += 1
    return count, differing


def child_verify(ours: Path, peft: Path) -> None:
    count, differing = same_tensors(ours, peft)
    print(f"bit-identical to PEFT: {count - len(differing)}/{count} tensors"
          + (f" (differ: {differing[:5]})" if differing else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted rounds of cp and lorareg first (the first writes of a run "
                             "land in memory this VM has not touched for a while)")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "_data" / "merge")
    parser.add_argument("--skip-peft", action="store_true",
                        help="time only lorareg and cp (no PEFT ratios, no bit check)")
    parser.add_argument("--child", choices=["ours", "peft", "build", "verify"])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args()
    me = [sys.executable, str(Path(__file__).resolve())]
    if args.child:
        children: dict[str, Callable[..., None]] = {
            "ours": child_ours, "peft": child_peft, "build": build_data, "verify": child_verify}
        children[args.child](*args.paths)
        return
    base, adapter = ensure_data(args.data, me)
    warm(base)
    runs = args.data / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    commands = {
        "cp -r": lambda out: ["cp", "-r", str(base), str(out)],
        "lorareg": lambda out: [*me, "--child", "ours", str(base), str(adapter), str(out)],
        "peft": lambda out: [*me, "--child", "peft", str(base), str(adapter), str(out)],
    }
    if args.skip_peft:
        del commands["peft"]
    results: dict[str, list[Run]] = {label: [] for label in commands}
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    # cp and lorareg interleaved, so that load changes hit both alike, each first in every
    # other round (the run after another one's writes tends to be slower here); PEFT afterwards,
    # as the gigabytes it frees on exit leave memory that is slower to write for a while
    pairs = [["cp -r", "lorareg"], ["lorareg", "cp -r"]]
    rounds = [(pairs[i % 2], i >= args.warmup) for i in range(args.warmup + args.repeat)]
    rounds += [(["peft"], True)] * args.repeat if "peft" in commands else []
    for labels, counted in rounds:
        for label in labels:
            warm(base)  # this VM evicts page cache it thinks is cold (DAMON): re-read what it took
            out = runs / label.replace(" ", "")
            run = measure(commands[label](out), out, python_child=label != "cp -r")
            if counted:
                results[label].append(run)
            print(f"  {label:8s} {run.wall:7.2f} s  (work {run.work:6.2f} s)  "
                  f"{run.rss:6.0f} MiB  cpu {run.user:5.2f} user {run.sys:5.2f} sys  "
                  f"load {run.load:.2f}{'' if counted else '  (warm-up, not counted)'}",
                  flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    report(results, base)
    if not args.skip_peft:
        subprocess.run([*me, "--child", "verify", str(runs / "lorareg"), str(runs / "peft")],
                       check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    shutil.rmtree(runs, ignore_errors=True)


def report(results: dict[str, list[Run]], base: Path) -> None:
    size = sum(p.stat().st_size for p in base.iterdir()) / 1e9
    print(f"\nbase: {size:.2f} GB bf16, r={RANK} adapter on {len(TARGETS)} linear layers x 22")
    print("best (median) of each; RSS: largest; CPU: median. Neither lorareg nor cp fsyncs.")
    print(f"{'run':8s} {'wall s':>13s} {'work s':>13s} {'peak MiB':>9s} {'user s':>7s} "
          f"{'sys s':>6s}")
    for label, runs in results.items():
        print(f"{label:8s} {best(runs, 'wall'):5.2f} ({median(runs, 'wall'):5.2f}) "
              f"{best(runs, 'work'):5.2f} ({median(runs, 'work'):5.2f}) "
              f"{max(r.rss for r in runs):9.0f} {median(runs, 'user'):7.2f} "
              f"{median(runs, 'sys'):6.2f}")
    ours, cp = results["lorareg"], results["cp -r"]
    ratios = [("ours/cp wall", ours, cp, "wall", "goal <= 2"),
              ("ours/cp work", ours, cp, "work", "after imports: a long-lived worker")]
    if "peft" in results:
        peft = results["peft"]
        ratios += [("ours/PEFT wall", ours, peft, "wall", "goal <= 0.5"),
                   ("ours/PEFT work", ours, peft, "work", "after imports")]
        print(f"ours/PEFT peak RSS       {max(r.rss for r in ours) / max(r.rss for r in peft):.3f}"
              "  (goal <= 0.2)")
    for name, mine, peer, field, note in ratios:
        print(f"{name:24s} {best(mine, field) / best(peer, field):.3f}  "
              f"(medians: {median(mine, field) / median(peer, field):.3f})  ({note})")
    pair_ratios = [o.work / c.work for o, c in zip(ours, cp, strict=True)]
    print("ours/cp work, round by round: " + " ".join(f"{r:.2f}" for r in pair_ratios)
          + f"  (median {statistics.median(pair_ratios):.3f})")


def best(runs: list[Run], field: str) -> float:
    return min(float(getattr(r, field)) for r in runs)


def median(runs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in runs))


if __name__ == "__main__":
    main()
