"""Deletion and insertion (Petsiuk et al., RISE, 2018): scores while features are removed / revealed.

Both rank the features of the map in MoRF order (maps resized bilinearly to the input by
default, ``resample="upsample"``) and take ``steps`` cumulative steps. Features
(``granularity``): ``"pixel"``, ``"patch"`` (``patch_size`` squares, scored by their attribution
sum) or ``"superpixel"`` (SLIC with ``n_segments`` / ``compactness``, or the caller's
``segments`` [B, H, W]; scored by their mean attribution). ``granularity=None`` (default) means
``"patch"`` when ``patch_size > 1``, else ``"pixel"``. Maps finer than the input are an error. Curves [B, steps+1]: deletion starts from the image, insertion from the full
baseline. Score: the trapezoid area over the steps+1 points with ``dx = 1 / steps``.

- ``normalize="original"`` reproduces autotimm's ExplanationMetrics: ``k * (F // steps)``
  features after step k (the last step leaves ``F mod steps`` features untouched), area divided
  by the score of the unperturbed image (NaN where it is <= 0); ``final_drop = (s_orig - s_K) /
  s_orig``; ``final_rise = (s_K - s_0) / |s_orig - s_0|`` (s_0 = baseline score; autotimm 0.7.37
  divides by the absolute value). Where ``|s_orig - s_0| < 1e-6`` autotimm reports 0; here
  ``final_rise`` is NaN (the rise is undefined). For insertion the unperturbed image costs one
  more forward. Dividing by a tiny score inflates the area (up to ``1 / s_orig``: 19,722 for a
  class of probability 5e-5), so a score below `SMALL_SCORE` gives a warning naming the images.
- ``normalize=None``: ``floor(k * F / steps)`` features after step k (all at the last step) and
  the raw area (Petsiuk et al.; Gomez et al.'s DAUC / IAUC); ``final_drop = s_0 - s_K``,
  ``final_rise = s_K - s_0``.

``autocast="bfloat16"`` (or ``"float16"``) runs the model's forwards in mixed precision (scores and
areas stay float32; tolerance against float32 in docs/metrics-faithfulness.md); None (default)
leaves the forwards as they are.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, metric_params, nan_reasons, register_metric
from xaibench.passes import Passes
from xaibench.perturbation.curves import trapezoid
from xaibench.perturbation.forward import class_scores
from xaibench.perturbation.engine import (
    GRANULARITIES,
    perturbation_curves,
    prepare,
    rank_features,
    step_counts,
    superpixel_segments,
)

SMALL_SCORE = 0.01  # normalising by a score below this inflates the area (up to 1 / score)


def warn_small_original(what: str, original: Tensor) -> None:
    """Warn when scores are normalised by an unperturbed score in (0, `SMALL_SCORE`): the explained
    class is one the model finds unlikely, and dividing by its score inflates the result."""
    small = (original > 0) & (original < SMALL_SCORE)
    if not bool(small.any()):
        return
    idx = small.nonzero().flatten().tolist()
    warnings.warn(
        f"{what}: the explained class scores below {SMALL_SCORE} on {len(idx)} image(s) {idx[:10]} (lowest "
        f"{float(original[small].min()):.3g}); normalising by that score inflates the result up to 1 / score. "
        "Explain a class the model finds likely (the predicted one), or do not normalise (normalize=None).",
        UserWarning, stacklevel=3,
    )


_REFS = (
    "Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of Black-box Models. BMVC 2018.",
)


def _run(
    mode: str,
    info: MetricInfo,
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    params: dict[str, Any],
) -> MetricResult:
    if params["normalize"] not in ("original", None):
        raise InputError(f"normalize must be 'original' or None, got {params['normalize']!r}")
    x, a, t = prepare(model, inputs, attributions, targets)
    patch = params["patch_size"]
    granularity = params["granularity"] or ("patch" if patch > 1 else "pixel")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES} or None, got {granularity!r}")
    segments = params["segments"]
    params["segments"] = None if segments is None else "given"
    if granularity == "superpixel" and segments is None:
        segments = superpixel_segments(x, n_segments=params["n_segments"], compactness=params["compactness"])
    ranking = rank_features(
        a, x.shape[-2:], order="morf", granularity=granularity,
        patch_size=patch, resample=params["resample"], segments=segments,
    )
    steps = params["steps"]
    counts = step_counts(ranking.num_features, steps=steps)
    if params["normalize"] == "original":
        counts = torch.arange(steps + 1, device=counts.device)[None, :] * (ranking.num_features[:, None] // steps)
    curves = perturbation_curves(
        model, x, t, ranking, counts, mode=mode,
        baseline=params["baseline"], baseline_params=params["baseline_params"], output=params["output"],
        max_batch=params["max_batch"], seed=params["seed"], autocast=params["autocast"],
    )
    area = trapezoid(curves, 1.0 / params["steps"])
    change = curves[:, 0] - curves[:, -1] if mode == "delete" else curves[:, -1] - curves[:, 0]
    change = change.double()
    reasons = None
    if params["normalize"] == "original":
        original = curves[:, 0] if mode == "delete" else class_scores(model, x, t, output=params["output"],
                                                                       max_batch=params["max_batch"],
                                                                       autocast=params["autocast"])
        warn_small_original(info.name, original)
        bad = original <= 0
        denom = original.double().masked_fill(bad, float("nan"))
        area = area / denom
        if mode == "delete":
            change = change / denom
        else:
            gap = (original.double() - curves[:, 0].double()).abs()
            change = torch.where(gap < 1e-6, float("nan"), change / gap.clamp_min(1e-6))
        reasons = nan_reasons(bad, "score of the unperturbed image is <= 0; normalize='original' is undefined")
    key = "final_drop" if mode == "delete" else "final_rise"
    return MetricResult(area.float(), info, params, curves, reasons, {key: change.float()})


@register_metric(
    MetricInfo(
        name="deletion",
        category="faithfulness",
        higher_is_better=False,
        range=(0.0, float("inf")),
        requires=("model", "inputs", "attributions", "targets"),
        cost=Passes(forwards="steps + 1"),
        references=_REFS,
        description="Area under the target score while the most relevant features are removed.",
        ranks_map=True,
    )
)
def deletion(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    steps: int = 50,
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    granularity: str | None = None,
    patch_size: int = 1,
    segments: Tensor | None = None,
    n_segments: int = 100,
    compactness: float = 10.0,
    resample: str = "upsample",
    output: str = "softmax",
    normalize: str | None = "original",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
    autocast: str | None = None,
) -> MetricResult:
    """Deletion AUC (lower is better); see the module doc."""
    params = metric_params(locals())
    return _run("delete", info_of(deletion), model, inputs, attributions, targets, params)


@register_metric(
    MetricInfo(
        name="insertion",
        category="faithfulness",
        higher_is_better=True,
        range=(0.0, float("inf")),
        requires=("model", "inputs", "attributions", "targets"),
        cost=Passes(forwards="steps + 1", note="+ 1 with normalize='original'"),
        references=_REFS,
        description="Area under the target score while the most relevant features are revealed on the baseline.",
        ranks_map=True,
    )
)
def insertion(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    steps: int = 50,
    baseline: str = "gaussian_blur",
    baseline_params: dict[str, Any] | None = None,
    granularity: str | None = None,
    patch_size: int = 1,
    segments: Tensor | None = None,
    n_segments: int = 100,
    compactness: float = 10.0,
    resample: str = "upsample",
    output: str = "softmax",
    normalize: str | None = "original",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
    autocast: str | None = None,
) -> MetricResult:
    """Insertion AUC (higher is better); see the module doc."""
    params = metric_params(locals())
    return _run("insert", info_of(insertion), model, inputs, attributions, targets, params)
