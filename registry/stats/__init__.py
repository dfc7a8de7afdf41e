"""The statistics of experiments and rollouts: pure functions, no I/O, no database, no web.

* :mod:`registry.stats.measures` -- what an arm measured in a window (counts, fixed-bucket
  histograms, capped raw samples), merging windows, quantiles as Prometheus computes them.
* :mod:`registry.stats.inference` -- fixed-sample tests against the control: the excess ``E``
  over the margin, Agresti-Caffo z-test, Wilson and Woodruff intervals, quantile bootstrap,
  Mann-Whitney U.
* :mod:`registry.stats.sequential` -- the mixture SPRT and its always-valid p-values, so a gate
  checked at every window keeps its ``alpha``.
* :mod:`registry.stats.decision` -- :class:`GateSpec`, :class:`GateState` and :func:`decide`:
  pass / fail / inconclusive / insufficient, the consecutive-failure limit, dry runs.

Each module's docstring carries its formulas. The tests check each method against scipy's or
statsmodels' own result on fixed data (``tests/registry/test_stats.py``);
``benchmarks/gates.py`` simulates A/A and regression rollouts against today's threshold gates.
"""

from registry.stats.decision import (
    ArmSummary,
    Decision,
    Direction,
    GateSpec,
    GateState,
    Kind,
    Method,
    Verdict,
    decide,
)
from registry.stats.measures import MAX_SAMPLES, Counts, Histogram, Samples, merge, quantile

__all__ = [
    "MAX_SAMPLES",
    "ArmSummary",
    "Counts",
    "Decision",
    "Direction",
    "GateSpec",
    "GateState",
    "Histogram",
    "Kind",
    "Method",
    "Samples",
    "Verdict",
    "decide",
    "merge",
    "quantile",
]
