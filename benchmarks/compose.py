"""Benchmark: lorareg's composition against PEFT's add_weighted_adapter on the same inputs.

Builds once (cached under benchmarks/_data/compose/, gitignored) the random-weights bf16
TinyLlama-1.1B-shaped base of benchmarks/merge.py (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV
heads; ~2.2 GB) and four r=16 float32 adapters on every linear layer of the decoder
(``target_modules: "all-linear"``, 154 modules, random factors, PEFT's key names). PEFT must load
the base to compose; lorareg never reads it.

Methods: ``linear`` and ``cat`` on the four full adapters; ``ties_svd`` (``svd_rank`` 16,
density 0.5) on the same four adapters cut to their first ``--svd-layers`` layers (default 1:
7 modules), because its cost is ``torch.linalg.svd`` of every module's dense 5632x2048 delta,
the same call on both sides (equality with PEFT needs PEFT's exact call): over ten minutes per
side at 22 layers on this 2-core machine. PEFT's fixed cost (loading the whole base) is the same
whatever the layer count, so the ties_svd ratios at 1 layer are more favourable to lorareg than
they would be at 22.

Each run is a fresh subprocess (wall time, peak RSS and CPU times of that child, from
``os.wait4``; "work" is the time after its imports), ours and PEFT's per method, ``--repeat``
rounds, each first in every other round. Then every tensor of ours is compared with PEFT's
(``torch.equal``). Usage::

    .venv/bin/python benchmarks/compose.py [--methods linear,ties_svd,cat] [--repeat 1]
        [--svd-layers 1] [--data benchmarks/_data/compose]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from merge import (
    RANK,
    Run,
    base_tensors,
    best,
    build_base,
    clear,
    measure,
    median,
    warm,
    write_safetensors,
)

# The measuring parent imports no torch: a child's peak RSS (ru_maxrss) starts from the RSS of
# the process it was forked from (see benchmarks/merge.py).

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = 4
ALPHAS = (32, 16, 32, 64)
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DENSITY = 0.5
BASE_MARKER = "BUILT-compose-v1"  # written last: a half-built base is rebuilt


# --- data ----------------------------------------------------------------------------------


def adapter_modules(layers: int | None) -> list[tuple[str, tuple[int, ...]]]:
    """(module, base weight shape) of every targeted linear layer, in the first ``layers``."""
    found = []
    for name, shape in base_tensors():
        module = name.removesuffix(".weight")
        layer = module.split(".")[2] if module.startswith("model.layers.") else None
        if module.rpartition(".")[2] in TARGETS and (layers is None or int(layer or 0) < layers):
            found.append((module, shape))
    return found


def build_adapter(folder: Path, index: int, layers: int | None) -> None:
    import torch

    folder.mkdir(parents=True)
    torch.manual_seed(1000 + index)
    modules = adapter_modules(layers)
    names = []
    for module, (out_f, in_f) in modules:
        names.append((f"base_model.model.{module}.lora_A.weight", (RANK, in_f)))
        names.append((f"base_model.model.{module}.lora_B.weight", (out_f, RANK)))

    def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if ".lora_A." in name:
            bound = 1 / math.sqrt(shape[1])
            return torch.empty(shape).uniform_(-bound, bound)
        return torch.randn(shape) * 0.01

    write_safetensors(folder / "adapter_model.safetensors", names, "F32", value)
    # the config as PEFT writes it (with its peft_version, as a trained adapter's has)
    from peft import LoraConfig

    targets: str | list[str] = "all-linear" if layers is None else [m for m, _ in modules]
    config = LoraConfig(r=RANK, lora_alpha=ALPHAS[index], target_modules=targets,
                        task_type="CAUSAL_LM", lora_dropout=0.0, inference_mode=True)
    config.save_pretrained(str(folder))


def build_data(data: Path, what: str) -> None:
    """``base``, or the adapter set ``full`` / ``layers<N>`` (run in a child: imports torch)."""
    import torch

    if what == "base":
        shutil.rmtree(data / "base", ignore_errors=True)
        torch.manual_seed(0)
        print(f"building {data / 'base'} (~2.2 GB) ...", flush=True)
        build_base(data / "base")
        (data / "base" / BASE_MARKER).write_text("")
        return
    layers = None if what == "full" else int(what.removeprefix("layers"))
    for i in range(ADAPTERS):
        folder = data / adapter_name(i, layers)
        shutil.rmtree(folder, ignore_errors=True)
        build_adapter(folder, i, layers)


def adapter_name(index: int, layers: int | None) -> str:
    return f"adapter-v2-{index}" + ("" if layers is None else f"-layers{layers}")


def ensure_data(data: Path, svd_layers: int, me: list[str]) -> None:
    wanted = [("base", data / "base" / BASE_MARKER),
              ("full", data / adapter_name(ADAPTERS - 1, None) / "adapter_config.json"),
              (f"layers{svd_layers}",
               data / adapter_name(ADAPTERS - 1, svd_layers) / "adapter_config.json")]
    for what, marker in wanted:
        if not marker.is_file():
            subprocess.run([*me, "--child", "build", str(data), what], check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})


def adapters_for(data: Path, method: str, svd_layers: int) -> list[Path]:
    layers = svd_layers if method == "ties_svd" else None
    return [data / adapter_name(i, layers) for i in range(ADAPTERS)]


def options_for(method: str) -> dict[str, float | int]:
    """add_weighted_adapter's options (the same for ours): density and rank for ties_svd."""
    return {"density": DENSITY, "svd_rank": RANK} if method == "ties_svd" else {}


# --- children --------------------------------------------------------------------------------


def child_ours(method: str, out: Path, *adapters: Path) -> None:
    import torch

    from merge_worker.compose import compose_adapters
    from merge_worker.compose_plan import ComposeInput, ComposeOptions

    clear(out)
    start = time.perf_counter()
    inputs = [ComposeInput(f"bench/a{i}@1", json.loads((a / "adapter_config.json").read_text()),
                           a / "adapter_model.safetensors", "bench-base")
              for i, a in enumerate(adapters)]
    extra = options_for(method)
    options = ComposeOptions(method, WEIGHTS, density=extra.get("density"),
                             svd_rank=int(extra["svd_rank"]) if "svd_rank" in extra else None)
    result = compose_adapters(inputs, options, out, base_dtype=torch.bfloat16)
    print(f"WORK {time.perf_counter() - start:.3f}", flush=True)
    if result.energy:
        kept = sorted(result.energy.values())
        print(f"ENERGY min {kept[0]:.4f} median {kept[len(kept) // 2]:.4f}", flush=True)


def child_peft(method: str, base: Path, out: Path, *adapters: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    clear(out)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, adapter in enumerate(adapters[1:], start=1):
        model.load_adapter(str(adapter), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(names, list(WEIGHTS), "composed", combination_type=method,
                               **options_for(method))
    model.save_pretrained(out, selected_adapters=["composed"])
    print(f"WORK {time.perf_counter() - start:.3f}", flush=True)


def child_verify(ours: Path, peft: Path) -> None:
    import torch
    from safetensors.torch import load_file

    mine = load_file(ours / "adapter_model.safetensors")
    theirs = load_file(peft / "composed" / "adapter_model.safetensors")
    same = [k for k in theirs if k in mine and torch.equal(mine[k], theirs[k])]
    extra = sorted(set(mine) ^ set(theirs))
    print(f"bit-identical to PEFT: {len(same)}/{len(theirs)} tensors"
          + (f"; keys differ: {extra[:3]}" if extra else ""), flush=True)


# --- parent ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="linear,ties_svd,cat")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--svd-layers", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "_data" / "compose")
    parser.add_argument("--child", choices=["ours", "peft", "build", "verify"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    me = [sys.executable, str(Path(__file__).resolve())]
    if args.child:
        children: dict[str, Callable[..., None]] = {
            "ours": child_ours, "peft": child_peft, "build": build_data, "verify": child_verify}
        first_is_text = args.child in ("ours", "peft")  # the method name; build: data, what
        values = [a if (i == 0 and first_is_text) or (i == 1 and args.child == "build")
                  else Path(a) for i, a in enumerate(args.args)]
        children[args.child](*values)
        return
    ensure_data(args.data, args.svd_layers, me)
    runs = args.data / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    results: dict[tuple[str, str], list[Run]] = {}
    for method in args.methods.split(","):
        run_method(method, args, me, runs, results)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    report(results, args)
    shutil.rmtree(runs, ignore_errors=True)


def run_method(method: str, args: argparse.Namespace, me: list[str], runs: Path,
               results: dict[tuple[str, str], list[Run]]) -> None:
    base, adapters = args.data / "base", adapters_for(args.data, method, args.svd_layers)
    paths = [str(a) for a in adapters]
    commands = {
        "lorareg": [*me, "--child", "ours", method, str(runs / f"ours-{method}"), *paths],
        "peft": [*me, "--child", "peft", method, str(base), str(runs / f"peft-{method}"),
                 *paths],
    }
    for round_ in range(args.repeat):
        # each first in every other round, so that load changes on this shared machine hit
        # both alike
        for label in (("lorareg", "peft") if round_ % 2 == 0 else ("peft", "lorareg")):
            command = commands[label]
            for adapter in adapters:
                warm(adapter)
            if label == "peft":
                warm(base)
            out = runs / f"{'ours' if label == 'lorareg' else 'peft'}-{method}"
            run = measure(command, out, python_child=True)
            results.setdefault((method, label), []).append(run)
            print(f"  {method:9s} {label:8s} {run.wall:7.2f} s  (work {run.work:7.2f} s)  "
                  f"{run.rss:6.0f} MiB  cpu {run.user:6.2f} user {run.sys:5.2f} sys  "
                  f"load {run.load:.2f}", flush=True)
    subprocess.run([*me, "--child", "verify", str(runs / f"ours-{method}"),
                    str(runs / f"peft-{method}")], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def report(results: dict[tuple[str, str], list[Run]], args: argparse.Namespace) -> None:
    print(f"\n4 adapters, r={RANK}, all-linear (ties_svd: first {args.svd_layers} layers), "
          "bf16 TinyLlama-shaped base; best of each, RSS: largest")
    print(f"{'method':9s} {'ours wall':>9s} {'PEFT wall':>9s} {'ratio':>6s}  {'ours work':>9s} "
          f"{'PEFT work':>9s} {'ratio':>6s}  {'ours MiB':>8s} {'PEFT MiB':>8s} {'ratio':>6s}")
    for method in args.methods.split(","):
        ours, peft = results[(method, "lorareg")], results[(method, "peft")]
        rss_ours, rss_peft = max(r.rss for r in ours), max(r.rss for r in peft)
        print(f"{method:9s} {best(ours, 'wall'):9.2f} {best(peft, 'wall'):9.2f} "
              f"{best(ours, 'wall') / best(peft, 'wall'):6.3f}  {best(ours, 'work'):9.2f} "
              f"{best(peft, 'work'):9.2f} {best(ours, 'work') / best(peft, 'work'):6.3f}  "
              f"{rss_ours:8.0f} {rss_peft:8.0f} {rss_ours / rss_peft:6.3f}")
    print("goals: wall <= 0.5, peak RSS <= 0.25 of PEFT's"
          + (f"; medians over {args.repeat} runs: " + ", ".join(
              f"{m} {median(results[(m, 'lorareg')], 'wall'):.2f}/"
              f"{median(results[(m, 'peft')], 'wall'):.2f} s"
              for m in args.methods.split(",")) if args.repeat > 1 else ""))


if __name__ == "__main__":
    main()
