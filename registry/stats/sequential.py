"""Always-valid sequential tests: the mixture SPRT (mSPRT) with a half-normal mixture.

A gate evaluated every minute peeks at the data again and again; a fixed-sample test checked at
every peek rejects a true null far more often than its ``alpha``. The mSPRT of Johari, Koomen,
Pekelis and Walsh ("Always valid inference", 2017, as run in Optimizely's stats engine) keeps
``P(ever reject a true H0) <= alpha`` however often it is checked, by Ville's inequality on a
likelihood-ratio martingale.

Model. At look ``n`` the excess estimate (see :mod:`registry.stats.inference`) is approximately
``E^_n ~ N(E, V_n)`` with ``V_n = se_n^2`` shrinking as the cumulative samples grow, and the
path of ``E^_n / V_n`` behaves as a Gaussian random walk (normal approximation, plug-in
variance, as in the paper). The likelihood ratio of "true excess ``E0 + u``" against
"``E0``", for ``x = E^_n - E0``, is ``exp(u x / V - u^2 / (2 V))``.

One-sided mixture. Integrating that ratio over a half-normal density on the alternative side,
``h(u) = 2 / tau * phi(u / tau)`` for ``u > 0``, gives in closed form::

    Lambda_n = 2 sqrt(V / (V + tau^2)) exp( tau^2 x^2 / (2 V (V + tau^2)) )
               * Phi( tau x / sqrt(V (V + tau^2)) )

(the symmetric normal mixture of the paper times ``2 Phi(...)``). For each ``u > 0`` the ratio
is a martingale at ``E = E0`` and a supermartingale for every ``E <= E0``, so the mixture is too,
and Ville's inequality bounds ``P(sup_n Lambda_n >= 1 / alpha) <= alpha`` for the whole
composite null ``E <= E0``.

Always-valid p-value: ``p_n = min(p_{n-1}, 1 / Lambda_n)``, ``p_0 = 1``; it never increases, and
rejecting when ``p_n <= alpha`` has level ``alpha`` at any (data-dependent) stopping time.
Looks may be skipped (a window below the minimum sample) without harm.

A gate runs two of these at ``E0 = 0``: **fail** with ``x = E^`` (evidence of ``E > 0``) and
**pass** with ``x = -E^`` (evidence of ``E < 0``). ``tau``, the mixing scale, is the size of
excess the test is tuned to find quickly; the default is the gate's margin (an absolute margin,
``r * control`` for a relative rate margin frozen at the first look, ``ln(1 + r)`` for a relative
quantile margin). Smaller ``tau`` detects small effects sooner and large ones later.
"""

from __future__ import annotations

import math

from scipy.special import log_ndtr

from registry.stats.inference import Normal, OneSided


def log_mixture_lr(x: float, variance: float, tau: float) -> float:
    """``ln Lambda`` of the half-normal mixture for evidence ``x`` towards ``u > 0``."""
    total = variance + tau * tau
    quadratic = tau * tau * x * x / (2.0 * variance * total)
    tilt = float(log_ndtr(tau * x / math.sqrt(variance * total)))
    return math.log(2.0) + 0.5 * math.log(variance / total) + quadratic + tilt


def look_p(x: float, variance: float, tau: float) -> float:
    """``min(1, 1 / Lambda)`` at one look."""
    return math.exp(-max(0.0, log_mixture_lr(x, variance, tau)))


def update(previous: OneSided, e: Normal, tau: float) -> OneSided:
    """The always-valid p-values after one more look at the excess ``e``."""
    variance = e.se * e.se
    fail = look_p(e.estimate, variance, tau)
    passed = look_p(-e.estimate, variance, tau)
    return OneSided(min(previous.p_fail, fail), min(previous.p_pass, passed))
