"""What one arm measured over one window: counts, fixed-bucket histograms, capped raw samples.

Shapes (what a router reports and what a store keeps per arm per window):

* :class:`Counts` ``(events, trials)`` -- any binary outcome: errors of requests, successes of
  trials. ``0 <= events <= trials``.
* :class:`Histogram` ``(bounds, counts)`` -- fixed buckets. ``bounds`` are the buckets' upper
  bounds, inclusive like Prometheus' ``le`` label, strictly increasing, finite except the last,
  which must be ``+inf`` so that no observation is lost. ``counts`` are **per bucket, not
  cumulative**: bucket ``i`` holds the observations in ``(bounds[i-1], bounds[i]]``. Per-bucket
  counts add element-wise across routers and windows and cannot be non-monotone, so a report
  is checked by looking at each number alone. :meth:`Histogram.from_cumulative` takes
  Prometheus' cumulative ``_bucket{le=...}`` values.
* :class:`Samples` ``(values)`` -- raw finite observations, at most :data:`MAX_SAMPLES` per arm
  per window; a router that saw more sends a uniform subsample (reservoir sampling).

:func:`merge` adds windows up (the gates test the cumulative measurements since a gate
started). Merged samples over the cap are thinned to :data:`MAX_SAMPLES` evenly spaced order
statistics: that keeps the pooled quantiles and makes the tests count the cap as the sample
size, which is conservative.

Quantiles:

* of a histogram, as Prometheus' ``histogram_quantile`` computes them (``BucketQuantile`` in
  ``promql/quantile.go``): with cumulative counts ``C_i`` and ``N = C_last``, the rank is
  ``r = q * N``; ``b`` is the first bucket with ``C_b >= r``; the answer is
  ``lower_b + (upper_b - lower_b) * (r - C_{b-1}) / (C_b - C_{b-1})``, where the first bucket's
  lower bound is 0 (or its upper bound is the answer when that is <= 0), and a rank in the
  ``+inf`` bucket answers the largest finite bound. An empty histogram answers NaN.
* of samples, numpy's default (Hyndman and Fan type 7, linear between order statistics).

Standard error of a quantile (Woodruff 1952): the count of observations below the true
``q``-quantile is binomial, so the CDF there has standard error ``s = sqrt(q (1 - q) / N)``;
mapping ``q - s`` and ``q + s`` through the estimated quantile function gives
``se(Q(q)) = (Q(q + s) - Q(q - s)) / 2`` (one-sided secant when ``q +- s`` leaves ``[0, 1]``).
No density has to be estimated, and it works the same on histograms and samples.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from registry.errors import BadRequest

MAX_SAMPLES = 10_000
MAX_BUCKETS = 1_000

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Counts:
    """``events`` out of ``trials`` (errors of requests, successes of trials)."""

    events: int
    trials: int

    def __post_init__(self) -> None:
        if not (_is_count(self.events) and _is_count(self.trials)):
            raise BadRequest("counts must be whole numbers >= 0")
        object.__setattr__(self, "events", int(self.events))  # numpy integers become int
        object.__setattr__(self, "trials", int(self.trials))
        if self.events > self.trials:
            raise BadRequest(f"counts: {self.events} events out of {self.trials} trials")

    @property
    def n(self) -> int:
        return self.trials

    @property
    def rate(self) -> float:
        return self.events / self.trials if self.trials else math.nan


@dataclass(frozen=True)
class Histogram:
    """Per-bucket counts; ``bounds`` are inclusive upper bounds ending with ``+inf``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_bounds(self.bounds)
        if len(self.counts) != len(self.bounds):
            raise BadRequest(f"histogram: {len(self.bounds)} bounds but "
                             f"{len(self.counts)} counts")
        if not all(_is_count(c) for c in self.counts):
            raise BadRequest("histogram counts must be whole numbers >= 0")
        object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))

    @classmethod
    def from_cumulative(cls, bounds: Sequence[float], cumulative: Sequence[int]) -> Histogram:
        """From Prometheus-style cumulative bucket counts (``_bucket{le=...}``)."""
        if any(b < a for a, b in itertools.pairwise(cumulative)):
            raise BadRequest("cumulative histogram counts must not decrease")
        per_bucket = [c - p for p, c in zip([0, *cumulative], cumulative, strict=False)]
        return cls(tuple(bounds), tuple(per_bucket))

    @cached_property
    def cumulative(self) -> tuple[int, ...]:
        """Prometheus' cumulative counts (``_bucket{le=...}``)."""
        return tuple(itertools.accumulate(self.counts))

    @property
    def n(self) -> int:
        return self.cumulative[-1]


@dataclass(frozen=True)
class Samples:
    """Raw finite observations, at most :data:`MAX_SAMPLES`."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) > MAX_SAMPLES:
            raise BadRequest(f"at most {MAX_SAMPLES} samples per arm per window "
                             f"(got {len(self.values)}): send a uniform subsample")
        if not all(_is_number(v) and math.isfinite(v) for v in self.values):
            raise BadRequest("samples must be finite numbers")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    def array(self) -> FloatArray:
        return np.asarray(self.values, dtype=np.float64)


Distribution = Histogram | Samples
Measurement = Counts | Histogram | Samples


def _is_count(value: object) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= 0)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_bounds(bounds: tuple[float, ...]) -> None:
    if not 2 <= len(bounds) <= MAX_BUCKETS:
        raise BadRequest(f"a histogram needs 2..{MAX_BUCKETS} buckets (the last one +inf)")
    if not all(_is_number(b) for b in bounds):
        raise BadRequest("histogram bounds must be numbers")
    if bounds[-1] != math.inf or not all(math.isfinite(b) for b in bounds[:-1]):
        raise BadRequest("histogram bounds must be finite numbers ending with +inf")
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise BadRequest("histogram bounds must increase strictly")


def merge(parts: Sequence[Measurement]) -> Measurement:
    """Add up windows (or routers) of one arm; all parts must have the same shape."""
    counts = [p for p in parts if isinstance(p, Counts)]
    histograms = [p for p in parts if isinstance(p, Histogram)]
    samples = [p for p in parts if isinstance(p, Samples)]
    if not parts or max(len(counts), len(histograms), len(samples)) != len(parts):
        raise BadRequest("merge needs one or more parts of one shape (counts, histograms "
                         "or samples)")
    if counts:
        return _merge_counts(counts)
    return _merge_histograms(histograms) if histograms else _merge_samples(samples)


def _merge_counts(parts: Sequence[Counts]) -> Counts:
    return Counts(sum(p.events for p in parts), sum(p.trials for p in parts))


def _merge_histograms(parts: Sequence[Histogram]) -> Histogram:
    bounds = parts[0].bounds
    if any(p.bounds != bounds for p in parts):
        raise BadRequest("cannot merge histograms with different bucket bounds")
    counts = np.asarray(np.sum([p.counts for p in parts], axis=0), dtype=np.int64)
    return Histogram(bounds, tuple(int(c) for c in counts))


def _merge_samples(parts: Sequence[Samples]) -> Samples:
    values = np.concatenate([p.array() for p in parts])
    if len(values) > MAX_SAMPLES:
        # Evenly spaced order statistics keep the pooled quantiles without a random draw.
        keep = np.rint(np.linspace(0, len(values) - 1, MAX_SAMPLES)).astype(np.int64)
        values = np.sort(values)[keep]
    return Samples(tuple(float(v) for v in values))


def bucket_quantile(bounds: FloatArray, cumulative: npt.NDArray[np.float64], q: float
                    ) -> FloatArray:
    """Prometheus' ``BucketQuantile`` over the last axis of ``cumulative`` (rows vectorised).

    ``bounds`` ends with ``+inf``; every row of ``cumulative`` is non-decreasing with a total
    above zero (the caller checks). See the module docstring for the formula; this is
    :func:`histogram_quantile` for many rows at once (the bootstrap), tested to agree with it.
    """
    total = cumulative[..., -1]
    rank = q * total
    b = np.sum(cumulative[..., :-1] < rank[..., None], axis=-1)  # first C_b >= rank
    last = len(bounds) - 1
    upper = bounds[np.minimum(b, last - 1)]
    lower = np.where(b > 0, bounds[np.maximum(b - 1, 0)], 0.0)
    below = np.where(b > 0, np.take_along_axis(
        cumulative, np.maximum(b - 1, 0)[..., None], axis=-1)[..., 0], 0.0)
    inside = np.take_along_axis(cumulative, np.minimum(b, last)[..., None], axis=-1)[..., 0]
    count = inside - below
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(count > 0, (rank - below) / np.where(count > 0, count, 1.0), 0.0)
    value = lower + (upper - lower) * share
    value = np.where((b == 0) & (bounds[0] <= 0), bounds[0], value)
    return np.asarray(np.where(b == last, bounds[last - 1], value), dtype=np.float64)


def histogram_quantile(h: Histogram, q: float) -> float:
    """The ``q``-quantile of a histogram, as Prometheus' ``histogram_quantile``."""
    _check_q(q)
    cumulative, bounds, last = h.cumulative, h.bounds, len(h.bounds) - 1
    if cumulative[-1] == 0:
        return math.nan
    rank = q * cumulative[-1]
    b = bisect.bisect_left(cumulative, rank, 0, last)  # first C_b >= rank, else last
    if b == last:
        return bounds[last - 1]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    lower, below = (bounds[b - 1], cumulative[b - 1]) if b > 0 else (0.0, 0)
    count = cumulative[b] - below
    return lower + (bounds[b] - lower) * (rank - below) / count if count else lower


def sample_quantile(s: Samples, q: float) -> float:
    """The ``q``-quantile of samples (numpy's linear interpolation, type 7)."""
    _check_q(q)
    return float(np.quantile(s.array(), q)) if s.n else math.nan


def quantile(d: Distribution, q: float) -> float:
    """The ``q``-quantile of a histogram or of samples."""
    return histogram_quantile(d, q) if isinstance(d, Histogram) else sample_quantile(d, q)


def quantile_se(d: Distribution, q: float) -> float:
    """Woodruff's standard error of the ``q``-quantile (see the module docstring)."""
    _check_q(q)
    if d.n == 0:
        return math.nan
    s = math.sqrt(q * (1.0 - q) / d.n)
    lo, hi = max(q - s, 0.0), min(q + s, 1.0)
    if hi <= lo:
        return 0.0
    return (quantile(d, hi) - quantile(d, lo)) * s / (hi - lo)


def in_overflow(h: Histogram, q: float) -> bool:
    """Whether the ``q``-quantile's rank lies in the ``+inf`` bucket (no upper bound known)."""
    return h.n > 0 and q * h.n > h.cumulative[-2]


def _check_q(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise BadRequest(f"a quantile is between 0 and 1 (got {q})")
