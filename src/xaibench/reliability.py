"""Reliability statistics of a benchmark run: can its scores be trusted to rank the methods?

`summarize(results)` turns the tidy results table (`xaibench.store.load_results`) into a
`ReliabilitySummary`: mean score per (metric, method) with BCa bootstrap intervals and ranks,
Krippendorff's alpha of the per-image method rankings of each metric (with a BCa interval), paired
Wilcoxon signed-rank tests between methods (Holm-corrected), Kendall tau agreement between metrics and
Gomez et al.'s minimum benchmark size. The functional core works on plain arrays (or tensors):

- `per_image_ranks(scores [n_images, n_methods], higher_is_better, ties=)` -> ranks, 1 = best, ties
  averaged (``ties="first"``: broken by method order, as Gomez et al.'s code)
- `krippendorff_alpha(data [..., n_coders, n_units], level)` -> alpha (vectorised over leading axes)
- `bootstrap_ci(statistic, data, n_boot=, level=, seed=, method="bca"|"percentile")` -> interval
- `minimum_benchmark_size(first_place_probs, max_n=, confidence=, even_only=)` -> number of images
- `top_stays_first_probability(first_place_probs, n, even_only=)` -> exact probability

Conventions (details and references in docs/reliability.md):

- Images are the raters (coders) and methods the units (Gomez et al. 2022): an image "rates" the methods
  by ranking them. Rank 1 is the best method for the metric's direction (``higher_is_better``).
- Ties get average ranks (``ties="first"``: the method listed first gets the better rank, to reproduce
  published alpha values); a method whose score is NaN on an image has no rank there (missing value).
  Ranking statistics (alpha, first places, minimum size) use the images on which every method has a
  score; means use every defined score; the paired tests use the images where both methods have one.
  Every image or method left out is reported in the ``reason`` columns and in ``notes``, never scored 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import signal, special, stats

from xaibench.errors import InputError

__all__ = [
    "AccuracyCheck",
    "AlphaStatistic",
    "ConfidenceInterval",
    "CriterionAggregate",
    "MeanStatistic",
    "PairedDifference",
    "ReliabilitySummary",
    "Verdict",
    "accuracy_check",
    "adjust_p",
    "aggregate_criteria",
    "alpha_verdicts",
    "benjamini_hochberg",
    "bootstrap_ci",
    "compare_runs",
    "correlation_verdict",
    "first_place_rates",
    "holm",
    "interpret_alpha",
    "jsonable",
    "krippendorff_alpha",
    "minimum_benchmark_size",
    "paired_bootstrap",
    "per_image_ranks",
    "reliability_verdict",
    "summarize",
    "top_stays_first_probability",
    "wilson_interval",
]

LEVELS = ("nominal", "ordinal", "interval", "ratio")
TIES = {"average": "average", "first": "ordinal"}  # our name -> scipy.stats.rankdata's method
RELIABLE = 0.8  # Krippendorff (2004): alpha >= 0.800 to rely on the data
TENTATIVE = 0.667  # 0.667 <= alpha < 0.800: tentative conclusions only


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- ranks


def per_image_ranks(scores: Any, higher_is_better: bool = True, ties: str = "average") -> np.ndarray:
    """Rank the methods on each image: ``scores`` [n_images, n_methods] -> ranks of the same shape.

    Rank 1 is the best method of the row: the highest score if ``higher_is_better`` else the lowest.
    ``ties="average"``: tied scores get the average of the ranks they span (1, 2.5, 2.5, 4), so no
    method is favoured by its position. ``ties="first"``: tied scores get distinct ranks in method
    (column) order, the first column the best (1, 2, 3, 4), as the original code of Gomez et al.
    ranks; use it to reproduce their published alpha values. A NaN score gets a NaN rank
    and the other methods of that row are ranked among themselves (1 .. number of defined scores); the
    row is kept, as missing values for `krippendorff_alpha`. Use ``~np.isnan(ranks).any(1)`` to keep
    complete rows only (as `summarize` does). Infinite scores are an error.
    """
    if ties not in TIES:
        raise InputError(f"ties: expected one of {sorted(TIES)}, got {ties!r}")
    x = _as_numpy(scores)
    if x.ndim != 2:
        raise InputError(f"scores: expected [n_images, n_methods], got shape {x.shape}")
    if np.isinf(x).any():
        raise InputError("scores: infinite values; use NaN for undefined scores")
    key = -x if higher_is_better else x
    if x.size == 0:
        return key.copy()
    return stats.rankdata(key, axis=1, method=TIES[ties], nan_policy="omit").astype(np.float64)


# --------------------------------------------------------------------------- Krippendorff's alpha


def krippendorff_alpha(data: Any, level: str = "ordinal") -> float | np.ndarray:
    """Krippendorff's alpha of reliability data ``[..., n_coders, n_units]`` (NaN = missing value).

    Rows are the coders (raters) and columns the units, as in ``krippendorff.alpha(reliability_data=)``;
    for a benchmark (Gomez et al. 2022) the coders are the images and the units the methods, the values
    the per-image ranks of `per_image_ranks`. ``level`` is ``"nominal"``, ``"ordinal"`` (default),
    ``"interval"`` or ``"ratio"``; the distances are Krippendorff's (the ordinal one uses the marginal
    frequencies of the values). Leading axes are a batch: the alpha of each matrix is computed at once,
    the value domain being the union of the values of the batch (values absent from a matrix add nothing).
    Returns a float for one matrix, an array otherwise; NaN where alpha is undefined (fewer than two
    pairable values, or no disagreement possible because all pairable values are equal).
    """
    if level not in LEVELS:
        raise InputError(f"level: expected one of {', '.join(LEVELS)}, got {level!r}")
    x = _as_numpy(data)
    if x.ndim < 2:
        raise InputError(f"data: expected [..., n_coders, n_units], got shape {x.shape}")
    if np.isinf(x).any():
        raise InputError("data: infinite values; use NaN for missing values")
    batch_shape = x.shape[:-2]
    x = x.reshape((-1,) + x.shape[-2:])
    domain = np.unique(x[~np.isnan(x)])
    if domain.size == 0:
        out = np.full(x.shape[0], np.nan)
    else:
        # value counts per unit: [B, n_units, V]
        idx = np.where(np.isnan(x), -1, np.searchsorted(domain, np.where(np.isnan(x), domain[0], x)))
        counts = np.zeros(x.shape[:1] + x.shape[2:] + (domain.size,))
        for v in range(domain.size):  # [B, n_units] counts of value v, missing values never match
            counts[..., v] = (idx == v).sum(1)
        out = _alpha_from_counts(counts, domain, level)
    out = out.reshape(batch_shape)
    return float(out) if out.ndim == 0 else out


def _alpha_from_counts(counts: np.ndarray, domain: np.ndarray, level: str) -> np.ndarray:
    """Alpha for value counts [B, n_units, V] over the sorted ``domain`` [V]."""
    m = counts.sum(-1)  # coders per unit
    w = np.where(m >= 2, 1.0 / np.maximum(m - 1.0, 1.0), 0.0)  # units with one value are not pairable
    o = np.einsum("bu,buc,buk->bck", w, counts, counts)  # coincidences, diagonal corrected below
    diag = np.einsum("bu,buc->bc", w, counts)
    v = domain.size
    o[:, np.arange(v), np.arange(v)] -= diag
    n_v = o.sum(-1)  # [B, V]
    n = n_v.sum(-1)  # [B]
    if level == "nominal":
        d = np.broadcast_to(1.0 - np.eye(v), (counts.shape[0], v, v))
    elif level == "interval":
        d = np.broadcast_to((domain[:, None] - domain[None, :]) ** 2, (counts.shape[0], v, v))
    elif level == "ratio":
        s = domain[:, None] + domain[None, :]
        r = np.divide(domain[:, None] - domain[None, :], s, out=np.zeros((v, v)), where=s != 0)
        d = np.broadcast_to(r**2, (counts.shape[0], v, v))
    else:  # ordinal: (sum of n_g for g between c and k inclusive - (n_c + n_k) / 2) ** 2
        cum = np.concatenate([np.zeros((n_v.shape[0], 1)), np.cumsum(n_v, -1)], -1)  # [B, V+1]
        lo = np.minimum(np.arange(v)[:, None], np.arange(v)[None, :])
        hi = np.maximum(np.arange(v)[:, None], np.arange(v)[None, :])
        between = cum[:, hi + 1] - cum[:, lo]
        d = (between - (n_v[:, :, None] + n_v[:, None, :]) / 2.0) ** 2
    observed = (o * d).sum((-1, -2))
    expected = (np.einsum("bc,bk,bck->b", n_v, n_v, d)) / np.maximum(n - 1.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = 1.0 - observed / expected
    return np.where((n > 1) & (expected > 0), alpha, np.nan)


def interpret_alpha(alpha: float) -> str:
    """Krippendorff's thresholds: >= 0.8 "reliable", >= 0.667 "tentative", lower "unreliable"."""
    if not np.isfinite(alpha):
        return "undefined"
    if alpha >= RELIABLE:
        return "reliable"
    if alpha >= TENTATIVE:
        return "tentative"
    return "unreliable"


# --------------------------------------------------------------------------- bootstrap


class ConfidenceInterval(NamedTuple):
    """Point estimate and interval (floats for a scalar statistic, arrays for a vector one)."""

    estimate: Any
    low: Any
    high: Any


def _chunks(total: int, row_size: int, budget: int = 4_000_000) -> list[slice]:
    step = max(1, budget // max(row_size, 1))
    return [slice(s, min(s + step, total)) for s in range(0, total, step)]


def _evaluate(statistic: Callable[[np.ndarray], Any], data: np.ndarray, index: np.ndarray, vectorized: bool) -> np.ndarray:
    """Statistic of each resample ``data[index[b]]`` -> [B, k]."""
    weighted = getattr(statistic, "weighted", None)
    if weighted is not None:
        n = data.shape[0]
        parts = []
        for sl in _chunks(index.shape[0], n * 8):
            idx = index[sl]
            flat = (idx + n * np.arange(idx.shape[0])[:, None]).ravel()
            counts = np.bincount(flat, minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)
            parts.append(np.asarray(weighted(data, counts), dtype=np.float64).reshape(idx.shape[0], -1))
        return np.concatenate(parts, 0)
    row = int(np.prod(data.shape[1:])) * index.shape[1]
    parts = []
    for sl in _chunks(index.shape[0], row):
        if vectorized:
            parts.append(np.asarray(statistic(data[index[sl]]), dtype=np.float64).reshape(sl.stop - sl.start, -1))
        else:
            parts.extend(np.asarray(statistic(data[i]), dtype=np.float64).reshape(1, -1) for i in index[sl])
    return np.concatenate(parts, 0)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], Any],
    data: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "bca",
    vectorized: bool = True,
) -> ConfidenceInterval:
    """Bootstrap confidence interval of ``statistic(data)``, resampling the rows (images) of ``data``.

    ``data`` is [n, ...] (rows = images). With ``vectorized=True`` the statistic receives a batch of
    resamples [B, n, ...] and returns [B] or [B, k]; with ``vectorized=False`` it receives one sample
    [n, ...] and returns a scalar or [k]. The resample indices are drawn at once from
    ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``, the same draws as
    ``scipy.stats.bootstrap(..., rng=np.random.default_rng(seed))``. A statistic may also have a
    ``weighted(data, counts)`` method, ``counts`` [B, n] being how many times each row is in each
    resample (or jackknife sample), returning the same [B] or [B, k] values without building the
    resamples; `MeanStatistic` and `AlphaStatistic` do.

    ``method="bca"``: bias-corrected and accelerated percentiles (Efron 1987; Efron & Tibshirani 1993,
    14.3): bias ``z0 = Phi^-1(share of resampled statistics below the estimate, ties counted half)``,
    acceleration from the jackknife (leave one row out), ``a = sum U^3 / (6 (sum U^2)^1.5)`` with
    ``U = mean(jackknife) - jackknife``; the bounds are the ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))``
    percentiles (linear interpolation) for ``z = Phi^-1((1 -+ level) / 2)``. When every resample equals
    the estimate the interval is that value; when the bias correction is infinite (the estimate lies
    outside all resamples) the share is clipped to [1/(2B), 1 - 1/(2B)]. Non-finite resampled values
    (statistic undefined on a resample) are left out. ``method="percentile"``: plain percentiles.
    Returns ``ConfidenceInterval(estimate, low, high)`` (floats for a scalar statistic).
    """
    if method not in ("bca", "percentile"):
        raise InputError(f"method: expected 'bca' or 'percentile', got {method!r}")
    if not 0.0 < level < 1.0:
        raise InputError(f"level: expected 0 < level < 1, got {level}")
    if int(n_boot) < 2:
        raise InputError(f"n_boot: expected at least 2, got {n_boot}")
    x = _as_numpy(data)
    if x.ndim == 0 or x.shape[0] < 2:
        raise InputError(f"data: need at least 2 rows to bootstrap, got shape {x.shape}")
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, (int(n_boot), n))
    raw = np.asarray(statistic(x[None]) if vectorized else statistic(x), dtype=np.float64)
    scalar = raw.ndim <= (1 if vectorized else 0)
    theta = raw.reshape(-1)  # [k]
    boot = _evaluate(statistic, x, index, vectorized)  # [B, k]
    tail = (1.0 - level) / 2.0
    if method == "bca":
        if getattr(statistic, "weighted", None) is not None:
            jack = np.asarray(statistic.weighted(x, 1.0 - np.eye(n)), dtype=np.float64).reshape(n, -1)
        else:
            jack_index = np.arange(n)[None, :].repeat(n, 0)
            jack_index = jack_index[~np.eye(n, dtype=bool)].reshape(n, n - 1)
            jack = _evaluate(statistic, x, jack_index, vectorized)  # [n, k]
    low = np.full(theta.shape, np.nan)
    high = np.full(theta.shape, np.nan)
    for j in range(theta.size):
        b = boot[:, j][np.isfinite(boot[:, j])]
        if not np.isfinite(theta[j]) or b.size < 2:
            continue
        if method == "percentile":
            low[j], high[j] = np.percentile(b, [100 * tail, 100 * (1 - tail)])
            continue
        if np.all(b == theta[j]):
            low[j] = high[j] = theta[j]
            continue
        share = (np.count_nonzero(b < theta[j]) + np.count_nonzero(b <= theta[j])) / (2.0 * b.size)
        share = min(max(share, 0.5 / b.size), 1 - 0.5 / b.size)
        z0 = special.ndtri(share)
        jj = jack[:, j][np.isfinite(jack[:, j])]
        u = jj.mean() - jj
        den = (u**2).sum()
        a = (u**3).sum() / (6.0 * den**1.5) if den > 0 else 0.0
        bounds = []
        for z in (special.ndtri(tail), special.ndtri(1 - tail)):
            num = z0 + z
            bounds.append(special.ndtr(z0 + num / (1 - a * num)))
        if not all(np.isfinite(bounds)):
            continue
        low[j], high[j] = np.percentile(b, 100 * bounds[0]), np.percentile(b, 100 * bounds[1])
    if scalar:
        return ConfidenceInterval(float(theta[0]), float(low[0]), float(high[0]))
    return ConfidenceInterval(theta, low, high)


class MeanStatistic:
    """Column means of the rows: [B, n, ...] -> [B, ...] (or [B] for 1-D data)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch).mean(axis=1)

    def weighted(self, data: np.ndarray, counts: np.ndarray) -> np.ndarray:
        flat = data.reshape(data.shape[0], -1)
        return (counts @ flat) / counts.sum(1, keepdims=True)


class AlphaStatistic:
    """Krippendorff's alpha of a rank matrix [n_coders, n_units], as a bootstrap statistic.

    Resampling the coders (images) only reweights each coder's contribution to the per-unit value
    counts, so ``weighted`` computes the counts of every resample as one matrix product.
    """

    def __init__(self, level: str = "ordinal") -> None:
        if level not in LEVELS:
            raise InputError(f"level: expected one of {', '.join(LEVELS)}, got {level!r}")
        self.level = level

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(krippendorff_alpha(batch, self.level))

    def weighted(self, data: np.ndarray, counts: np.ndarray) -> np.ndarray:
        domain = np.unique(data[~np.isnan(data)])
        if domain.size == 0:
            return np.full(counts.shape[0], np.nan)
        onehot = (data[:, :, None] == domain[None, None, :]).astype(np.float64)  # [n, units, V]
        value_counts = (counts @ onehot.reshape(data.shape[0], -1)).reshape(counts.shape[0], data.shape[1], domain.size)
        return _alpha_from_counts(value_counts, domain, self.level)


# --------------------------------------------------------------------------- minimum benchmark size


def _check_probs(first_place_probs: Any) -> np.ndarray:
    if isinstance(first_place_probs, Mapping):
        first_place_probs = list(first_place_probs.values())
    p = _as_numpy(first_place_probs)
    if p.ndim != 1 or p.size < 2:
        raise InputError(f"first_place_probs: expected at least 2 probabilities, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError(f"first_place_probs: probabilities must be finite and >= 0, got {p.tolist()}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise InputError(f"first_place_probs: probabilities must sum to 1, got {p.sum():.6g}")
    return p


def top_stays_first_probability(first_place_probs: Any, n: int, *, even_only: bool = True) -> float:
    """Probability that the top method (largest first-place rate) has strictly more first places than
    every other method among ``n`` images, first places ~ Multinomial(n, first_place_probs).

    ``even_only``: condition on the first-place count of the *first* method of ``first_place_probs``
    (position 0, whatever its rate) being even, as Gomez et al.'s published search does (their
    ``frac_to_sample_per_method = 0.5`` keeps the count vectors whose first count is a multiple of
    1 / 0.5 = 2). The result is then P(top strictly first and count_0 even) / P(count_0 even).

    Computed exactly, not by simulation: the multinomial is the law of independent Poisson(n p_i)
    counts given their total n, so the probability is a sum over the top count t of
    ``Poisson(t) * [x^(n-t)] prod_j (sum_{c<t} Poisson_j(c) x^c)``; the polynomial products for all t
    are batched convolutions. Absolute error ~1e-12.
    """
    p = _check_probs(first_place_probs)
    n = int(n)
    if n < 1:
        raise InputError(f"n: expected at least 1 image, got {n}")
    top = int(np.argmax(p))
    if np.count_nonzero(p == p[top]) > 1:
        raise InputError("first_place_probs: several methods share the largest rate; there is no top method")
    c = np.arange(n + 1)
    pmf = np.stack([stats.poisson.pmf(c, n * pi) if pi > 0 else (c == 0).astype(float) for pi in p])
    if even_only:
        pmf[0, 1::2] = 0.0
    # top counts that matter: the others' mass beyond is negligible (< 1e-20 per term)
    t = np.nonzero(pmf[top] > 1e-20 * pmf[top].max())[0]
    t = t[t >= 1]
    if t.size == 0:
        return 0.0
    others = [j for j in range(p.size) if j != top]
    acc = None
    for j in others:
        g = np.where(c[None, :] < t[:, None], pmf[j][None, :], 0.0)  # [T, n+1]
        acc = g if acc is None else signal.fftconvolve(acc, g, axes=1)[:, : n + 1]
    acc = np.clip(acc, 0.0, None)
    rest = n - t
    joint = float((pmf[top, t] * acc[np.arange(t.size), rest]).sum())
    total = float(stats.poisson.pmf(n, n))  # P(sum of the Poisson counts == n)
    if even_only:
        total *= (1.0 + (1.0 - 2.0 * p[0]) ** n) / 2.0  # P(count_0 even | n)
    return min(max(joint / total, 0.0), 1.0) if total > 0 else float("nan")


def minimum_benchmark_size(
    first_place_probs: Any,
    max_n: int = 200,
    confidence: float = 0.95,
    even_only: bool = True,
    *,
    search: str = "bisection",
) -> int:
    """Gomez et al.'s minimum benchmark size: how few images keep the top method first.

    ``first_place_probs``: each method's probability of ranking first on an image (a sequence, or a
    mapping method -> probability whose order is kept); they must be >= 0 and sum to 1. The top method
    is the one with the largest rate; if several share it the benchmark cannot be reduced: ``max_n``.
    For a number of images n, ``top_stays_first_probability(first_place_probs, n, even_only=)`` is the
    probability that the top method has strictly more first places than each other method (a tie for
    the most first places counts as failure). The answer is the n found by the published bisection over
    (0, max_n): ``start, end = 0, max_n``; while ``end - start > 1`` test ``n = ceil((start + end) / 2)``,
    setting ``end = n`` if the probability is >= ``confidence`` else ``start = n``; the last n that
    passed, or ``max_n`` if none did (``max_n`` itself is not tested). ``search="smallest"`` scans
    n = 1, 2, ... instead and returns the first n that passes (the probability is not monotone in n,
    so the two can differ; they agree on the published cases). Published cases (max_n=200,
    even_only=True): [0.5, 0.3, 0.2] -> 59, [0.6, 0.2, 0.2] -> 18, [0.4, 0.35, 0.25] -> 200.
    """
    p = _check_probs(first_place_probs)
    max_n = int(max_n)
    if max_n < 1:
        raise InputError(f"max_n: expected at least 1, got {max_n}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence: expected 0 < confidence < 1, got {confidence}")
    if search not in ("bisection", "smallest"):
        raise InputError(f"search: expected 'bisection' or 'smallest', got {search!r}")
    if np.count_nonzero(p == p.max()) > 1:
        return max_n

    def passes(n: int) -> bool:
        return top_stays_first_probability(p, n, even_only=even_only) >= confidence

    if search == "smallest":
        return next((n for n in range(1, max_n) if passes(n)), max_n)
    start, end, found = 0, max_n, None
    while end - start > 1:
        n = math.ceil((start + end) / 2)
        if passes(n):
            found, end = n, n
        else:
            start = n
    return max_n if found is None else found


def first_place_rates(ranks: Any) -> np.ndarray:
    """Share of images on which each method ranks first: ranks [n_images, n_methods] (complete rows).

    A method is first on an image when its rank is the row's smallest; methods tied for first share
    that image equally (1/k each), so the rates sum to 1.
    """
    r = _as_numpy(ranks)
    if r.ndim != 2 or r.shape[0] == 0:
        raise InputError(f"ranks: expected a non-empty [n_images, n_methods], got shape {r.shape}")
    if np.isnan(r).any():
        raise InputError("ranks: rows with a NaN rank must be removed first")
    best = r == r.min(1, keepdims=True)
    return (best / best.sum(1, keepdims=True)).mean(0)


# --------------------------------------------------------------------------- multiple comparisons


def _adjusted(p: Any, rule: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``rule`` (sorted finite p-values -> adjusted ones) applied to ``p``, capped at 1; NaN stays NaN."""
    p = _as_numpy(p).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.nonzero(np.isfinite(p))[0]
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.minimum(rule(p[order]), 1.0)
    return out


def holm(p: Any) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaN entries stay NaN and are not counted."""
    return _adjusted(p, lambda s: np.maximum.accumulate((s.size - np.arange(s.size)) * s))


# --------------------------------------------------------------------------- summary of a run


@dataclass(frozen=True)
class ReliabilitySummary:
    """What `summarize` computes from a results table; every table has one row per metric (or pair).

    - ``means``: metric, method, mean, low, high, rank, n (rank 1 = best, "min" rule on ties: equal
      means share the smallest rank, ints)
    - ``alpha``: metric, alpha, low, high, interpretation, n_images, n_methods, reason
    - ``pairwise``: metric, method_a, method_b, diff (mean of a - b), n, p, p_adj (Holm within the
      metric), significant (p_adj < 1 - level)
    - ``agreement``: metric x metric Kendall tau of the method rankings by mean (direction-aware)
    - ``benchmark_size``: metric, top_method, top_prob, min_n, max_n, n_images, reducible,
      first_place_probs (dict method -> rate), reason
    - ``notes``: what was left out and why
    """

    means: pd.DataFrame
    alpha: pd.DataFrame
    pairwise: pd.DataFrame
    agreement: pd.DataFrame
    benchmark_size: pd.DataFrame
    level: float = 0.95
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: lists of records, NaN as None, agreement as {metric: {metric: tau}}."""
        return jsonable(
            {
                "level": self.level,
                "means": self.means.to_dict(orient="records"),
                "alpha": self.alpha.to_dict(orient="records"),
                "pairwise": self.pairwise.to_dict(orient="records"),
                "agreement": {str(i): row.to_dict() for i, row in self.agreement.iterrows()},
                "benchmark_size": self.benchmark_size.to_dict(orient="records"),
                "notes": list(self.notes),
            }
        )


def jsonable(obj: Any) -> Any:
    """Plain JSON-ready data: mappings and sequences recursively, numpy scalars as Python ones, NaN as None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    return obj


_REQUIRED = ("image_id", "method", "metric", "score")


def _wide(sub: pd.DataFrame, methods: list[str], images: list[Any]) -> np.ndarray:
    table = sub.groupby(["image_id", "method"], sort=False)["score"].mean().unstack("method")
    return table.reindex(index=images, columns=methods).to_numpy(dtype=np.float64)


def summarize(
    results: pd.DataFrame,
    *,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    alpha_level: str = "ordinal",
    max_n: int | None = None,
    confidence: float = 0.95,
    even_only: bool = True,
    ties: str = "average",
) -> ReliabilitySummary:
    """Reliability summary of a results table (one row per image, method, metric; see store.py).

    ``level``: confidence level of every interval, and ``1 - level`` is the significance threshold of
    the Holm-adjusted p-values. ``n_boot`` resamples of the images with ``seed`` (the same seed for
    every interval, so one metric's interval does not depend on the other metrics of the table).
    ``alpha_level``: Krippendorff level of measurement of the ranks. ``max_n`` (default: the number of
    complete images of the metric), ``confidence`` and ``even_only``: `minimum_benchmark_size`; the
    order of methods for ``even_only`` is their order of first appearance in ``results``.
    ``ties``: tie rule of the per-image ranks (`per_image_ranks`; "first" breaks ties in that same
    order of methods).
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"level: expected 0 < level < 1, got {level}")
    if int(n_boot) < 2:
        raise InputError(f"n_boot: expected at least 2, got {n_boot}")
    if ties not in TIES:
        raise InputError(f"ties: expected one of {sorted(TIES)}, got {ties!r}")
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise InputError(f"results: missing column(s) {', '.join(missing)}; load them with xaibench.load_results")
    notes: list[str] = []
    metrics = list(pd.unique(results["metric"]))
    methods_all = list(pd.unique(results["method"]))
    if "higher_is_better" in results.columns:
        direction = results.groupby("metric", sort=False)["higher_is_better"].first().astype(bool).to_dict()
    else:
        direction = {m: True for m in metrics}
        notes.append("no higher_is_better column: every metric is taken as higher-is-better")

    means_rows, alpha_rows, pair_rows, size_rows = [], [], [], []
    goodness: dict[str, pd.Series] = {}
    groups = dict(tuple(results.groupby("metric", sort=False)))
    for metric in metrics:
        sub = groups[metric]
        hib = bool(direction[metric])
        present = set(pd.unique(sub["method"]))
        methods = [m for m in methods_all if m in present]
        images = list(pd.unique(sub["image_id"]))
        x = _wide(sub, methods, images)  # [n_images, n_methods], NaN where undefined or absent
        defined = ~np.isnan(x)

        # means with BCa intervals over images
        rows = []
        for k, method in enumerate(methods):
            v = x[defined[:, k], k]
            if v.size == 0:
                notes.append(f"{metric}: method {method} has no defined score; left out of the ranking")
                continue
            if v.size >= 2:
                ci = bootstrap_ci(MeanStatistic(), v, n_boot=n_boot, level=level, seed=seed)
                low, high = ci.low, ci.high
            else:
                low = high = float("nan")
            rows.append({"metric": metric, "method": method, "mean": float(v.mean()), "low": low, "high": high, "n": int(v.size)})
        if rows:
            frame = pd.DataFrame(rows)
            key = frame["mean"] if hib else -frame["mean"]
            frame["rank"] = key.rank(ascending=False, method="min").astype(int)
            goodness[metric] = pd.Series(key.to_numpy(), index=frame["method"].to_numpy())
            means_rows.extend(frame.to_dict(orient="records"))

        # per-image rankings on complete images
        complete = defined.all(1)
        n_dropped = int((~complete).sum())
        if n_dropped:
            notes.append(f"{metric}: {n_dropped} of {len(images)} images lack a score for some method; "
                         "left out of alpha and the minimum benchmark size")
        ranks = per_image_ranks(x[complete], hib, ties) if complete.any() else np.empty((0, len(methods)))
        n_img = int(ranks.shape[0])
        a = lo = hi = float("nan")
        reason = None
        if len(methods) < 2:
            reason = "fewer than 2 methods"
        elif n_img < 2:
            reason = "fewer than 2 images with a score for every method"
        else:
            a = krippendorff_alpha(ranks, alpha_level)
            if not np.isfinite(a):
                reason = "no variation in the ranks (all methods tie on every image)"
            else:
                ci = bootstrap_ci(AlphaStatistic(alpha_level), ranks, n_boot=n_boot, level=level, seed=seed)
                lo, hi = ci.low, ci.high
        alpha_rows.append({
            "metric": metric, "alpha": a, "low": lo, "high": hi,
            "interpretation": interpret_alpha(a) if reason is None else f"undefined: {reason}",
            "n_images": n_img, "n_methods": len(methods), "reason": reason,
        })

        # minimum benchmark size from the first-place rates
        row: dict[str, Any] = {"metric": metric, "top_method": None, "top_prob": float("nan"), "min_n": None,
                               "max_n": None, "n_images": n_img, "reducible": False, "first_place_probs": {}, "reason": reason}
        if len(methods) >= 2 and n_img >= 1:
            rates = first_place_rates(ranks)
            probs = dict(zip(methods, rates.tolist()))
            top = int(np.argmax(rates))
            limit = int(max_n) if max_n is not None else n_img
            tied = np.count_nonzero(np.isclose(rates, rates[top], rtol=0, atol=1e-12)) > 1
            if tied:
                min_n = limit
                row["reason"] = "several methods share the most first places"
            else:
                min_n = minimum_benchmark_size(rates / rates.sum(), max_n=limit, confidence=confidence, even_only=even_only)
                row["reason"] = None
            row.update(top_method=methods[top], top_prob=float(rates[top]), min_n=int(min_n), max_n=limit,
                       reducible=bool(min_n < limit), first_place_probs=probs)
        size_rows.append(row)

        # paired Wilcoxon signed-rank tests, Holm within the metric
        start = len(pair_rows)
        pair_rows.extend(_paired_tests(metric, methods, x, defined))
        adj = holm([r["p"] for r in pair_rows[start:]])
        for r, pa in zip(pair_rows[start:], adj):
            r["p_adj"] = float(pa)
            r["significant"] = bool(np.isfinite(pa) and pa < 1.0 - level)

    means = pd.DataFrame(means_rows, columns=["metric", "method", "mean", "low", "high", "rank", "n"])
    alpha = pd.DataFrame(alpha_rows, columns=["metric", "alpha", "low", "high", "interpretation", "n_images", "n_methods", "reason"])
    pairwise = pd.DataFrame(pair_rows, columns=["metric", "method_a", "method_b", "diff", "n", "p", "p_adj", "significant"])
    pairwise["significant"] = pairwise["significant"].astype(bool)
    size = pd.DataFrame(size_rows, columns=["metric", "top_method", "top_prob", "min_n", "max_n", "n_images",
                                            "reducible", "first_place_probs", "reason"])
    return ReliabilitySummary(means=means, alpha=alpha, pairwise=pairwise, agreement=_agreement(goodness),
                              benchmark_size=size, level=level, notes=tuple(notes))


def _wilcoxon_p(d: np.ndarray) -> float:
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def _paired_tests(metric: str, methods: list[str], x: np.ndarray, defined: np.ndarray) -> list[dict[str, Any]]:
    """Two-sided Wilcoxon signed-rank test of a - b for every pair, on the images where both are defined.

    Pairs with more than 50 complete images (where scipy's "auto" uses the normal approximation for
    every pair) are tested in one vectorised call; the others one by one (exact null when possible).
    """
    pairs = [(i, j) for i in range(len(methods)) for j in range(i + 1, len(methods))]
    rows, p = [], {}
    full = [(i, j) for i, j in pairs if (defined[:, i] & defined[:, j]).all() and x.shape[0] > 50]
    if full:
        d = np.stack([x[:, i] - x[:, j] for i, j in full], 1)
        nonzero = (d != 0).any(0)
        values = np.ones(len(full))
        if nonzero.any():
            values[nonzero] = stats.wilcoxon(d[:, nonzero], axis=0, zero_method="wilcox", alternative="two-sided").pvalue
        p.update(zip(full, values.tolist()))
    for i, j in pairs:
        both = defined[:, i] & defined[:, j]
        d = x[both, i] - x[both, j]
        rows.append({"metric": metric, "method_a": methods[i], "method_b": methods[j],
                     "diff": float(d.mean()) if d.size else float("nan"), "n": int(d.size),
                     "p": p[(i, j)] if (i, j) in p else _wilcoxon_p(d)})
    return rows


def _agreement(goodness: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Kendall tau-b between the method orders of each pair of metrics (higher goodness = better)."""
    names = list(goodness)
    if len(names) < 2:
        return pd.DataFrame()
    tau = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if j < i:
                tau[i, j] = tau[j, i]
                continue
            common = goodness[a].index.intersection(goodness[b].index)
            if len(common) < 2:
                continue
            if i == j:
                tau[i, j] = 1.0
                continue
            t = stats.kendalltau(goodness[a][common].to_numpy(), goodness[b][common].to_numpy()).statistic
            tau[i, j] = float(t)
    return pd.DataFrame(tau, index=names, columns=names)


# --------------------------------------------------------------------------- verdicts

MIN_IMAGES = 30  # fewer images: no reliability verdict (the bootstrap interval itself is unsure)
CORRECTIONS = ("holm", "bh")  # multiple-comparison corrections: Holm (1979), Benjamini & Hochberg (1995)
NEAR_CHANCE_MARGIN = 0.05  # accuracy not shown to exceed chance by more than this: model at or near chance
MIN_UNITS = 5  # fewer units (models, methods) in a correlation: "too few to conclude"


@dataclass(frozen=True)
class Verdict:
    """A reliability verdict: ``label`` ("reliable", "tentative", "unreliable", "inconclusive" or
    "undefined"), the Krippendorff threshold the interval's lower bound clears (0.8, 0.667 or None),
    and the sentence that states it with its numbers (``str(verdict)``)."""

    label: str
    threshold: float | None
    text: str

    @property
    def rankable(self) -> bool:
        """Whether the metric may rank methods: the lower bound clears 0.667 with enough images."""
        return self.label in ("reliable", "tentative")

    def __str__(self) -> str:
        return self.text


def reliability_verdict(alpha: float, low: float, high: float, n_images: int, *, level: float = 0.95,
                        min_images: int = MIN_IMAGES) -> Verdict:
    """The verdict on a metric's Krippendorff alpha with its ``level`` interval [low, high] over ``n_images``.

    "reliable" when the interval's lower bound is >= 0.8 (`RELIABLE`), "tentative" when it is >= 0.667
    (`TENTATIVE`; Krippendorff 2004: tentative conclusions only), "unreliable" when the upper bound is
    below 0.667, all three only with at least ``min_images`` images; otherwise "inconclusive (n = …,
    α CI […])", with, when the point estimate clears a threshold, the number of images about needed
    for the lower bound to clear it too (the interval's half-width taken to shrink as 1/sqrt(n); beyond
    ten times n the sentence says only that many more are needed).
    "undefined" when alpha is NaN. The point estimate alone never makes a metric reliable.
    """
    if alpha is None or not np.isfinite(alpha):
        return Verdict("undefined", None, "undefined: alpha could not be computed")
    ci = f"{level:.0%} CI [{_num(low)}, {_num(high)}]"
    stated = f"α {alpha:.2f}, {ci}, n = {n_images} images"
    if not (np.isfinite(low) and np.isfinite(high)):
        return Verdict("inconclusive", None, f"inconclusive (n = {n_images}, α {alpha:.2f}, no interval)")
    if n_images < min_images:
        return Verdict("inconclusive", None, f"inconclusive (n = {n_images}, α {alpha:.2f}, {ci}): fewer than "
                                             f"{min_images} images, the minimum for a verdict")
    if low >= RELIABLE:
        return Verdict("reliable", RELIABLE, f"reliable: {stated}; the lower bound clears {RELIABLE}")
    if low >= TENTATIVE:
        more = _images_needed(alpha, low, n_images, RELIABLE)
        return Verdict("tentative", TENTATIVE, f"tentative: {stated}; the lower bound clears {TENTATIVE} but not "
                                               f"{RELIABLE}{more}")
    if high < TENTATIVE:
        return Verdict("unreliable", None, f"unreliable: {stated}; the whole interval is below {TENTATIVE}")
    more = _images_needed(alpha, low, n_images, TENTATIVE)
    return Verdict("inconclusive", None, f"inconclusive (n = {n_images}, α {alpha:.2f}, {ci}): the interval "
                                         f"crosses {TENTATIVE}{more}")


def _num(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "NaN"


def _images_needed(alpha: float, low: float, n: int, threshold: float) -> str:
    if alpha <= threshold or alpha <= low:
        return ""
    need = math.ceil(round(n * ((alpha - low) / (alpha - threshold)) ** 2, 6))  # round: no 901 for 900.0000001
    if need > 10 * n:
        return f"; many more images would be needed (more than {10 * n}: α is close to {threshold})"
    return f"; about {need} images are needed (minimum-size estimate)"


def alpha_verdicts(alpha: pd.DataFrame, level: float = 0.95, min_images: int = MIN_IMAGES) -> pd.DataFrame:
    """`reliability_verdict` of every row of a ``ReliabilitySummary.alpha`` table: columns metric,
    verdict (the label), threshold (met by the lower bound, or NaN), rankable, reason (the sentence)."""
    rows = []
    for r in alpha.itertuples(index=False):
        v = reliability_verdict(r.alpha, r.low, r.high, int(r.n_images), level=level, min_images=min_images)
        if v.label == "undefined" and isinstance(r.reason, str):
            v = Verdict("undefined", None, f"undefined: {r.reason}")
        rows.append({"metric": r.metric, "verdict": v.label, "threshold": v.threshold if v.threshold else np.nan,
                     "rankable": v.rankable, "reason": v.text})
    return pd.DataFrame(rows, columns=["metric", "verdict", "threshold", "rankable", "reason"])


def wilson_interval(hits: int, n: int, level: float = 0.95) -> ConfidenceInterval:
    """Rate ``hits / n`` with its Wilson (1927) score interval (scipy's ``binomtest``); NaN when n = 0."""
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan)
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return ConfidenceInterval(hits / n, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class AccuracyCheck:
    """The model's accuracy on the evaluated images with a Wilson interval, and whether it is at or near
    chance (``near_chance``: the interval's lower bound is at or below ``chance + margin``; None without
    labels). ``text`` states it with its numbers and the finding ("above chance", "at or near chance")."""

    correct: int
    n: int
    accuracy: ConfidenceInterval
    chance: float
    near_chance: bool | None
    text: str


def accuracy_check(correct: Any, n_classes: int, *, level: float = 0.95,
                   margin: float = NEAR_CHANCE_MARGIN) -> AccuracyCheck:
    """Accuracy of ``correct`` (one bool per labelled image) against chance ``1 / n_classes``.

    The model is *at or near chance* when the Wilson interval's lower bound is <= chance + ``margin``:
    the images do not show it to beat guessing by more than ``margin``. On such a model an explanation
    has nothing learned to explain, so its sanity checks and rankings are not meaningful.
    """
    c = _as_numpy(correct).ravel()
    if n_classes < 1:
        raise InputError(f"n_classes: expected at least 1, got {n_classes}")
    chance = 1.0 / n_classes
    if c.size == 0:
        return AccuracyCheck(0, 0, ConfidenceInterval(math.nan, math.nan, math.nan), chance, None,
                             "accuracy unknown: no evaluated image has a label")
    k, n = int(c.sum()), int(c.size)
    ci = wilson_interval(k, n, level)
    near = bool(ci.low <= chance + margin)
    text = (f"accuracy {ci.estimate:.1%} ({k} of {n} images, {level:.0%} Wilson CI [{ci.low:.1%}, {ci.high:.1%}]), "
            f"chance {chance:.1%} ({n_classes} classes): "
            + (f"at or near chance (the interval's lower bound is not {100 * margin:.0f} points above chance)" if near
               else "above chance"))
    return AccuracyCheck(k, n, ci, chance, near, text)


# --------------------------------------------------------------------------- comparisons


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini & Hochberg (1995) step-up adjusted p-values (false discovery rate); NaN entries stay NaN:
    the i-th smallest of m becomes ``min over j >= i of m p_(j) / j``."""
    return _adjusted(p, lambda s: np.minimum.accumulate(s.size / np.arange(s.size, 0, -1) * s[::-1])[::-1])


def adjust_p(p: Any, correction: str = "holm") -> np.ndarray:
    """Adjusted p-values: ``"holm"`` (family-wise error, `holm`) or ``"bh"`` (false discovery rate,
    `benjamini_hochberg`)."""
    if correction not in CORRECTIONS:
        raise InputError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {correction!r}")
    return holm(p) if correction == "holm" else benjamini_hochberg(p)


CORRECTION_NAMES = {"holm": "Holm (1979)", "bh": "Benjamini–Hochberg (1995)"}


class PairedDifference(NamedTuple):
    """``statistic(a) - statistic(b)`` on the same images, its percentile interval and two-sided
    bootstrap p-value (floats, or arrays for a vector statistic)."""

    estimate: Any
    low: Any
    high: Any
    p: Any


def paired_bootstrap(statistic: Callable[[np.ndarray], Any], a: Any, b: Any, *, n_boot: int = 1000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Paired bootstrap over images of ``statistic(a) - statistic(b)`` (Efron & Tibshirani 1993, 16.4).

    ``a`` and ``b`` are [n_images, ...] with row i the same image on both sides; every resample draws
    one set of image indices (the draws of `bootstrap_ci` with ``seed``) and evaluates the statistic
    on both sides with it, so what the two sides share (the images) cancels in the difference. The
    statistic is vectorised as for `bootstrap_ci` (a ``weighted`` method is used when present).
    Interval: percentiles of the resampled differences at ``level``. p: two-sided, from the bootstrap
    standard error ``se`` (the standard deviation of the B finite resampled differences) and the normal
    approximation, ``p = 2 Phi(-|d| / se)`` (Efron & Tibshirani 1993, 16.4): unlike counting resamples
    beyond 0, its resolution does not stop at 2 / B, which a multiple-comparison correction over many
    comparisons needs. ``p < 1 - level`` is the normal interval ``d ± z se`` excluding 0; the
    percentile interval agrees where the resampled differences are close to normal. p = 1 when every
    resample gives the same difference 0, 0 when it is the same non-zero difference.
    """
    x, y = _as_numpy(a), _as_numpy(b)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"a, b: the same images are needed on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise InputError(f"a, b: need at least 2 images to bootstrap, got {x.shape[0]}")
    if not 0.0 < level < 1.0:
        raise InputError(f"level: expected 0 < level < 1, got {level}")
    index = np.random.default_rng(seed).integers(0, x.shape[0], (int(n_boot), x.shape[0]))
    raw = np.asarray(statistic(x[None]), dtype=np.float64) - np.asarray(statistic(y[None]), dtype=np.float64)
    scalar = raw.ndim <= 1
    theta = raw.reshape(-1)
    d = _evaluate(statistic, x, index, True) - _evaluate(statistic, y, index, True)  # [B, k]
    tail = (1.0 - level) / 2.0
    low, high, p = (np.full(theta.shape, np.nan) for _ in range(3))
    for j in range(theta.size):
        dj = d[:, j][np.isfinite(d[:, j])]
        if not np.isfinite(theta[j]) or dj.size < 2:
            continue
        low[j], high[j] = np.percentile(dj, [100 * tail, 100 * (1 - tail)])
        se = dj.std(ddof=1)
        p[j] = 2.0 * special.ndtr(-abs(theta[j]) / se) if se > 0 else float(theta[j] == 0)
    if scalar:
        return PairedDifference(float(theta[0]), float(low[0]), float(high[0]), float(p[0]))
    return PairedDifference(theta, low, high, p)


def compare_runs(results: Mapping[str, pd.DataFrame], *, level: float = 0.95, n_boot: int = 1000, seed: int = 0,
                 correction: str = "holm", alpha_level: str = "ordinal", ties: str = "average") -> pd.DataFrame:
    """Paired comparisons between runs (models or settings) on the images they share, per metric.

    ``results``: run name -> results table. For every pair of runs and every metric both have, on the
    images where every method both runs share has a score in both: the difference (a - b) in
    Krippendorff's alpha of the per-image method ranks (quantity "alpha") and in each method's mean
    score (quantity "mean", column method), by `paired_bootstrap` with the same image resamples for
    both runs. p-values are adjusted over every row of the table with ``correction`` (``"holm"`` or
    ``"bh"``); ``significant``: adjusted p < 1 - level, i.e. the interval at the corrected level
    excludes 0. Columns: run_a, run_b, metric, quantity, method, a, b, diff, low, high, p, p_adj,
    significant, n_images.
    """
    if correction not in CORRECTIONS:
        raise InputError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {correction!r}")
    names = list(results)
    rows: list[dict[str, Any]] = []
    for i, run_a in enumerate(names):
        for run_b in names[i + 1:]:
            ra, rb = results[run_a], results[run_b]
            for metric in [m for m in pd.unique(ra["metric"]) if m in set(rb["metric"])]:
                sa, sb = ra[ra["metric"] == metric], rb[rb["metric"] == metric]
                methods = [m for m in pd.unique(sa["method"]) if m in set(sb["method"])]
                images = [im for im in pd.unique(sa["image_id"]) if im in set(sb["image_id"])]
                xa, xb = _wide(sa, methods, images), _wide(sb, methods, images)
                keep = ~(np.isnan(xa).any(1) | np.isnan(xb).any(1))
                xa, xb = xa[keep], xb[keep]
                base = {"run_a": run_a, "run_b": run_b, "metric": metric, "n_images": int(keep.sum())}
                if len(methods) < 2 or xa.shape[0] < 2:
                    continue
                hib = bool(sa["higher_is_better"].iloc[0]) if "higher_is_better" in sa else True
                stat = AlphaStatistic(alpha_level)
                ka, kb = per_image_ranks(xa, hib, ties), per_image_ranks(xb, hib, ties)
                d = paired_bootstrap(stat, ka, kb, n_boot=n_boot, level=level, seed=seed)
                rows.append({**base, "quantity": "alpha", "method": None, "a": float(stat(ka[None])[0]),
                             "b": float(stat(kb[None])[0]), **d._asdict()})
                d = paired_bootstrap(MeanStatistic(), xa, xb, n_boot=n_boot, level=level, seed=seed)
                for k, method in enumerate(methods):
                    rows.append({**base, "quantity": "mean", "method": method, "a": float(xa[:, k].mean()),
                                 "b": float(xb[:, k].mean()), "estimate": d.estimate[k], "low": d.low[k],
                                 "high": d.high[k], "p": d.p[k]})
    columns = ["run_a", "run_b", "metric", "quantity", "method", "a", "b", "diff", "low", "high", "p", "p_adj",
               "significant", "n_images"]
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows).rename(columns={"estimate": "diff"})
    out["p_adj"] = adjust_p(out["p"].to_numpy(), correction)
    out["significant"] = np.isfinite(out["p_adj"]) & (out["p_adj"] < 1.0 - level)
    return out[columns]


# --------------------------------------------------------------------------- correlations over few units


@dataclass(frozen=True)
class Correlation:
    """A correlation over ``n`` units with its bootstrap interval and exact (or Monte Carlo)
    permutation p-value; ``conclusive`` is False below the minimum number of units, and ``text``
    says so ("too few models to conclude") instead of stating the value as a finding."""

    estimate: float
    low: float
    high: float
    p: float
    n: int
    method: str
    conclusive: bool
    text: str

    def __str__(self) -> str:
        return self.text


CORRELATIONS = {"spearman": "Spearman ρ", "pearson": "Pearson r", "kendall": "Kendall τ"}


def _corr(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Row-wise correlation of x, y [B, n] (NaN where a row is constant; `xaibench.stats` for Pearson
    and Spearman)."""
    if method == "kendall":
        return np.array([stats.kendalltau(a, b).statistic if np.ptp(a) and np.ptp(b) else np.nan for a, b in zip(x, y)])
    import torch

    from xaibench.stats import pearson_rows, spearman_rows

    rows = spearman_rows if method == "spearman" else pearson_rows
    as_tensor = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))  # noqa: E731
    return rows(as_tensor(x), as_tensor(y)).numpy()


def correlation_verdict(x: Any, y: Any, *, method: str = "spearman", level: float = 0.95, n_boot: int = 2000,
                        n_perm: int = 10000, seed: int = 0, unit: str = "models",
                        min_units: int = MIN_UNITS) -> Correlation:
    """Correlation of paired values over few units (models, methods), with its uncertainty.

    Interval: percentile bootstrap over the units (resamples in which either side is constant are
    left out). p: two-sided permutation test of no association, exact over all n! orders of ``y``
    for n <= 8, else ``n_perm`` random orders (seeded), counting ``|r*| >= |r|``. Below
    ``min_units`` units (default `MIN_UNITS` = 5: with 4 units the smallest exact two-sided
    p-value is 2/24 > 0.05, so no association could be shown) the verdict is "too few {unit} to
    conclude". Pairs with a NaN are left out.
    """
    if method not in CORRELATIONS:
        raise InputError(f"method: expected one of {', '.join(CORRELATIONS)}, got {method!r}")
    a, b = _as_numpy(x).ravel(), _as_numpy(y).ravel()
    if a.shape != b.shape:
        raise InputError(f"x, y: expected the same number of units, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    name = CORRELATIONS[method]
    r = float(_corr(a[None], b[None], method)[0]) if n >= 2 else math.nan
    low = high = p = math.nan
    if n >= 3 and np.isfinite(r):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, (n_boot, n))
        boot = _corr(a[idx], b[idx], method)
        boot = boot[np.isfinite(boot)]
        tail = (1 - level) / 2
        if boot.size >= 2:
            low, high = (float(v) for v in np.percentile(boot, [100 * tail, 100 * (1 - tail)]))
        if n <= 8:
            import itertools

            perms = np.array(list(itertools.permutations(range(n))))
        else:
            perms = np.argsort(rng.random((n_perm, n)), axis=1)
        null = _corr(np.broadcast_to(a, perms.shape), b[perms], method)
        p = float(np.mean(np.abs(null) >= abs(r) - 1e-12))
    stated = (f"{name} {r:.2f}, {level:.0%} bootstrap CI [{_num(low)}, {_num(high)}], permutation p = "
              f"{_num(p) if not np.isfinite(p) or p >= 0.01 else f'{p:.1g}'}, n = {n} {unit}")
    if not np.isfinite(r):
        text, conclusive = f"undefined (n = {n} {unit}: fewer than 2, or one side constant)", False
    elif n < min_units:
        text, conclusive = f"too few {unit} to conclude ({name} {r:.2f} over n = {n}; at least {min_units} needed)", False
    else:
        text, conclusive = stated, True
    return Correlation(r, low, high, p, n, method, conclusive, text)


# --------------------------------------------------------------------------- aggregation across metrics

CRITERIA = ("faithfulness", "robustness", "localisation", "complexity")


class MedianRankStatistic:
    """Median over metrics of each method's rank by mean score: data [n_images, n_metrics, n_methods] of
    goodness (higher = better) -> [n_methods] (vectorised over a leading resample axis)."""

    def __call__(self, data: np.ndarray) -> np.ndarray:
        means = data.mean(axis=-3)  # [..., n_metrics, n_methods]
        ranks = stats.rankdata(-means, axis=-1, method="average")
        return np.median(ranks, axis=-2)


@dataclass(frozen=True)
class CriterionAggregate:
    """What `aggregate_criteria` computes.

    - ``rankings``: criterion, method, median_rank (median over the criterion's metrics of the method's
      rank by mean score, 1 = best, ties averaged), low, high (percentile bootstrap over images),
      rank (1 = best median rank, "min" rule), n_metrics, n_images
    - ``agreement``: metric x metric Kendall tau-b of the method rankings by mean (direction-aware)
    - ``disagreements``: metric_a, metric_b, criterion_a, criterion_b, tau for every pair with tau < 0
      (the metrics order more method pairs the opposite way than the same way), most negative first
    - ``consensus``: criterion, metric, tau of the metric's ranking with its criterion's median ranks
    - ``notes``: metrics, methods or images left out and why
    """

    rankings: pd.DataFrame
    agreement: pd.DataFrame
    disagreements: pd.DataFrame
    consensus: pd.DataFrame
    level: float = 0.95
    notes: tuple[str, ...] = field(default_factory=tuple)


def aggregate_criteria(
    results: pd.DataFrame,
    *,
    categories: Mapping[str, str] | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> CriterionAggregate:
    """Per criterion, one ranking of the methods over that criterion's metrics (Klein et al. 2024, LATEC:
    single metrics disagree too often to rank methods alone), and where metrics disagree.

    A metric's criterion is ``categories[metric]``, else the ``category`` column of ``results`` (the
    metric's `MetricInfo.category`); only `CRITERIA` are aggregated. Per criterion: each metric ranks
    the methods by their mean score over images (direction-aware, ties averaged); a method's
    aggregate is the median of its ranks over the metrics; the interval resamples the images (the
    same resample for every metric of the criterion, ``n_boot`` draws with ``seed``, percentile
    interval at ``level``). It uses the methods scored by every metric of the criterion and the
    images on which all of them have a score for every such method. The agreement matrix and the
    disagreements cover every metric of ``results``.
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"level: expected 0 < level < 1, got {level}")
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise InputError(f"results: missing column(s) {', '.join(missing)}; load them with xaibench.load_results")
    notes: list[str] = []
    metrics = list(pd.unique(results["metric"]))
    if categories is None:
        if "category" not in results.columns:
            raise InputError("results: no category column; pass categories={metric: criterion}")
        categories = results.groupby("metric", sort=False)["category"].first().to_dict()
    unknown = [m for m in metrics if m not in categories]
    if unknown:
        raise InputError(f"categories: no criterion for metric(s) {', '.join(map(str, unknown))}")
    if "higher_is_better" in results.columns:
        direction = results.groupby("metric", sort=False)["higher_is_better"].first().astype(bool).to_dict()
    else:
        direction = {m: True for m in metrics}
        notes.append("no higher_is_better column: every metric is taken as higher-is-better")
    sign = {m: 1.0 if direction[m] else -1.0 for m in metrics}
    groups = dict(tuple(results.groupby("metric", sort=False)))

    goodness: dict[str, pd.Series] = {}
    for metric in metrics:
        means = groups[metric].groupby("method", sort=False)["score"].mean().dropna() * sign[metric]
        if len(means):
            goodness[metric] = means
    agreement = _agreement(goodness)

    other = [m for m in metrics if categories[m] not in CRITERIA]
    if other:
        notes.append(f"not aggregated (criterion not one of {', '.join(CRITERIA)}): {', '.join(f'{m} ({categories[m]})' for m in other)}")
    rank_rows, consensus_rows = [], []
    for criterion in CRITERIA:
        members = [m for m in metrics if categories[m] == criterion]
        if not members:
            continue
        methods = [m for m in pd.unique(results["method"])
                   if all(m in set(groups[k]["method"]) for k in members)]
        if len(methods) < 2:
            notes.append(f"{criterion}: fewer than 2 methods scored by all its metrics; not aggregated")
            continue
        tables = [groups[k].groupby(["image_id", "method"], sort=False)["score"].mean().unstack("method")
                  .reindex(columns=methods) * sign[k] for k in members]
        images = tables[0].index
        for t in tables[1:]:
            images = images.intersection(t.index)
        cube = np.stack([t.reindex(images).to_numpy(dtype=np.float64) for t in tables], axis=1)  # [n, M, K]
        complete = ~np.isnan(cube).any(axis=(1, 2))
        if int((~complete).sum()):
            notes.append(f"{criterion}: {int((~complete).sum())} of {len(images)} shared images lack a score; left out")
        cube = cube[complete]
        if cube.shape[0] < 2:
            notes.append(f"{criterion}: fewer than 2 images scored by all its metrics and methods; not aggregated")
            continue
        ci = bootstrap_ci(MedianRankStatistic(), cube, n_boot=n_boot, level=level, seed=seed, method="percentile")
        median = np.asarray(ci.estimate)
        order = pd.Series(median).rank(method="min").astype(int).to_numpy()
        for k, method in enumerate(methods):
            rank_rows.append({"criterion": criterion, "method": method, "median_rank": float(median[k]),
                              "low": float(ci.low[k]), "high": float(ci.high[k]), "rank": int(order[k]),
                              "n_metrics": len(members), "n_images": int(cube.shape[0])})
        for j, metric in enumerate(members):
            tau = stats.kendalltau(cube[:, j].mean(0), -median).statistic
            consensus_rows.append({"criterion": criterion, "metric": metric, "tau": float(tau)})

    pairs = []
    for i, a in enumerate(agreement.index):
        for b in agreement.index[i + 1:]:
            tau = agreement.loc[a, b]
            if np.isfinite(tau) and tau < 0:
                pairs.append({"metric_a": a, "metric_b": b, "criterion_a": categories[a],
                              "criterion_b": categories[b], "tau": float(tau)})
    disagreements = pd.DataFrame(pairs, columns=["metric_a", "metric_b", "criterion_a", "criterion_b", "tau"])
    return CriterionAggregate(
        rankings=pd.DataFrame(rank_rows, columns=["criterion", "method", "median_rank", "low", "high", "rank",
                                                  "n_metrics", "n_images"]),
        agreement=agreement,
        disagreements=disagreements.sort_values("tau", kind="stable").reset_index(drop=True),
        consensus=pd.DataFrame(consensus_rows, columns=["criterion", "metric", "tau"]),
        level=level, notes=tuple(notes))
