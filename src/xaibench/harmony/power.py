"""Power of the preference test and the sample size it needs (no Django needed).

The test is the analysis's: an exact two-sided binomial test of preference = 0.5 among the decided
answers (fine-tuned or original; "Neither" is not a decision), p-value by the minimum-likelihood
method (``scipy.stats.binomtest``). Under the null 0.5 the binomial is symmetric, so the test
rejects k decided-for-fine-tuned out of n exactly when ``2 P(X <= min(k, n - k)) <= alpha``:
the rejection region is ``k <= a`` or ``k >= n - a`` with ``a`` the largest count whose lower tail
is at most ``alpha / 2``. The power at a true preference p is that region's probability under
Binomial(n, p), exact (``scipy.stats.binom``).

Several conditions: each is tested at ``alpha / m`` (Bonferroni). Holm's procedure rejects at least
what Bonferroni rejects, so a sample size planned with Bonferroni is enough under Holm as well
(``correction="holm"`` plans the same n and says so); the analysis reports Holm-adjusted p-values.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, norm

CORRECTIONS = ("bonferroni", "holm", "none")


def corrected_alpha(alpha: float, conditions: int, correction: str = "bonferroni") -> float:
    """The per-condition level: ``alpha / conditions`` (Bonferroni, and Holm's worst case) or ``alpha``."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    return alpha if correction == "none" else alpha / max(1, conditions)


def critical_count(n, alpha: float = 0.05) -> np.ndarray:
    """``a`` per n: the largest k with ``2 P(X <= k) <= alpha`` under Binomial(n, 0.5), -1 when none."""
    n = np.asarray(n, dtype=np.int64)
    a = binom.ppf(alpha / 2, n, 0.5).astype(np.int64)  # the smallest k with P(X <= k) >= alpha / 2
    over = 2 * binom.cdf(a, n, 0.5) > alpha * (1 + 1e-7)  # the tolerance of the analysis's test
    return np.where(over, a - 1, a)


def binomial_power(n, preference: float, alpha: float = 0.05) -> np.ndarray | float:
    """Exact power of the two-sided test of preference = 0.5 with ``n`` decided answers when the
    true preference is ``preference``; an array for an array of n."""
    n_arr = np.asarray(n, dtype=np.int64)
    a = critical_count(n_arr, alpha)
    power = np.where(a >= 0, binom.cdf(a, n_arr, preference) + binom.sf(n_arr - a - 1, n_arr, preference), 0.0)
    return float(power) if np.ndim(n) == 0 else power


def decided_needed(preference: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000_000) -> int:
    """The smallest number of decided answers whose exact power reaches ``power`` (exact power is
    not monotone in n: a few larger n may fall just below it again)."""
    if not 0 < preference < 1 or preference == 0.5:
        raise ValueError("the preference must be in (0, 1) and not 0.5 (no effect to detect)")
    z = norm.ppf(1 - alpha / 2) * 0.5 + norm.ppf(power) * math.sqrt(preference * (1 - preference))
    guess = max(1, int((z / abs(preference - 0.5)) ** 2))  # the normal approximation
    start = 1
    while True:
        stop = min(max_n, max(64, 2 * guess))
        n = np.arange(start, stop + 1)
        hit = np.flatnonzero(binomial_power(n, preference, alpha) >= power)
        if hit.size:
            return int(n[hit[0]])
        if stop >= max_n:
            raise ValueError(f"more than {max_n:,} decided answers would be needed")
        start, guess = stop + 1, 2 * guess


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def plan(preference: float, neither: float = 0.0, conditions: int = 1, alpha: float = 0.05, power: float = 0.8,
         correction: str = "bonferroni", examples_per_participant: int | None = None) -> dict:
    """How many decided answers and labels per condition (and participants, when each sees
    ``examples_per_participant`` main examples spread over the conditions) for the given effect.
    ``neither`` is the expected share of "Neither" answers, which decide nothing."""
    if not 0 <= neither < 1:
        raise ValueError("the share of 'Neither' answers must be in [0, 1)")
    level = corrected_alpha(alpha, conditions, correction)
    decided = decided_needed(preference, level, power)
    labels = math.ceil(decided / (1 - neither))
    out = {"preference": preference, "neither": neither, "conditions": conditions, "alpha": alpha,
           "correction": correction, "alpha_per_condition": level, "power": power, "decided": decided,
           "labels_per_condition": labels, "labels_total": labels * conditions,
           "achieved_power": binomial_power(decided, preference, level)}
    if examples_per_participant:
        out["participants"] = math.ceil(labels * conditions / examples_per_participant)
    return out
