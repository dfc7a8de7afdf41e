"""registry.stats against scipy's, statsmodels' and Prometheus' own results on fixed data, and
the gate semantics: minimum sample, inconclusive, consecutive failures, dry run, always-valid
p-values that never rise and keep alpha under 20 peeks."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats import proportion as sm  # its test_* names would be collected

from registry.errors import BadRequest
from registry.stats import (
    MAX_SAMPLES,
    Counts,
    Direction,
    GateSpec,
    GateState,
    Histogram,
    Kind,
    Method,
    Samples,
    Verdict,
    decide,
    inference,
    measures,
    merge,
    sequential,
)
from registry.stats.inference import Margin, Normal, OneSided

INF = math.inf

# --- measures ---------------------------------------------------------------------------------

# Prometheus' own expectations for histogram_quantile on classic (le) buckets, from
# promql/promqltest/testdata/histograms.test: (cumulative le buckets, q, expected).
PROMETHEUS_CASES = [
    (([0.1, 0.2, 1, INF], [50, 70, 110, 120]), [(0, 0), (0.2, 0.048), (0.5, 0.15),
                                                 (0.8, 0.72), (1, 1)]),
    (([-0.2, -0.1, 0.3, INF], [10, 20, 20, 30]), [(0, -0.2), (0.2, -0.2), (0.5, -0.15),
                                                   (0.8, 0.3), (1, 0.3)]),
    (([0, 0.1, 0.2, 1, INF], [0, 50, 70, 110, 110]), [(0, 0), (0.25, 0.055), (0.5, 0.125),
                                                       (0.75, 0.45), (1, 1)]),
    (([-0.25, -0.2, -0.1, 0.3, INF], [0, 10, 20, 20, 20]), [(0, -0.25), (0.25, -0.225),
                                                             (0.5, -0.2), (0.75, -0.15),
                                                             (1, -0.1)]),
    (([0, 2, 4, 6, INF], [0, 1, 2, 3, 3]), [(1 / 6, 1), (0.5, 3), (5 / 6, 5)]),
    # sum(rate(request_duration_seconds_bucket[10m])) by (le), per 5m step.
    (([0.1, 0.2, INF], [10, 19, 25]), [(0.3, 0.075), (0.5, 0.1277777777777778)]),
]


@pytest.mark.parametrize(("buckets", "expected"), PROMETHEUS_CASES)
def test_histogram_quantile_matches_prometheus(buckets: tuple[list[float], list[int]],
                                               expected: list[tuple[float, float]]) -> None:
    h = Histogram.from_cumulative(*buckets)
    for q, value in expected:
        assert measures.histogram_quantile(h, q) == pytest.approx(value, abs=1e-12), q


def test_histogram_quantile_by_hand() -> None:
    # 100 requests: 10 <= 100 ms, 60 in (100, 200], 25 in (200, 400], 5 above 400 ms.
    h = Histogram((100, 200, 400, INF), (10, 60, 25, 5))
    # p95: rank 95 is the 25th of 25 in (200, 400] -> 400; p90: 20th of 25 -> 200 + 200 * 0.8.
    assert measures.histogram_quantile(h, 0.95) == pytest.approx(400)
    assert measures.histogram_quantile(h, 0.90) == pytest.approx(360)
    assert measures.histogram_quantile(h, 0.05) == pytest.approx(50)  # first bucket from 0
    assert measures.histogram_quantile(h, 0.99) == 400  # the +inf bucket answers 400
    assert math.isnan(measures.histogram_quantile(Histogram((1, INF), (0, 0)), 0.5))


def test_bucket_quantile_rows_match_one_by_one() -> None:
    rng = np.random.default_rng(7)
    bounds = np.array([1, 2, 5, 10, INF], dtype=np.float64)
    rows = rng.integers(0, 20, size=(50, 5)) + np.array([1, 0, 0, 0, 0])
    many = measures.bucket_quantile(bounds, np.cumsum(rows, axis=1).astype(float), 0.9)
    one = [measures.histogram_quantile(Histogram(tuple(bounds), tuple(int(c) for c in r)), 0.9)
           for r in rows]
    np.testing.assert_allclose(many, one)


def test_sample_quantile_is_numpys() -> None:
    values = np.random.default_rng(3).lognormal(5, 0.5, 999)
    s = Samples(tuple(values.tolist()))
    for q in (0.05, 0.5, 0.95):
        assert measures.sample_quantile(s, q) == np.quantile(values, q)


def test_woodruff_se_matches_the_asymptotic_formula() -> None:
    """For normal data ``se(Q(q)) ~ sqrt(q (1 - q) / n) / f(Q(q))``."""
    n, q = 10_000, 0.95
    values = np.random.default_rng(11).normal(0.0, 1.0, n)
    expected = math.sqrt(q * (1 - q) / n) / stats.norm.pdf(stats.norm.ppf(q))
    se = measures.quantile_se(Samples(tuple(values.tolist())), q)
    assert se == pytest.approx(expected, rel=0.15)
    bounds = (*np.linspace(-4, 4, 161).tolist(), INF)  # 0.05-wide buckets
    h = Histogram(bounds, tuple(int(c) for c in np.histogram(values, [-INF, *bounds])[0]))
    assert measures.quantile_se(h, q) == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Counts(5, 4), "5 events out of 4"),
    (lambda: Counts(-1, 4), "whole numbers"),
    (lambda: Counts(1, 2.5), "whole numbers"),  # type: ignore[arg-type]
    (lambda: Counts(True, 2), "whole numbers"),
    (lambda: Histogram((1, 2), (1, 1)), "ending with +inf"),
    (lambda: Histogram((2, 1, INF), (1, 1, 1)), "increase strictly"),
    (lambda: Histogram((1, math.nan, INF), (1, 1, 1)), "finite"),
    (lambda: Histogram((1, INF), (1,)), "2 bounds but 1 counts"),
    (lambda: Histogram((1, INF), (1, -1)), "whole numbers"),
    (lambda: Histogram((INF,), (1,)), "2.."),
    (lambda: Histogram.from_cumulative([1, 2, INF], [5, 4, 6]), "must not decrease"),
    (lambda: Samples((1.0, math.inf)), "finite"),
    (lambda: Samples((1.0, "2")), "finite numbers"),  # type: ignore[arg-type]
    (lambda: Histogram(("1", INF), (1, 1)), "bounds must be numbers"),  # type: ignore[arg-type]
    (lambda: Counts("1", 2), "whole numbers"),  # type: ignore[arg-type]
    (lambda: Samples((1.0,) * (MAX_SAMPLES + 1)), "uniform subsample"),
    (lambda: measures.histogram_quantile(Histogram((1, INF), (1, 1)), 1.5), "between 0 and 1"),
    (lambda: merge([Counts(1, 2), Samples((1.0,))]), "one shape"),
    (lambda: merge([]), "one shape"),
    (lambda: merge([Histogram((1, INF), (1, 1)), Histogram((2, INF), (1, 1))]),
     "different bucket bounds"),
])
def test_bad_measurements_are_refused(make: object, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        make()  # type: ignore[operator]


def test_numpy_numbers_are_accepted_as_plain_ones() -> None:
    c = Counts(np.int64(3), np.int32(10))  # type: ignore[arg-type]
    assert type(c.events) is int and c == Counts(3, 10)
    h = Histogram((np.float32(1.5), INF), (np.int64(2), np.uint8(3)))  # type: ignore[arg-type]
    assert h == Histogram((1.5, INF), (2, 3)) and h.n == 5
    assert Samples((np.float32(0.5), 2)).values == (0.5, 2.0)  # type: ignore[arg-type]


def test_merge_adds_windows() -> None:
    assert merge([Counts(1, 100), Counts(3, 200)]) == Counts(4, 300)
    h = merge([Histogram((1, INF), (1, 2)), Histogram((1, INF), (3, 4))])
    assert h == Histogram((1, INF), (4, 6))
    assert merge([Samples((1.0, 2.0)), Samples((3.0,))]) == Samples((1.0, 2.0, 3.0))


def test_merged_samples_over_the_cap_keep_their_quantiles() -> None:
    rng = np.random.default_rng(5)
    parts = [Samples(tuple(rng.lognormal(5, 0.5, MAX_SAMPLES).tolist())) for _ in range(3)]
    merged = merge(parts)
    assert isinstance(merged, Samples) and merged.n == MAX_SAMPLES
    pooled = np.concatenate([p.array() for p in parts])
    for q in (0.5, 0.95, 0.99):
        assert measures.sample_quantile(merged, q) == pytest.approx(np.quantile(pooled, q),
                                                                    rel=2e-3)


# --- fixed-sample inference -------------------------------------------------------------------

@pytest.mark.parametrize(("events", "trials"), [(0, 50), (1, 1000), (37, 2000), (50, 50)])
@pytest.mark.parametrize("confidence", [0.90, 0.95])
def test_wilson_matches_statsmodels_and_scipy(events: int, trials: int,
                                              confidence: float) -> None:
    ours = inference.wilson_interval(Counts(events, trials), confidence)
    theirs = sm.proportion_confint(events, trials, alpha=1 - confidence, method="wilson")
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    ci = stats.binomtest(events, trials).proportion_ci(confidence, method="wilson")
    np.testing.assert_allclose(ours, (ci.low, ci.high), atol=1e-12)


RATE_DATA = [((12, 1000), (25, 1000)), ((30, 4000), (41, 3900)), ((0, 500), (3, 500)),
             ((200, 20000), (180, 20000))]


@pytest.mark.parametrize(("control", "candidate"), RATE_DATA)
@pytest.mark.parametrize("margin", [0.0, 0.005])
def test_rate_test_matches_statsmodels_agresti_caffo(control: tuple[int, int],
                                                     candidate: tuple[int, int],
                                                     margin: float) -> None:
    """Lower is better: fail is H1 ``p_c - p_0 > d``, pass is H1 ``p_c - p_0 < d``."""
    _, ours = inference.rate_test(Counts(*control), Counts(*candidate), Margin(margin))
    for alternative, p in (("larger", ours.p_fail), ("smaller", ours.p_pass)):
        with np.errstate(divide="ignore"):  # statsmodels also computes p1 / p2 (0 errors)
            theirs = sm.test_proportions_2indep(*candidate, *control, value=margin,
                                                compare="diff", method="agresti-caffo",
                                                alternative=alternative)
        assert p == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15), alternative


@pytest.mark.parametrize(("control", "candidate"), RATE_DATA)
def test_rate_test_higher_is_better_matches_statsmodels(control: tuple[int, int],
                                                        candidate: tuple[int, int]) -> None:
    """Higher is better (a success rate): fail is H1 ``p_c - p_0 < -d``."""
    margin = Margin(0.004, higher_is_better=True)
    _, ours = inference.rate_test(Counts(*control), Counts(*candidate), margin)
    with np.errstate(divide="ignore"):  # statsmodels also computes p1 / p2 (0 errors)
        fail, passed = (sm.test_proportions_2indep(*candidate, *control, value=-0.004,
                                                   compare="diff", method="agresti-caffo",
                                                   alternative=alternative)
                        for alternative in ("smaller", "larger"))
    assert (ours.p_fail, ours.p_pass) == pytest.approx((fail.pvalue, passed.pvalue), rel=1e-9)


def test_relative_rate_margin_is_the_linear_contrast() -> None:
    """``E = p_c - 1.5 p_0`` with ``se^2 = v_c + 1.5^2 v_0`` (adjusted rates)."""
    c, o = Counts(30, 1000), Counts(20, 1000)
    e, _ = inference.rate_test(o, c, Margin(0.5, relative=True))
    pc, po = 31 / 1002, 21 / 1002
    assert e.estimate == pytest.approx(pc - 1.5 * po)
    assert e.se == pytest.approx(math.sqrt(pc * (1 - pc) / 1002 + 2.25 * po * (1 - po) / 1002))


def test_difference_interval_is_statsmodels_agresti_caffo() -> None:
    spec = GateSpec("error_rate", Kind.RATE, margin=0.005, method=Method.FIXED)
    d = decide(spec, Counts(30, 4000), Counts(41, 3900))
    low, high = sm.confint_proportions_2indep(41, 3900, 30, 4000, method="agresti-caffo",
                                           compare="diff", alpha=2 * spec.alpha)
    assert d.difference_ci == pytest.approx((low, high), rel=1e-9)
    assert d.difference == pytest.approx(41 / 3900 - 30 / 4000)


MWU_CONTROL = np.random.default_rng(21).lognormal(5.0, 0.5, 300)
MWU_CANDIDATE = np.random.default_rng(22).lognormal(5.1, 0.5, 280)


@pytest.mark.parametrize(("margin", "moved"), [
    (Margin(0.0), MWU_CANDIDATE),
    (Margin(0.10, relative=True), MWU_CANDIDATE / 1.10),
    (Margin(20.0), MWU_CANDIDATE - 20.0),
])
def test_mann_whitney_matches_scipy(margin: Margin, moved: np.ndarray) -> None:
    ours = inference.mann_whitney(Samples(tuple(MWU_CONTROL.tolist())),
                                  Samples(tuple(MWU_CANDIDATE.tolist())), margin)
    greater = stats.mannwhitneyu(moved, MWU_CONTROL, alternative="greater").pvalue
    less = stats.mannwhitneyu(moved, MWU_CONTROL, alternative="less").pvalue
    assert (ours.p_fail, ours.p_pass) == (pytest.approx(greater), pytest.approx(less))


def test_mann_whitney_higher_is_better_swaps_the_tails() -> None:
    c, o = Samples(tuple(MWU_CANDIDATE.tolist())), Samples(tuple(MWU_CONTROL.tolist()))
    ours = inference.mann_whitney(o, c, Margin(0.0, higher_is_better=True))
    less = stats.mannwhitneyu(MWU_CANDIDATE, MWU_CONTROL, alternative="less").pvalue
    assert ours.p_fail == pytest.approx(less)


def test_bootstrap_interval_agrees_with_scipy_bootstrap() -> None:
    """Our seeded percentile bootstrap of the p90 difference and scipy's estimate the same
    interval (both are Monte Carlo, so they agree to a fraction of its width)."""
    control, candidate = MWU_CONTROL, MWU_CANDIDATE
    replicates = inference.bootstrap_excess(
        Samples(tuple(control.tolist())), Samples(tuple(candidate.tolist())), 0.9, Margin(0.0),
        resamples=4000, seed=1)
    ours = inference.percentile_interval(replicates, 0.90)

    def p90_difference(c: np.ndarray, o: np.ndarray, axis: int) -> np.ndarray:
        return np.asarray(np.quantile(c, 0.9, axis=axis) - np.quantile(o, 0.9, axis=axis))

    theirs = stats.bootstrap((candidate, control), p90_difference, n_resamples=4000,
                             confidence_level=0.90, method="percentile", paired=False,
                             rng=np.random.default_rng(2)).confidence_interval
    width = theirs.high - theirs.low
    assert abs(ours[0] - theirs.low) < 0.1 * width
    assert abs(ours[1] - theirs.high) < 0.1 * width


def test_bootstrap_is_seeded() -> None:
    c = Histogram((100, 200, 400, INF), (10, 60, 25, 5))
    o = Histogram((100, 200, 400, INF), (20, 60, 15, 5))
    one = inference.bootstrap_excess(o, c, 0.9, Margin(0.1, relative=True, log_scale=True),
                                     500, seed=3)
    two = inference.bootstrap_excess(o, c, 0.9, Margin(0.1, relative=True, log_scale=True),
                                     500, seed=3)
    np.testing.assert_array_equal(one, two)


# --- the mSPRT --------------------------------------------------------------------------------

@pytest.mark.parametrize(("x", "variance", "tau"), [(0.004, 2e-6, 0.005), (-0.002, 1e-6, 0.005),
                                                    (0.1, 0.01, 0.05), (0.0, 0.5, 1.0)])
def test_mixture_lr_is_the_integral_of_the_likelihood_ratio(x: float, variance: float,
                                                            tau: float) -> None:
    """The closed form against scipy's quadrature of the half-normal mixture."""
    def integrand(u: float) -> float:
        ratio = math.exp(u * x / variance - u * u / (2 * variance))
        return float(ratio * 2 * stats.norm.pdf(u, scale=tau))

    numeric, _ = integrate.quad(integrand, 0, 40 * tau, points=[tau], limit=200)
    assert math.exp(sequential.log_mixture_lr(x, variance, tau)) == pytest.approx(numeric,
                                                                                  rel=1e-7)


def test_always_valid_p_never_increases() -> None:
    rng = np.random.default_rng(9)
    p = OneSided(1.0, 1.0)
    seen = []
    for n in range(1, 60):
        e = Normal(float(rng.normal(0.0, 0.05 / math.sqrt(n))), 0.05 / math.sqrt(n))
        p = sequential.update(p, e, tau=0.02)
        seen.append((p.p_fail, p.p_pass))
    fails, passes = zip(*seen, strict=True)
    assert all(b <= a for a, b in itertools.pairwise(fails))
    assert all(b <= a for a, b in itertools.pairwise(passes))
    assert all(0 < v <= 1 for v in fails + passes)


def _boundary_runs(method: Method, runs: int, seed: int) -> float:
    """Share of rollouts failed when the candidate sits exactly on the margin (1.0% -> 1.5%
    with a 0.5-point margin): a fail there is a type I error. 20 peeks of 1,000 per arm."""
    rng = np.random.default_rng(seed)
    spec = GateSpec("error_rate", Kind.RATE, margin=0.005, method=method, min_samples=1000)
    control = rng.binomial(1000, 0.010, size=(runs, 20)).cumsum(axis=1)
    candidate = rng.binomial(1000, 0.015, size=(runs, 20)).cumsum(axis=1)
    failed = 0
    for o_row, c_row in zip(control, candidate, strict=True):
        state = GateState()
        for window, (o, c) in enumerate(zip(o_row, c_row, strict=True), start=1):
            d = decide(spec, Counts(int(o), 1000 * window), Counts(int(c), 1000 * window), state)
            state = d.state
            if d.abort:
                failed += 1
                break
    return failed / runs


def test_msprt_keeps_alpha_over_20_peeks_where_a_peeked_fixed_test_does_not() -> None:
    assert _boundary_runs(Method.SEQUENTIAL, 400, seed=1) <= 0.05
    assert _boundary_runs(Method.FIXED, 400, seed=1) > 0.10


# --- decisions --------------------------------------------------------------------------------

RATE = GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000, method=Method.FIXED)


def test_below_the_minimum_sample_never_passes_or_fails() -> None:
    state = GateState(looks=2, p_fail=0.2, p_pass=0.3, failures_in_a_row=1)
    for spec in (RATE, GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000)):
        d = decide(spec, Counts(0, 999), Counts(999, 999), state)  # as bad as it gets
        assert d.verdict == Verdict.INSUFFICIENT and not d.abort and not d.would_abort
        assert d.state.looks == 2 and d.state.failures_in_a_row == 0
        assert "fewer than 1000 per arm" in d.detail
    sequential_d = decide(GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000),
                          Counts(0, 999), Counts(999, 999), state)
    assert (sequential_d.p_fail, sequential_d.p_pass) == (0.2, 0.3)  # carried, not lost


def test_fixed_rate_gate_fails_passes_and_is_inconclusive() -> None:
    fail = decide(RATE, Counts(100, 10_000), Counts(250, 10_000))
    assert fail.verdict == Verdict.FAIL and fail.abort and fail.excess_ci[0] > 0
    passed = decide(RATE, Counts(100, 20_000), Counts(100, 20_000))
    assert passed.verdict == Verdict.PASS and not passed.abort and passed.excess_ci[1] < 0
    unsure = decide(RATE, Counts(10, 1000), Counts(12, 1000))
    assert unsure.verdict == Verdict.INCONCLUSIVE and unsure.excess_ci[0] < 0 < unsure.excess_ci[1]
    assert not unsure.abort


def test_rate_gate_ignores_a_rise_within_the_margin() -> None:
    """+0.2 points on a 0.5-point margin, shown with certainty, is a pass, not a fail."""
    d = decide(RATE, Counts(1000, 100_000), Counts(1200, 100_000))
    assert d.verdict == Verdict.PASS and d.difference > 0


def test_consecutive_failure_limit() -> None:
    spec = GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000,
                    method=Method.FIXED, failure_limit=3)
    bad, unsure = (Counts(100, 10_000), Counts(250, 10_000)), (Counts(10, 1000), Counts(12, 1000))
    state, seen = GateState(), []
    for control, candidate in (bad, bad, unsure, bad, bad, bad):
        d = decide(spec, control, candidate, state)
        state = d.state
        seen.append((d.verdict.value, d.state.failures_in_a_row, d.abort))
    assert seen == [("fail", 1, False), ("fail", 2, False), ("inconclusive", 0, False),
                    ("fail", 1, False), ("fail", 2, False), ("fail", 3, True)]


def test_dry_run_is_evaluated_and_recorded_but_never_acts() -> None:
    spec = GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000,
                    method=Method.FIXED, dry_run=True)
    d = decide(spec, Counts(100, 10_000), Counts(250, 10_000))
    assert d.verdict == Verdict.FAIL and d.would_abort and not d.abort and d.dry_run
    assert "dry run: not acted on" in d.detail
    record = d.record()
    assert record["dry_run"] is True and record["would_abort"] is True
    assert record["abort"] is False


def test_record_is_plain_json() -> None:
    d = decide(RATE, Counts(0, 10), Counts(0, 10))  # insufficient: NaN statistics
    text = json.dumps(d.record(), allow_nan=False)
    back = json.loads(text)
    assert back["verdict"] == "insufficient" and back["excess"] is None
    assert GateState(**back["state"]) == d.state  # the state round-trips through storage


def test_sequential_fail_is_sticky_and_p_never_rises() -> None:
    spec = GateSpec("error_rate", Kind.RATE, margin=0.005, min_samples=1000)
    state, fails = GateState(), []
    windows = [(10, 40)] * 5 + [(10, 10)] * 5  # a burst of errors, then a calm candidate
    o_total = c_total = 0
    for i, (o, c) in enumerate(windows, start=1):
        o_total, c_total = o_total + o, c_total + c
        d = decide(spec, Counts(o_total, 1000 * i), Counts(c_total, 1000 * i), state)
        state = d.state
        fails.append((d.verdict, d.p_fail))
    ps = [p for _, p in fails]
    assert all(b <= a for a, b in itertools.pairwise(ps))
    first = next(i for i, (v, _) in enumerate(fails) if v == Verdict.FAIL)
    assert all(v == Verdict.FAIL for v, _ in fails[first:])
    assert state.looks == len(windows) and state.tau == 0.005


LATENCY_BOUNDS = (*[10.0 * 1.1 ** k for k in range(73)], INF)


def _latency(rng: np.random.Generator, n: int, scale: float) -> Histogram:
    values = rng.lognormal(math.log(200.0), 0.5, n) * scale
    counts = np.histogram(values, [-INF, *LATENCY_BOUNDS])[0]
    return Histogram(LATENCY_BOUNDS, tuple(int(c) for c in counts))


@pytest.mark.parametrize("method", [Method.SEQUENTIAL, Method.FIXED])
def test_p95_gate_on_histograms(method: Method) -> None:
    spec = GateSpec("latency_ms", Kind.DISTRIBUTION, margin=0.10, relative=True,
                    quantile=0.95, min_samples=500, method=method, resamples=500)
    rng = np.random.default_rng(4)
    control = _latency(rng, 20_000, 1.0)
    worse = decide(spec, control, _latency(rng, 20_000, 1.2))
    same = decide(spec, control, _latency(rng, 20_000, 1.0))
    assert worse.verdict == Verdict.FAIL and worse.relative_change == pytest.approx(0.2, abs=0.05)
    assert same.verdict == Verdict.PASS
    assert worse.test == ("msprt" if method == Method.SEQUENTIAL else "bootstrap")


def test_rank_gate_on_samples() -> None:
    spec = GateSpec("score", Kind.DISTRIBUTION, direction=Direction.HIGHER_IS_BETTER,
                    method=Method.FIXED, min_samples=100)
    rng = np.random.default_rng(8)
    control = Samples(tuple(rng.normal(0.7, 0.1, 400).tolist()))
    worse = Samples(tuple(rng.normal(0.6, 0.1, 400).tolist()))
    d = decide(spec, control, worse)
    assert d.verdict == Verdict.FAIL and d.test == "mann-whitney"
    assert d.candidate.estimate < d.control.estimate  # medians


def test_relative_quantile_gate_on_non_positive_values_is_inconclusive() -> None:
    spec = GateSpec("delta", Kind.DISTRIBUTION, margin=0.1, relative=True, quantile=0.5,
                    min_samples=3)
    d = decide(spec, Samples((-3.0, -2.0, -1.0)), Samples((-3.0, -2.0, -1.0)))
    assert d.verdict == Verdict.INCONCLUSIVE and d.test == "untestable"


def test_quantile_in_the_overflow_bucket_is_untestable() -> None:
    """Prometheus answers the largest finite bound there; a gate must not compare floors."""
    spec = GateSpec("latency_ms", Kind.DISTRIBUTION, margin=0.1, relative=True, quantile=0.95,
                    min_samples=10)
    fine = Histogram((100, 200, INF), (50, 48, 2))
    over = Histogram((100, 200, INF), (50, 40, 10))
    d = decide(spec, fine, over)
    assert d.verdict == Verdict.INCONCLUSIVE and "+inf bucket" in d.detail
    assert decide(spec, fine, fine).test == "msprt"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "ratio"}, "kind must be rate | distribution"),
    ({"alpha": 0.5}, "alpha must be in"),
    ({"margin": -0.1}, "margin must be a finite number >= 0"),
    ({"margin": math.inf}, "margin must be a finite number"),
    ({"min_samples": 0}, "min_samples must be a whole number"),
    ({"failure_limit": 0}, "failure_limit"),
    ({"quantile": 0.95}, "a rate gate has no quantile"),
    ({"margin": 0.0}, "zero margin needs mixing_scale"),
    ({"mixing_scale": -1.0}, "mixing_scale"),
    ({"method": "bayesian"}, "method must be sequential | fixed"),
    ({"kind": "distribution"}, "sequential distribution gate compares a quantile"),
    ({"kind": "distribution", "quantile": 1.0}, "quantile must be in"),
    ({"relative": True, "margin": 1.0, "direction": "higher_is_better"}, "below 1"),
    ({"margin": "0.005"}, "margin must be a number"),
    ({"alpha": None}, "alpha must be a number"),
    ({"dry_run": "yes"}, "dry_run must be true or false"),
    ({"metric": ""}, "names its metric"),
])
def test_bad_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"metric": "error_rate", "kind": "rate", "margin": 0.005}
    with pytest.raises(BadRequest, match=re.escape(message)):
        GateSpec(**(base | kwargs))  # type: ignore[arg-type]


def test_spec_accepts_enum_names_as_strings() -> None:
    spec = GateSpec("error_rate", "rate", direction="lower_is_better",  # type: ignore[arg-type]
                    margin=0.005, method="fixed")  # type: ignore[arg-type]
    assert spec.kind is Kind.RATE and spec.method is Method.FIXED


@pytest.mark.parametrize(("spec", "control", "candidate", "message"), [
    (RATE, Samples((1.0,)), Samples((1.0,)), "both arms must be counts"),
    (GateSpec("x", Kind.DISTRIBUTION, quantile=0.5, margin=1.0), Counts(1, 2), Counts(1, 2),
     "histograms or samples"),
    (GateSpec("x", Kind.DISTRIBUTION, method=Method.FIXED),
     Histogram((1, INF), (1, 1)), Histogram((1, INF), (1, 1)), "raw samples"),
])
def test_wrong_data_for_the_gate_is_refused(spec: GateSpec, control: object, candidate: object,
                                            message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        decide(spec, control, candidate)  # type: ignore[arg-type]
