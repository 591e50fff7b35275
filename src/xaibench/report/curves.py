"""The report's curve panels: per metric, the mean curve per method on the x axis of what was perturbed.

Curves are stored raw (the model's score after each step, or the similarity after each randomised
layer). Deletion and insertion run with ``normalize="original"`` (autotimm's convention) divide
their score by the unperturbed image's class score; their curves are divided by the same number
here, recovered exactly from the stored score as ``area(curve) / score``, so the plotted curve
integrates to the score in the tables.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from xaibench.report.plots import CurvePanel

_UNITS = {"pixel": "pixels", "patch": "patches", "superpixel": "superpixels"}


def _unit(params: dict[str, Any]) -> str:
    granularity = params.get("granularity") or ("patch" if int(params.get("patch_size", 1) or 1) > 1 else "pixel")
    return _UNITS.get(str(granularity), str(granularity))


def _axis(name: str, params: dict[str, Any], points: int) -> tuple[list, str, str]:
    """(x values, x label, y label) of a metric's curve with `points` entries."""
    output = params.get("output", "softmax")
    score = f"class score ({output})"
    if name in ("deletion", "insertion"):
        verb = "removed" if name == "deletion" else "revealed"
        ylabel = "score / unperturbed score" if params.get("normalize") == "original" else score
        return list(np.linspace(0, 1, points)), f"fraction of {_unit(params)} {verb} (most relevant first)", ylabel
    if name == "road":
        pct = [float(p) for p in params.get("percentages", [])]
        x = [0.0, *pct] if len(pct) + 1 == points else list(np.linspace(0, 100, points))
        return x, "% of pixels removed and imputed (ROAD, most relevant first)", score
    if name == "model_parameter_randomisation":
        layers = params.get("layers")
        x = [str(n) for n in layers] if isinstance(layers, list) and len(layers) == points else [str(i + 1) for i in range(points)]
        order = str(params.get("order", "top_down")).replace("_", "-")
        return x, f"layers randomised ({order}, cumulative)", "similarity to the original map"
    if name in ("pixel_flipping", "region_perturbation", "aopc"):
        return list(range(points)), f"perturbation step (of {_unit(params)}, most relevant first)", score
    return list(range(points)), "step", "value"


def _trapezoid(values: np.ndarray, dx: float) -> np.ndarray:
    return dx * (values.sum(axis=1) - (values[:, 0] + values[:, -1]) / 2)


def curve_panels(curves: pd.DataFrame, results: pd.DataFrame, params: dict[str, dict[str, Any]]) -> list[CurvePanel]:
    """One `CurvePanel` per metric with curves (see the module doc for the normalisation)."""
    if curves.empty:
        return []
    first = results.drop_duplicates("metric").set_index("metric")
    scores = results.set_index(["image_id", "method", "metric"])["score"]
    panels = []
    for metric, sub in curves.groupby("metric", sort=False):
        lengths = sub["curve"].map(len)
        sub = sub[lengths == lengths.max()]
        values = np.array([np.asarray(c, dtype=float) for c in sub["curve"]])
        name = str(first["metric_name"].get(metric, metric)) if "metric_name" in first else str(metric)
        p = params.get(metric, {})
        if name in ("deletion", "insertion") and p.get("normalize") == "original" and values.shape[1] > 1:
            key = pd.MultiIndex.from_arrays([sub["image_id"], sub["method"], sub["metric"]])
            score = scores.reindex(key).to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                original = _trapezoid(values, 1.0 / (values.shape[1] - 1)) / score
            original[~np.isfinite(original) | (original <= 0)] = np.nan
            values = values / original[:, None]
        x, xlabel, ylabel = _axis(name, p, values.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a method without any defined point: NaN
            means = {m: np.nanmean(values[(sub["method"] == m).to_numpy()], axis=0)
                     for m in dict.fromkeys(sub["method"])}
        panels.append(CurvePanel(str(metric), x, xlabel, ylabel, means))
    return panels
