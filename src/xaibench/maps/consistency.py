"""Comparing image-level behaviour: consistency with observers, best model, best method (MAPS).

- `bootstrap_spearman(x, y)`: Spearman correlation across images, bootstrapped over images
  (resampled with replacement, `seed`); returns the bootstrap mean and a percentile interval.
- `consistency(model_i1, observer_i1, reliability)`: that bootstrap mean divided by
  ``sqrt(reliability)`` of the observer (the noise ceiling; a model's I1 is deterministic), with the
  interval scaled alike. MAPS' ``get_best_model`` does exactly this.
- `rank_models`: consistency of every model's clean-image I1 with the observer; the best model is
  the most consistent one.
- `half_splits`, `reference_models`: MAPS' best-method proxy first picks, for each target model,
  the reference model whose clean I1 correlates best with the target's (Spearman, averaged over
  random half-splits of the images, on the first halves).
- `method_proxy`: for each target model, method and split, Spearman over the split's first half
  between the target's and its reference's I1 on EMIs made from the *reference's* maps (MAPS uses
  percentile 75); a method's score is the median over splits and target models (`best_method`).
- `proxy_vs_ground_truth`: Spearman across methods between the proxy and the ground truth (map
  agreement between target and reference, `similarity.inverse_l2` averaged over images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from xaibench.checks import check_count, check_number
from xaibench.errors import InputError
from xaibench.stats import spearman_rows


def _vectors(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"behaviour vectors differ in length: {x.size} and {y.size} images")
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        raise InputError(f"a correlation needs at least 3 pairs with finite values, got {int(keep.sum())}")
    return x[keep], y[keep]


@dataclass(frozen=True)
class Estimate:
    """A bootstrap estimate: mean over resamples and a percentile interval at `level` %."""

    value: float
    low: float
    high: float
    level: float


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, *, n_boot: int = 5000, level: float = 95.0,
                       seed: int = 0) -> Estimate:
    """Spearman correlation across images, bootstrapped over images (all resamples in one pass);
    `n_boot` >= 1 resamples, interval `level` in (0, 100] percent."""
    x, y = _vectors(x, y)
    check_count(n_boot, "n_boot")
    check_number(level, "level", 0.0, 100.0, open_low=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    rho = spearman_rows(torch.from_numpy(x[idx]), torch.from_numpy(y[idx])).numpy()
    tail = (100.0 - level) / 2
    return Estimate(float(np.nanmean(rho)), float(np.nanpercentile(rho, tail)),
                    float(np.nanpercentile(rho, 100 - tail)), level)


UNRELIABLE = "the observer's split-half reliability is not positive: no noise ceiling to correct by"


def consistency(model_i1: np.ndarray, observer_i1: np.ndarray, reliability: float, *, n_boot: int = 5000,
                level: float = 95.0, seed: int = 0) -> Estimate:
    """Noise-corrected consistency: bootstrap mean Spearman / sqrt(observer reliability).

    Undefined (NaN, see `UNRELIABLE`) when the reliability is not positive, as happens with too few
    trials or an observer who is right on nearly every image.
    """
    if isinstance(reliability, bool) or not isinstance(reliability, (int, float, np.floating)):
        raise InputError(f"reliability must be a number (the observer's split-half reliability), got {reliability!r}")
    if reliability > 1:
        raise InputError(f"reliability must be at most 1 (a split-half reliability), got {reliability}")
    if not np.isfinite(reliability) or reliability <= 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, level)
    est = bootstrap_spearman(model_i1, observer_i1, n_boot=n_boot, level=level, seed=seed)
    ceiling = float(np.sqrt(reliability))
    return Estimate(est.value / ceiling, est.low / ceiling, est.high / ceiling, level)


def rank_models(clean_i1: Mapping[str, np.ndarray], observer_i1: np.ndarray, reliability: float, *,
                n_boot: int = 5000, level: float = 95.0, seed: int = 0) -> pd.DataFrame:
    """One row per model (model, mean I1, consistency, low, high, nan_reason), most consistent first."""
    _models(clean_i1, 1)
    rows = []
    for name, values in clean_i1.items():
        est = consistency(values, observer_i1, reliability, n_boot=n_boot, level=level, seed=seed)
        rows.append({"model": name, "mean_i1": float(np.nanmean(values)), "consistency": est.value,
                     "low": est.low, "high": est.high, "nan_reason": None if np.isfinite(est.value) else UNRELIABLE})
    return pd.DataFrame(rows).sort_values("consistency", ascending=False, ignore_index=True, na_position="last")


def half_splits(n_images: int, repeats: int = 20, *, seed: int = 11) -> list[tuple[np.ndarray, np.ndarray]]:
    """`repeats` random splits of the images into two halves (sorted indices), as MAPS draws them."""
    check_count(n_images, "n_images", 2)
    check_count(repeats, "repeats")
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(repeats):
        first = np.sort(rng.choice(n_images, n_images // 2, replace=False))
        splits.append((first, np.setdiff1d(np.arange(n_images), first)))
    return splits


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    x, y = _vectors(x, y)
    return float(spearmanr(x, y).statistic)


def reference_models(clean_i1: Mapping[str, np.ndarray], splits: Sequence[tuple[np.ndarray, np.ndarray]]
                     ) -> dict[str, str]:
    """For each target model, the other model whose clean I1 correlates best with it (first halves)."""
    _models(clean_i1, 2)
    _splits(splits)
    names = list(clean_i1)
    refs = {}
    for target in names:
        scores = {ref: np.mean([_spearman(clean_i1[target][s], clean_i1[ref][s]) for s, _ in splits])
                  for ref in names if ref != target}
        refs[target] = max(scores, key=scores.__getitem__)
    return refs


def method_proxy(emi_i1: Mapping[tuple[str, str, str], np.ndarray], references: Mapping[str, str],
                 methods: Sequence[str], splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Proxy rows (target, reference, method, split, proxy).

    ``emi_i1[(source, method, model)]`` is `model`'s I1 on EMIs made from `source`'s maps by `method`.
    """
    if not references or not methods:
        raise InputError("method_proxy needs at least one target model (references) and one method")
    _splits(splits)
    rows = []
    for target, ref in references.items():
        for method in methods:
            key_t, key_r = (ref, method, target), (ref, method, ref)
            for key in (key_t, key_r):
                if key not in emi_i1:
                    raise InputError(f"no I1 of model {key[2]!r} on EMIs of {key[0]!r}'s {key[1]!r} maps")
            for k, (first, _) in enumerate(splits):
                rows.append({"target": target, "reference": ref, "method": method, "split": k,
                             "proxy": _spearman(emi_i1[key_t][first], emi_i1[key_r][first])})
    return pd.DataFrame(rows)


def best_method(proxy: pd.DataFrame) -> pd.DataFrame:
    """Methods by the median proxy over splits and target models, best first."""
    _columns(proxy, "proxy", ("method", "proxy"))
    return (proxy.groupby("method")["proxy"].median().rename("median_proxy").sort_values(ascending=False)
            .reset_index())


def proxy_vs_ground_truth(proxy: pd.DataFrame, ground_truth: pd.DataFrame) -> float:
    """Spearman across methods between the median proxy and the mean ground truth (column ``agreement``)."""
    _columns(ground_truth, "ground_truth", ("method", "agreement"))
    merged = best_method(proxy).merge(ground_truth.groupby("method")["agreement"].mean().reset_index(), on="method")
    return _spearman(merged["median_proxy"].to_numpy(), merged["agreement"].to_numpy())


def _models(clean_i1: Mapping[str, np.ndarray], least: int) -> None:
    if not isinstance(clean_i1, Mapping) or len(clean_i1) < least:
        raise InputError(f"clean_i1 must map model names to I1 vectors, with at least {least} model(s); got "
                         f"{len(clean_i1) if isinstance(clean_i1, Mapping) else type(clean_i1).__name__}")


def _splits(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    if len(splits) == 0:
        raise InputError("splits is empty: pass half_splits(n_images) (at least one split)")


def _columns(frame: pd.DataFrame, name: str, needed: tuple[str, ...]) -> None:
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise InputError(f"{name} must be a non-empty table with columns {', '.join(needed)}")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks column(s) {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})")
