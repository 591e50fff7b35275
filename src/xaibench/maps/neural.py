"""Neural predictivity (as MAPS uses it): how well a layer's features predict recorded neurons.

`neural_predictivity(features, responses)`: K-fold cross-validated linear regression (scikit-learn
ridge with built-in CV over alphas, or PLS with `n_components`) from features [N, F] to responses;
returns the explained variance of every neuron on the held-out images (predictions of all folds
pooled, ``1 - SSE / SST``). With repeated recordings [R, N, neurons] the responses are averaged over
repetitions and each neuron's explained variance is divided by its split-half reliability
(Spearman-Brown corrected, averaged over random splits of the repetitions): the noise ceiling.
Neurons whose reliability is not positive get NaN.
"""

from __future__ import annotations

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from xaibench.checks import check_count
from xaibench.errors import InputError
from xaibench.maps.behaviour import spearman_brown

ALPHAS = tuple(10.0**k for k in range(-3, 6))


def neuron_reliability(responses: np.ndarray, *, repeats: int = 10, seed: int = 0) -> np.ndarray:
    """Per-neuron split-half reliability of repeated responses [R, N, neurons] (R >= 2)."""
    r = _array(responses, "responses")
    if r.ndim != 3 or r.shape[0] < 2 or 0 in r.shape:
        raise InputError(f"repeated responses must be [repetitions >= 2, images, neurons], got {r.shape}")
    if not np.isfinite(r).all():
        raise InputError("responses must be finite (no NaN or Inf)")
    check_count(repeats, "repeats")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        order = rng.permutation(r.shape[0])
        a, b = r[order[: r.shape[0] // 2]].mean(0), r[order[r.shape[0] // 2 :]].mean(0)
        a, b = a - a.mean(0), b - b.mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0)))
    return spearman_brown(np.nanmean(values, axis=0))


def neural_predictivity(features: np.ndarray, responses: np.ndarray, *, method: str = "ridge",
                        n_components: int = 25, folds: int = 10, seed: int = 0) -> np.ndarray:
    """Cross-validated explained variance per neuron (noise-corrected for repeated recordings)."""
    x = _array(features, "features")
    if x.ndim < 2 or 0 in x.shape:
        raise InputError(f"features must be [images, features...] with at least one of each, got shape {x.shape}")
    x = x.reshape(len(x), -1)
    y = _array(responses, "responses")
    check_count(n_components, "n_components")
    check_count(folds, "folds", 2)
    if folds > x.shape[0]:
        raise InputError(f"folds={folds} exceeds the number of images ({x.shape[0]}); use fewer folds")
    ceiling = None
    if y.ndim == 3:
        ceiling = neuron_reliability(y, seed=seed)
        y = y.mean(0)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise InputError(f"responses must be [images, neurons] or [repetitions, images, neurons] for "
                         f"{x.shape[0]} images, got shape {np.shape(responses)}")
    if method not in ("ridge", "pls"):
        raise InputError(f"method must be 'ridge' or 'pls', got {method!r}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("features and responses must be finite")
    pred = np.empty_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        mean, std = x[train].mean(0), x[train].std(0) + 1e-8
        if method == "ridge":
            model = RidgeCV(alphas=ALPHAS)
        else:
            model = PLSRegression(n_components=min(n_components, len(train) - 1, x.shape[1]), scale=False)
        model.fit((x[train] - mean) / std, y[train])
        pred[test] = model.predict((x[test] - mean) / std).reshape(len(test), -1)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ev = 1.0 - ((y - pred) ** 2).sum(0) / sst
        if ceiling is not None:
            ev = np.where(ceiling > 0, ev / ceiling, np.nan)
    return ev


def _array(values: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric array, got {type(values).__name__}") from None
