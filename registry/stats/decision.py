"""Statistical gates: a :class:`GateSpec`, a :class:`GateState` and :func:`decide`.

``decide(spec, control, candidate, state)`` compares the candidate arm with the control arm
measured over the **same** windows (cumulative since the gate started) and returns a
:class:`Decision`: the verdict, whether to act, the statistics that decided it (ready to be
stored in history and audit as :meth:`Decision.record`) and the next state. It is a pure
function: the caller keeps the state between evaluations.

Verdicts:

* ``insufficient`` -- an arm has fewer than ``min_samples`` observations (requests for a rate,
  observations for a distribution). Never pass or fail; the look is not counted.
* ``fail`` -- the fail test rejects ``E <= 0`` at ``alpha``: the candidate is worse than the
  margin allows (``E`` is the excess defined in :mod:`registry.stats.inference`).
* ``pass`` -- the pass test rejects ``E >= 0`` at ``alpha``: it is shown to be within the margin.
* ``inconclusive`` -- neither yet (or the data cannot be tested, e.g. no variance).

``method="fixed"`` tests this look alone (valid for one look); ``method="sequential"`` uses the
mSPRT of :mod:`registry.stats.sequential`, whose always-valid p-values are carried in the state,
so a gate checked at every window keeps ``alpha``. A sequential fail is sticky (its p-value
never rises); fail is checked before pass, so harm wins over an earlier pass.

Consecutive failures (a pure state transition): a ``fail`` adds one to
``failures_in_a_row``, any other verdict (including ``insufficient``) resets it; the gate
asks to abort when the streak reaches ``failure_limit`` (1: at the first fail). With
``dry_run`` everything is evaluated and recorded, ``would_abort`` says what would have
happened, and ``abort`` is always false.

Intervals are two-sided at ``1 - 2 alpha`` (90% for ``alpha = 0.05``), so that "the interval of
``E`` lies above 0" is the fail test and "below 0" the pass test (the TOST convention). They
are pointwise: a sequential gate decides on its always-valid p-values, not on them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from registry.errors import BadRequest
from registry.stats import inference, sequential
from registry.stats.inference import Margin, Normal, OneSided
from registry.stats.measures import (
    Counts,
    Distribution,
    Histogram,
    Measurement,
    Samples,
    in_overflow,
    quantile,
)


class Kind(StrEnum):
    RATE = "rate"  # a binary outcome per trial: Counts
    DISTRIBUTION = "distribution"  # values: Histogram or Samples


class Direction(StrEnum):
    LOWER_IS_BETTER = "lower_is_better"
    HIGHER_IS_BETTER = "higher_is_better"


class Method(StrEnum):
    SEQUENTIAL = "sequential"
    FIXED = "fixed"


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105  (a verdict, not a password)
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class GateSpec:
    """One statistical gate.

    ``margin`` is the effect that matters: how much worse the candidate may be, in the metric's
    units (``relative=False``: ``0.005`` = half a point of error rate) or as a fraction of the
    control (``relative=True``: ``0.10`` = 10%). ``quantile`` names the statistic a
    distribution gate compares (``0.95`` for p95); ``None`` compares whole distributions with
    Mann-Whitney U (raw samples, fixed method only). ``mixing_scale`` is the mSPRT's ``tau`` in
    units of the excess (default: from the margin). ``resamples`` and ``seed`` drive the
    bootstrap of fixed quantile gates.
    """

    metric: str
    kind: Kind
    direction: Direction = Direction.LOWER_IS_BETTER
    margin: float = 0.0
    relative: bool = False
    alpha: float = 0.05
    min_samples: int = 100
    method: Method = Method.SEQUENTIAL
    quantile: float | None = None
    failure_limit: int = 1
    dry_run: bool = False
    mixing_scale: float | None = None
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name, enum in (("kind", Kind), ("direction", Direction), ("method", Method)):
            object.__setattr__(self, name, _member(enum, name, getattr(self, name)))
        _check_numbers(self)
        _check_shape(self)

    @property
    def confidence(self) -> float:
        return 1.0 - 2.0 * self.alpha

    @property
    def shape(self) -> Margin:
        return Margin(self.margin, self.relative,
                      self.direction == Direction.HIGHER_IS_BETTER,
                      log_scale=self.kind == Kind.DISTRIBUTION)


E = TypeVar("E", bound=StrEnum)


def _member(enum: type[E], name: str, value: object) -> E:
    try:
        return enum(str(value))
    except ValueError:
        choices = " | ".join(m.value for m in enum)
        raise BadRequest(f"gate {name} must be {choices} (got {value!r})") from None


def _check_numbers(s: GateSpec) -> None:
    if not isinstance(s.metric, str) or not 0 < len(s.metric) <= 128:
        raise BadRequest("a gate names its metric (1..128 characters)")
    for name in ("margin", "alpha", "quantile", "mixing_scale"):
        value = getattr(s, name)
        if value is None and name in ("quantile", "mixing_scale"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"gate {name} must be a number (got {value!r})")
    for name in ("relative", "dry_run"):
        if not isinstance(getattr(s, name), bool):
            raise BadRequest(f"gate {name} must be true or false")
    if not (math.isfinite(s.margin) and s.margin >= 0):
        raise BadRequest(f"gate margin must be a finite number >= 0 (got {s.margin})")
    if s.relative and s.direction == Direction.HIGHER_IS_BETTER and s.margin >= 1:
        raise BadRequest("a relative margin for higher-is-better metrics must be below 1")
    if not 0 < s.alpha < 0.5:
        raise BadRequest(f"gate alpha must be in (0, 0.5) (got {s.alpha})")
    _check_int("min_samples", s.min_samples, 1, 10**9)
    _check_int("failure_limit", s.failure_limit, 1, 100)
    _check_int("resamples", s.resamples, 100, 100_000)
    _check_int("seed", s.seed, 0, 2**63 - 1)
    if s.mixing_scale is not None and not (math.isfinite(s.mixing_scale)
                                           and s.mixing_scale > 0):
        raise BadRequest("gate mixing_scale must be a finite number > 0")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"gate {name} must be a whole number in {low}..{high} (got {value!r})")


def _check_shape(s: GateSpec) -> None:
    if s.kind == Kind.RATE and s.quantile is not None:
        raise BadRequest("a rate gate has no quantile")
    if s.quantile is not None and not 0 < s.quantile < 1:
        raise BadRequest(f"gate quantile must be in (0, 1) (got {s.quantile})")
    rank_test = s.kind == Kind.DISTRIBUTION and s.quantile is None
    if rank_test and s.method == Method.SEQUENTIAL:
        raise BadRequest("a sequential distribution gate compares a quantile: set quantile "
                         "(the Mann-Whitney test without one is fixed-sample only)")
    if s.method == Method.SEQUENTIAL and s.margin == 0 and s.mixing_scale is None:
        raise BadRequest("a sequential gate with a zero margin needs mixing_scale")


@dataclass(frozen=True)
class GateState:
    """What a gate carries from one evaluation to the next (stored with the experiment)."""

    looks: int = 0
    p_fail: float = 1.0
    p_pass: float = 1.0
    failures_in_a_row: int = 0
    tau: float | None = None


@dataclass(frozen=True)
class ArmSummary:
    """One arm: sample size, estimate (rate or quantile) and its interval."""

    n: int
    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation, with the statistics that decided it."""

    metric: str
    verdict: Verdict
    abort: bool
    would_abort: bool
    dry_run: bool
    method: Method
    test: str
    alpha: float
    control: ArmSummary
    candidate: ArmSummary
    difference: float  # candidate - control, in the metric's units
    difference_ci: tuple[float, float]
    relative_change: float  # candidate / control - 1
    excess: float  # E: > 0 worse than the margin allows
    excess_ci: tuple[float, float]
    p_fail: float
    p_pass: float
    detail: str
    state: GateState

    def record(self) -> dict[str, Any]:
        """Plain JSON-ready data (enums as strings, NaN and infinities as None)."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class _Evidence:
    test: str
    excess: Normal
    excess_ci: tuple[float, float]
    p: OneSided
    tau: float | None = None
    why: str = ""  # why a look could not be tested


NAN_PAIR = (math.nan, math.nan)
UNTESTED = Normal(math.nan, math.nan)


def decide(spec: GateSpec, control: Measurement, candidate: Measurement,
           state: GateState | None = None) -> Decision:
    """Evaluate ``spec`` on cumulative ``control`` and ``candidate`` measurements."""
    state = state or GateState()
    _check_data(spec, control, candidate)
    arms = _summary(spec, control), _summary(spec, candidate)
    estimates = _estimate(spec, control), _estimate(spec, candidate)
    difference = _difference(spec, arms, estimates)
    if min(control.n, candidate.n) < spec.min_samples:
        evidence = _Evidence("none", UNTESTED, NAN_PAIR, _carried(spec, state), state.tau)
        return _decision(spec, arms, difference, evidence, Verdict.INSUFFICIENT, state)
    evidence = _evidence(spec, (control, candidate), estimates, state)
    if evidence.p.p_fail <= spec.alpha:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.PASS if evidence.p.p_pass <= spec.alpha else Verdict.INCONCLUSIVE
    state = dataclasses.replace(state, looks=state.looks + 1)
    return _decision(spec, arms, difference, evidence, verdict, state)


def _carried(spec: GateSpec, state: GateState) -> OneSided:
    """The p-values a look without a test keeps: the always-valid ones, or no evidence."""
    if spec.method == Method.SEQUENTIAL:
        return OneSided(state.p_fail, state.p_pass)
    return OneSided(1.0, 1.0)


def _check_data(spec: GateSpec, control: Measurement, candidate: Measurement) -> None:
    if spec.kind == Kind.RATE:
        ok = isinstance(control, Counts) and isinstance(candidate, Counts)
        need = "counts"
    elif spec.quantile is None:
        ok = isinstance(control, Samples) and isinstance(candidate, Samples)
        need = "raw samples (the Mann-Whitney test ranks them)"
    else:
        ok = not isinstance(control, Counts) and not isinstance(candidate, Counts)
        need = "histograms or samples"
    if not ok:
        raise BadRequest(f"gate on {spec.metric}: both arms must be {need}")


def _estimate(spec: GateSpec, m: Measurement) -> Normal:
    """The arm's statistic as the tests see it: Agresti-Caffo rate, or quantile (Woodruff)."""
    if isinstance(m, Counts):
        return inference.adjusted_rate(m)
    if m.n == 0:
        return UNTESTED
    return inference.quantile_estimate(m, spec.quantile if spec.quantile is not None else 0.5)


def _summary(spec: GateSpec, m: Measurement) -> ArmSummary:
    if isinstance(m, Counts):
        return ArmSummary(m.n, m.rate, *inference.wilson_interval(m, spec.confidence))
    if m.n == 0:
        return ArmSummary(0, math.nan, math.nan, math.nan)
    q = spec.quantile if spec.quantile is not None else 0.5
    return ArmSummary(m.n, quantile(m, q),
                      *inference.quantile_interval(m, q, spec.confidence))


def _difference(spec: GateSpec, arms: tuple[ArmSummary, ArmSummary],
                estimates: tuple[Normal, Normal]) -> tuple[float, tuple[float, float]]:
    """``candidate - control`` (raw estimates) and its interval from the tests' estimates.

    For rates this is the Agresti-Caffo interval, centred on the adjusted difference.
    """
    (o, c), (control, candidate) = estimates, arms
    raw = candidate.estimate - control.estimate
    ci = _normal_interval(Normal(c.estimate - o.estimate, math.hypot(c.se, o.se)),
                          spec.confidence)
    return raw, ci


def _testable(e: Normal) -> bool:
    return math.isfinite(e.estimate) and math.isfinite(e.se) and e.se > 0


def _evidence(spec: GateSpec, arms: tuple[Measurement, Measurement],
              estimates: tuple[Normal, Normal], state: GateState) -> _Evidence:
    (control, candidate), (o, c) = arms, estimates
    e = inference.excess(c, o, spec.shape)
    if isinstance(control, Counts) or isinstance(candidate, Counts):
        rate = control if isinstance(control, Counts) else None
        return _normal_evidence(spec, e, state, rate)
    if spec.quantile is not None and any(
            isinstance(m, Histogram) and in_overflow(m, spec.quantile) for m in arms):
        # Prometheus answers the largest finite bound there: a floor, not an estimate.
        return _Evidence("untestable", e, NAN_PAIR, _carried(spec, state), state.tau,
                         "the quantile lies in the +inf bucket: add larger buckets")
    if spec.quantile is None:
        return _rank_evidence(spec, control, candidate)
    if spec.method == Method.FIXED:
        return _bootstrap_evidence(spec, spec.quantile, (control, candidate), e)
    return _normal_evidence(spec, e, state)


def _normal_evidence(spec: GateSpec, e: Normal, state: GateState,
                     control_rate: Counts | None = None) -> _Evidence:
    """The z-test (fixed) or the mSPRT update (sequential) on a normal excess."""
    ci = _normal_interval(e, spec.confidence)
    if not _testable(e):
        why = ("a relative margin needs positive values" if not math.isfinite(e.estimate)
               else "the statistic shows no variance")
        return _Evidence("untestable", e, ci, _carried(spec, state), state.tau, why)
    if spec.method == Method.FIXED:
        test = "agresti-caffo z" if control_rate else "woodruff z"
        return _Evidence(test, e, ci, inference.z_test(e))
    tau = _tau(spec, state, control_rate)
    previous = OneSided(state.p_fail, state.p_pass)
    return _Evidence("msprt", e, ci, sequential.update(previous, e, tau), tau)


def _normal_interval(e: Normal, confidence: float) -> tuple[float, float]:
    half = inference.z_value(confidence) * e.se
    return (e.estimate - half, e.estimate + half)


def _tau(spec: GateSpec, state: GateState, control_rate: Counts | None) -> float:
    """The mixing scale: set, carried in the state, or from the margin (frozen at first use)."""
    if state.tau is not None:
        return state.tau
    if spec.mixing_scale is not None:
        return spec.mixing_scale
    if not spec.relative:
        return spec.margin
    if control_rate is None:  # quantiles: E is on the log scale
        return abs(math.log1p(spec.shape.sign * spec.margin))
    return spec.margin * inference.adjusted_rate(control_rate).estimate


def _bootstrap_evidence(spec: GateSpec, q: float, arms: tuple[Distribution, Distribution],
                        point: Normal) -> _Evidence:
    replicates = inference.bootstrap_excess(*arms, q, spec.shape, spec.resamples, spec.seed)
    return _Evidence("bootstrap", point,
                     inference.percentile_interval(replicates, spec.confidence),
                     inference.bootstrap_test(replicates))


def _rank_evidence(spec: GateSpec, control: Distribution, candidate: Distribution
                   ) -> _Evidence:
    if not (isinstance(control, Samples) and isinstance(candidate, Samples)):
        raise BadRequest(f"gate on {spec.metric}: the Mann-Whitney test needs raw samples")
    p = inference.mann_whitney(control, candidate, spec.shape)
    return _Evidence("mann-whitney", UNTESTED, NAN_PAIR, p)


def _decision(spec: GateSpec, arms: tuple[ArmSummary, ArmSummary],
              difference: tuple[float, tuple[float, float]], evidence: _Evidence,
              verdict: Verdict, state: GateState) -> Decision:
    streak = state.failures_in_a_row + 1 if verdict == Verdict.FAIL else 0
    would_abort = streak >= spec.failure_limit
    state = dataclasses.replace(state, p_fail=evidence.p.p_fail, p_pass=evidence.p.p_pass,
                                failures_in_a_row=streak, tau=evidence.tau)
    control, candidate = arms
    decision = Decision(
        spec.metric, verdict, would_abort and not spec.dry_run, would_abort, spec.dry_run,
        spec.method, evidence.test, spec.alpha, control, candidate, difference[0],
        difference[1], _ratio(candidate.estimate, control.estimate) - 1.0,
        evidence.excess.estimate, evidence.excess_ci, evidence.p.p_fail, evidence.p.p_pass,
        "", state)
    return dataclasses.replace(decision, detail=_detail(spec, decision, evidence.why))


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(b) else math.nan


def _detail(spec: GateSpec, d: Decision, why: str) -> str:
    statistic = f" q{spec.quantile:g}" if spec.quantile is not None else ""
    arms = (f"{spec.metric}{statistic}: candidate {d.candidate.estimate:.6g} "
            f"(n={d.candidate.n}) vs control {d.control.estimate:.6g} (n={d.control.n})")
    if d.verdict == Verdict.INSUFFICIENT:
        return f"{arms}: {d.verdict.value}, fewer than {spec.min_samples} per arm"
    margin = f"{spec.margin:g}{' relative' if spec.relative else ''}"
    tail = (f"p_fail={d.p_fail:.4g}, p_pass={d.p_pass:.4g} at alpha {spec.alpha:g} "
            f"({d.test}, margin {margin})")
    dry = " [dry run: not acted on]" if d.dry_run and d.would_abort else ""
    return f"{arms}: {d.verdict.value}{f' ({why})' if why else ''}, {tail}{dry}"
