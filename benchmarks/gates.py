"""Benchmark: simulated rollouts, today's threshold gates against the statistical gates (issue 19).

Each simulated rollout has a control arm (the stable version) and a candidate arm that both get
``--requests`` requests per evaluation window, for ``--windows`` windows, from ``--routers``
routers sharing the traffic evenly. Every request errs with the arm's error rate and takes a
lognormal latency (median 200 ms, sigma 0.5: p95 = 455 ms). Scenarios, ``--runs`` rollouts each:

* ``A/A``        -- the candidate equals the control (error rate 1.0%, same latency);
* ``regression`` -- error rate 1.0% -> 2.0% and every latency x1.2 (p95 +20%);
* ``boundary``   -- error rate 1.0% -> 1.5% and latency x1.1: exactly on both margins, so any
                    fail there is a type I error of the gate (the least favourable null).

Gates are evaluated after every window (20 peeks) and a fail aborts the rollout.

* **today** -- exactly ``registry.services.gates`` as the rollout controller runs it
  (``parse_gate`` + ``evaluate``, ``max_failures`` 0, ``min_requests`` 1):
  ``live.error_rate <= stable + 0.005`` and ``live.latency_p95_ms <= stable * 1.1``. The live
  value is what ``services.live.aggregate`` computes over the step's window: errors / requests,
  and the request-weighted mean of the p95 each router reports for its own requests. A passed
  evaluation starts the next step, so each evaluation sees one window.
* **new, sequential** -- ``registry.stats.decide`` with the mSPRT on the cumulative data of both
  arms: ``error_rate`` (rate, margin 0.005 absolute) and ``latency_ms`` (distribution, p95 on
  Prometheus-style histograms with 74 buckets growing by 10% from 10 ms, margin 10% relative),
  alpha 0.05, minimum 1,000 requests per arm.
* **new, fixed, peeked** -- the same gates with ``method="fixed"`` (Agresti-Caffo z-test; p95
  bootstrap with ``--resamples``) evaluated at every window as if each look were the only one:
  what repeated checking does to a test that is not sequential.

Reported per scenario: the share of rollouts aborted (false aborts in A/A, detections in the
regression), per gate and for the rollout, and the median requests per arm seen at the abort;
for the new gates also the share that reached ``pass`` on both gates and when.

Usage::

    .venv/bin/python benchmarks/gates.py [--runs 1000] [--windows 20] [--requests 1000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from registry.services.gates import evaluate, parse_gate
from registry.stats import Counts, GateSpec, GateState, Histogram, Kind, Method, Verdict, decide

BOUNDS = (*[10.0 * 1.1**k for k in range(73)], math.inf)
TODAY = {"error_rate": "live.error_rate <= stable + 0.005",
         "latency": "live.latency_p95_ms <= stable * 1.1"}
MEDIAN_MS, SIGMA = 200.0, 0.5
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scenario:
    name: str
    error_rate: float  # the candidate's; the control's is 1.0%
    latency_scale: float  # the candidate's latencies are the control's times this


SCENARIOS = (Scenario("A/A", 0.010, 1.0), Scenario("regression", 0.020, 1.2),
             Scenario("boundary", 0.015, 1.1))


@dataclass
class Arm:
    """One arm's traffic over all runs and windows."""

    errors: IntArray  # (runs, windows)
    router_p95: FloatArray  # (runs, windows, routers)
    histogram: IntArray  # (runs, windows, buckets), per-bucket counts of that window


@dataclass(frozen=True)
class Outcome:
    """When (1-based window) a gate first failed and first passed in one run; 0 = never."""

    failed_at: int
    passed_at: int


def simulate(rng: np.random.Generator, args: argparse.Namespace, error_rate: float,
             scale: float) -> Arm:
    """Requests of one arm: errors per window, each router's p95, latency histograms."""
    per_router = args.requests // args.routers
    shape = (args.runs, args.windows, args.routers)
    errors = rng.binomial(per_router, error_rate, size=shape).sum(axis=2)
    p95 = np.empty(shape)
    histogram = np.empty((args.runs, args.windows, len(BOUNDS)), dtype=np.int64)
    for w in range(args.windows):
        latency = rng.lognormal(math.log(MEDIAN_MS), SIGMA, (args.runs, args.routers,
                                                            per_router)) * scale
        p95[:, w, :] = np.quantile(latency, 0.95, axis=2)
        histogram[:, w, :] = bucket_counts(latency.reshape(args.runs, -1))
    return Arm(errors, p95, histogram)


def bucket_counts(values: FloatArray) -> IntArray:
    """Per-bucket counts for each row; ``le`` buckets: the first bound >= the value."""
    index = np.searchsorted(np.asarray(BOUNDS), values, side="left")
    rows = len(values)
    flat = (index + np.arange(rows)[:, None] * len(BOUNDS)).ravel()
    return np.bincount(flat, minlength=rows * len(BOUNDS)).reshape(rows, len(BOUNDS))


def today_error_rate(control: Arm, candidate: Arm, requests: int, run: int) -> Outcome:
    gate = parse_gate(TODAY["error_rate"])
    return _today(lambda w: (candidate.errors[run, w] / requests,
                             control.errors[run, w] / requests), gate, control)


def today_latency(control: Arm, candidate: Arm, run: int) -> Outcome:
    """Equal requests per router, so the request-weighted mean is the plain mean."""
    gate = parse_gate(TODAY["latency"])
    return _today(lambda w: (float(candidate.router_p95[run, w].mean()),
                             float(control.router_p95[run, w].mean())), gate, control)


def _today(values: Callable[[int], tuple[float, float]], gate: object, arm: Arm) -> Outcome:
    windows = arm.errors.shape[1]
    for w in range(windows):
        value, baseline = values(w)
        if evaluate(gate, value, baseline).verdict == "fail":  # type: ignore[arg-type]
            return Outcome(w + 1, 0)
    return Outcome(0, windows)  # every step passed: promoted after the last window


def new_gate(spec: GateSpec, arms: Iterator[tuple[object, object]]) -> Outcome:
    """Feed cumulative measurements to ``decide`` window by window until it aborts."""
    state, passed_at = GateState(), 0
    for w, (control, candidate) in enumerate(arms, start=1):
        decision = decide(spec, control, candidate, state)  # type: ignore[arg-type]
        state = decision.state
        if decision.abort:
            return Outcome(w, passed_at)
        if decision.verdict == Verdict.PASS and not passed_at:
            passed_at = w
    return Outcome(0, passed_at)


def rate_windows(control: Arm, candidate: Arm, requests: int, run: int
                 ) -> Iterator[tuple[Counts, Counts]]:
    o, c = control.errors[run].cumsum(), candidate.errors[run].cumsum()
    for w in range(len(o)):
        yield Counts(int(o[w]), requests * (w + 1)), Counts(int(c[w]), requests * (w + 1))


def histogram_windows(control: Arm, candidate: Arm, run: int
                      ) -> Iterator[tuple[Histogram, Histogram]]:
    o, c = control.histogram[run].cumsum(axis=0), candidate.histogram[run].cumsum(axis=0)
    for w in range(len(o)):
        yield (Histogram(BOUNDS, tuple(o[w].tolist())), Histogram(BOUNDS, tuple(c[w].tolist())))


def specs(method: Method, resamples: int) -> dict[str, GateSpec]:
    return {
        "error_rate": GateSpec("error_rate", Kind.RATE, margin=0.005, alpha=0.05,
                               min_samples=1000, method=method),
        "latency": GateSpec("latency_ms", Kind.DISTRIBUTION, margin=0.10, relative=True,
                            quantile=0.95, alpha=0.05, min_samples=1000, method=method,
                            resamples=resamples),
    }


def run_scenario(scenario: Scenario, args: argparse.Namespace, rng: np.random.Generator
                 ) -> dict[str, list[dict[str, Outcome]]]:
    control = simulate(rng, args, 0.010, 1.0)
    candidate = simulate(rng, args, scenario.error_rate, scenario.latency_scale)
    results: dict[str, list[dict[str, Outcome]]] = {"today": [], "sequential": [], "fixed": []}
    for run in range(args.runs):
        results["today"].append({
            "error_rate": today_error_rate(control, candidate, args.requests, run),
            "latency": today_latency(control, candidate, run)})
        for method in (Method.SEQUENTIAL, Method.FIXED):
            gates = specs(method, args.resamples)
            results[method.value].append({
                "error_rate": new_gate(gates["error_rate"],
                                       rate_windows(control, candidate, args.requests, run)),
                "latency": new_gate(gates["latency"], histogram_windows(control, candidate,
                                                                        run))})
    return results


def summarise(runs: list[dict[str, Outcome]], requests: int) -> dict[str, str]:
    """Abort share and median requests per arm at the abort, per gate and for the rollout."""
    row: dict[str, str] = {}
    for gate in ("error_rate", "latency", "rollout"):
        at = [_abort_window(r, gate) for r in runs]
        hits = [w for w in at if w]
        median = f"{statistics.median(hits) * requests:,.0f}" if hits else "-"
        row[gate] = f"{len(hits) / len(runs):6.1%} ({median})"
    passed = [max(r["error_rate"].passed_at, r["latency"].passed_at) for r in runs
              if r["error_rate"].passed_at and r["latency"].passed_at
              and not _abort_window(r, "rollout")]
    median = f"{statistics.median(passed) * requests:,.0f}" if passed else "-"
    row["pass"] = f"{len(passed) / len(runs):6.1%} ({median})"
    return row


def _abort_window(run: dict[str, Outcome], gate: str) -> int:
    if gate != "rollout":
        return run[gate].failed_at
    failed = [o.failed_at for o in run.values() if o.failed_at]
    return min(failed) if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000, help="per arm per window")
    parser.add_argument("--routers", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=200,
                        help="bootstrap resamples of the fixed p95 test")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    seeds = np.random.SeedSequence(args.seed).spawn(len(SCENARIOS))
    header = (f"{'scenario':<11} {'gates':<20} {'error_rate fails':>20} "
              f"{'p95 fails':>20} {'rollout aborted':>20} {'both passed':>20}")
    print(f"{args.runs} rollouts per scenario, {args.windows} windows of {args.requests:,} "
          f"requests per arm ({args.routers} routers); share (median requests per arm then)")
    print(header)
    started = time.perf_counter()
    for scenario, seed in zip(SCENARIOS, seeds, strict=True):
        results = run_scenario(scenario, args, np.random.default_rng(seed))
        for name, label in (("today", "today's thresholds"), ("sequential", "new, sequential"),
                            ("fixed", "new, fixed, peeked")):
            row = summarise(results[name], args.requests)
            passed = row["pass"] if name != "today" else "-"
            print(f"{scenario.name:<11} {label:<20} {row['error_rate']:>20} "
                  f"{row['latency']:>20} {row['rollout']:>20} {passed:>20}")
        sys.stdout.flush()
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
