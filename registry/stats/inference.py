"""Fixed-sample inference for one candidate arm against its control in the same window.

Every gate is reduced to one number, the **excess** ``E``: how much worse than allowed the
candidate is. ``E > 0`` means worse than the margin allows, ``E < 0`` means within it. With
``s = +1`` when lower is better (error rate, latency) and ``s = -1`` when higher is better, and
``theta`` the arm's statistic (a rate or a quantile):

* absolute margin ``d``:             ``E = s (theta_c - theta_0) - d``
* relative margin ``r``, rates:      ``E = s (theta_c - (1 + s r) theta_0)``
* relative margin ``r``, quantiles:  ``E = s (ln theta_c - ln theta_0 - ln(1 + s r))``

("error_rate may rise by at most 0.5 points" is ``s = +1, d = 0.005``; "p95 latency may rise
by at most 10%" is ``s = +1, r = 0.10``.) Each gate runs two one-sided tests of the same
boundary, each at level ``alpha``:

* **fail** -- reject ``H0: E <= 0`` for ``H1: E > 0`` (harm beyond the margin is shown);
* **pass** -- reject ``H0: E >= 0`` for ``H1: E < 0`` (safety within the margin is shown,
  the non-inferiority test);
* neither -- inconclusive. Both at once cannot happen in a fixed test with ``alpha < 0.5``.

Equivalently the two-sided ``1 - 2 alpha`` interval of ``E`` lies above 0 (fail), below 0
(pass), or straddles it.

Methods:

* rates: the Agresti-Caffo adjusted Wald z-test (add one event and one non-event to each arm:
  ``p~ = (x + 1) / (n + 2)``, ``se^2 = p~ (1 - p~) / (n + 2)``; ``z = E~ / se(E)``, fail
  ``p = 1 - Phi(z)``, pass ``p = Phi(z)``), the same as statsmodels'
  ``test_proportions_2indep(method="agresti-caffo")``. The adjustment keeps the variance
  positive when an arm has no errors yet, which a plain Wald test would read as certainty.
  Per arm, the Wilson score interval.
* quantiles (``p95`` of a histogram or of samples): a seeded percentile bootstrap of ``E``
  (each arm resampled on its own: a multinomial draw of the bucket counts, or of the samples),
  ``p_fail = P*(E* <= 0)``, ``p_pass = P*(E* >= 0)``. Per arm, Woodruff's interval.
* whole distributions (samples only): the Mann-Whitney U test of the candidate moved onto the
  boundary (``x - s d``, or ``x / (1 + s r)``) against the control, one-sided each way, with
  scipy's ``mannwhitneyu`` (exact for small samples, else normal with tie and continuity
  corrections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from registry.stats.measures import (
    Counts,
    Distribution,
    FloatArray,
    Histogram,
    Samples,
    bucket_quantile,
    quantile,
    quantile_se,
)

BOOTSTRAP_CHUNK = 200  # resamples drawn at once for raw samples: bounds memory to 200 x n


@dataclass(frozen=True)
class Normal:
    """An asymptotically normal estimate and its standard error."""

    estimate: float
    se: float


@dataclass(frozen=True)
class Margin:
    """How much worse than control the candidate may be (see the module docstring)."""

    delta: float = 0.0
    relative: bool = False
    higher_is_better: bool = False
    log_scale: bool = False  # relative margins of quantiles compare logarithms

    @property
    def sign(self) -> float:
        return -1.0 if self.higher_is_better else 1.0

    @property
    def factor(self) -> float:
        """``k`` in ``E = s (theta_c - k theta_0) - a`` (linear scale)."""
        return 1.0 + self.sign * self.delta if self.relative else 1.0


@dataclass(frozen=True)
class OneSided:
    """The p-values of the two one-sided tests: fail (``E > 0``) and pass (``E < 0``)."""

    p_fail: float
    p_pass: float


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (1.645 for 0.90)."""
    return float(ndtri(0.5 + confidence / 2.0))


def wilson_interval(c: Counts, confidence: float) -> tuple[float, float]:
    """Wilson score interval of ``c.rate``.

    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Written out rather than
    through ``scipy.stats.binomtest(...).proportion_ci`` because that also computes an exact
    p-value (about 0.5 ms a call, which the gate simulation cannot afford); the tests check
    it against both scipy and statsmodels.
    """
    if c.trials == 0:
        return (0.0, 1.0)
    z, n, p = z_value(confidence), c.trials, c.events / c.trials
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (max(0.0, (centre - half) / denominator), min(1.0, (centre + half) / denominator))


def adjusted_rate(c: Counts) -> Normal:
    """Agresti-Caffo: one event and one non-event added, ``p~ = (x+1)/(n+2)``."""
    n = c.trials + 2
    p = (c.events + 1) / n
    return Normal(p, math.sqrt(p * (1 - p) / n))


def quantile_estimate(d: Distribution, q: float) -> Normal:
    """The ``q``-quantile with Woodruff's standard error."""
    return Normal(quantile(d, q), quantile_se(d, q))


def quantile_interval(d: Distribution, q: float, confidence: float) -> tuple[float, float]:
    """Woodruff's interval: ``Q(q -+ z sqrt(q(1-q)/n))``, clipped to ``[0, 1]``."""
    if d.n == 0:
        return (math.nan, math.nan)
    s = z_value(confidence) * math.sqrt(q * (1 - q) / d.n)
    return (quantile(d, max(q - s, 0.0)), quantile(d, min(q + s, 1.0)))


def excess_value(candidate: FloatArray | float, control: FloatArray | float, m: Margin
                 ) -> FloatArray:
    """``E`` from point estimates (scalars or arrays of bootstrap replicates)."""
    c, o = np.asarray(candidate, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if m.relative and m.log_scale:
        with np.errstate(divide="ignore", invalid="ignore"):  # non-positive -> NaN below
            diff = np.log(c) - np.log(o) - math.log1p(m.sign * m.delta)
        return np.asarray(np.where((c > 0) & (o > 0), m.sign * diff, np.nan))
    offset = 0.0 if m.relative else m.delta
    return np.asarray(m.sign * (c - m.factor * o) - offset)


def excess(candidate: Normal, control: Normal, m: Margin) -> Normal:
    """``E`` and its standard error (delta method on the log scale for quantile ratios)."""
    value = float(excess_value(candidate.estimate, control.estimate, m))
    if m.relative and m.log_scale:
        if not math.isfinite(value):
            return Normal(math.nan, math.nan)
        return Normal(value, math.hypot(candidate.se / candidate.estimate,
                                        control.se / control.estimate))
    return Normal(value, math.hypot(candidate.se, m.factor * control.se))


def z_test(e: Normal) -> OneSided:
    """One-sided normal tests of ``E``: fail ``1 - Phi(E/se)``, pass ``Phi(E/se)``."""
    z = e.estimate / e.se
    return OneSided(float(ndtr(-z)), float(ndtr(z)))


def rate_test(control: Counts, candidate: Counts, m: Margin) -> tuple[Normal, OneSided]:
    """The Agresti-Caffo z-test of a rate gate: ``E`` (adjusted) and both p-values."""
    e = excess(adjusted_rate(candidate), adjusted_rate(control), m)
    return e, z_test(e)


def mann_whitney(control: Samples, candidate: Samples, m: Margin) -> OneSided:
    """Mann-Whitney U of the candidate moved onto the boundary against the control."""
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats takes about a second

    x = candidate.array()
    moved = x / (1.0 + m.sign * m.delta) if m.relative else x - m.sign * m.delta
    greater = float(mannwhitneyu(moved, control.array(), alternative="greater").pvalue)
    less = float(mannwhitneyu(moved, control.array(), alternative="less").pvalue)
    return OneSided(less, greater) if m.higher_is_better else OneSided(greater, less)


def bootstrap_excess(control: Distribution, candidate: Distribution, q: float, m: Margin,
                     resamples: int, seed: int) -> FloatArray:
    """``resamples`` bootstrap replicates of ``E`` for a quantile gate (seeded)."""
    rng = np.random.default_rng(seed)
    c = _resampled_quantiles(candidate, q, resamples, rng)
    o = _resampled_quantiles(control, q, resamples, rng)
    return excess_value(c, o, m)


def bootstrap_test(replicates: FloatArray) -> OneSided:
    """Percentile-bootstrap p-values: ``P*(E* <= 0)`` (fail) and ``P*(E* >= 0)`` (pass)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return OneSided(1.0, 1.0)
    return OneSided(float(np.mean(finite <= 0)), float(np.mean(finite >= 0)))


def percentile_interval(replicates: FloatArray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [tail, 1.0 - tail])
    return (float(lo), float(hi))


def _resampled_quantiles(d: Distribution, q: float, resamples: int,
                         rng: np.random.Generator) -> FloatArray:
    if isinstance(d, Histogram):
        counts = np.asarray(d.counts, dtype=np.float64)
        drawn = rng.multinomial(d.n, counts / d.n, size=resamples)
        cumulative = np.cumsum(drawn, axis=1, dtype=np.float64)
        return bucket_quantile(np.asarray(d.bounds, dtype=np.float64), cumulative, q)
    return _resampled_sample_quantiles(d, q, resamples, rng)


def _resampled_sample_quantiles(d: Samples, q: float, resamples: int,
                                rng: np.random.Generator) -> FloatArray:
    values = d.array()  # at most MAX_SAMPLES (Samples enforces it): a chunk stays small
    out = [np.quantile(values[rng.integers(0, d.n, size=(min(BOOTSTRAP_CHUNK, left), d.n))],
                       q, axis=1)
           for left in range(resamples, 0, -BOOTSTRAP_CHUNK)]
    return np.concatenate(out).astype(np.float64)
