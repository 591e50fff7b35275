"""Pixel flipping (Bach et al.), region perturbation (Samek et al.), AOPC and ABPC.

All rank features by attribution with `xaibench.perturbation.engine` (stable sort, ties by flat
index, signed attributions) and replace them cumulatively with a baseline (default ``black`` = 0;
note Quantus's ``"black"`` is the image minimum, pass ``perturb_baseline=0.0`` there to compare).
Curves [B, K+1] hold the target's score after 0..K steps (step 0 = unperturbed image).

- ``pixel_flipping``: ``features_per_step`` pixels per step in MoRF order until every pixel is
  flipped (Quantus PixelFlipping flips ``features_in_step`` elements of the [C, H, W] array;
  ``features_in_step = C * features_per_step`` is the same schedule). Score: trapezoid area of
  the curve WITHOUT step 0, ``dx=1`` (Quantus ``return_auc_per_sample=True``); lower is better.
- ``region_perturbation``: ``patch_size`` square regions ranked by their attribution sum,
  perturbed one region per step for ``regions_evaluation`` steps in ``order`` (morf / lerf /
  random). Quantus returns the drops ``s_0 - s_k`` for k = 1..R; the score here is their AOPC
  ``mean_{k=0..R} (s_0 - s_k)`` (Samek et al.'s AOPC of one image).
- ``aopc``: the same AOPC on an evenly spaced schedule of ``steps`` steps over all features
  (pixels or patches), so the cost does not depend on the image size.
- ``abpc``: area between the LeRF and MoRF curves, trapezoid with ``dx = 1/steps``
  (Schulz et al., 2020); higher is better.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaibench.metrics.base import MetricInfo, MetricResult, info_of, metric_params, register_metric
from xaibench.passes import Passes
from xaibench.perturbation.curves import trapezoid
from xaibench.perturbation.engine import perturbation_curves, prepare, rank_features, step_counts

_REQ = ("model", "inputs", "attributions", "targets")
_BACH = (
    "Bach et al. On pixel-wise explanations for non-linear classifier decisions by layer-wise relevance "
    "propagation. PLoS ONE 2015.",
)
_SAMEK = (
    "Samek et al. Evaluating the visualization of what a deep neural network has learned. IEEE TNNLS 2017.",
)


def _granularity(patch_size: int) -> str:
    return "patch" if patch_size > 1 else "pixel"


def _curves(
    model: nn.Module, x: Tensor, a: Tensor, t: Tensor, *, order: str, patch_size: int, resample: str,
    baseline: str, baseline_params: dict[str, Any] | None, output: str, max_batch: int,
    seed: int | torch.Generator | None, steps: int | None = None, features_per_step: int | None = None,
    max_steps: int | None = None,
) -> Tensor:
    ranking = rank_features(
        a, x.shape[-2:], order=order, granularity=_granularity(patch_size), patch_size=patch_size,
        resample=resample, seed=seed,
    )
    counts = step_counts(ranking.num_features, steps=steps, features_per_step=features_per_step)
    if max_steps is not None:
        counts = counts[:, : max_steps + 1]
    return perturbation_curves(
        model, x, t, ranking, counts, mode="delete", baseline=baseline, baseline_params=baseline_params,
        output=output, max_batch=max_batch, seed=seed,
    )


def _aopc(curves: Tensor) -> Tensor:
    return (curves[:, :1].double() - curves.double()).mean(dim=1)


@register_metric(
    MetricInfo(
        name="pixel_flipping",
        category="faithfulness",
        higher_is_better=False,
        range=(float("-inf"), float("inf")),
        requires=_REQ,
        cost=Passes(forwards="ceil(H * W / features_per_step) + 1"),
        references=_BACH,
        description="Area under the target score while pixels are flipped to the baseline in MoRF order.",
        ranks_map=True,
    )
)
def pixel_flipping(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    features_per_step: int = 1,
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    resample: str = "upsample",
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Pixel-flipping curve and its area (Quantus's AUC of the curve without step 0)."""
    params = metric_params(locals())
    x, a, t = prepare(model, inputs, attributions, targets)
    curves = _curves(model, x, a, t, order="morf", patch_size=1, **params)
    return MetricResult(trapezoid(curves[:, 1:]).float(), info_of(pixel_flipping), params, curves)


@register_metric(
    MetricInfo(
        name="region_perturbation",
        category="faithfulness",
        higher_is_better=True,
        range=(float("-inf"), float("inf")),
        requires=_REQ,
        cost=Passes(forwards="min(regions_evaluation, ceil(H/patch_size) * ceil(W/patch_size)) + 1"),
        references=_SAMEK,
        description="AOPC while square regions are perturbed one by one in MoRF / LeRF / random order.",
        ranks_map=True,
    )
)
def region_perturbation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    resample: str = "upsample",
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """AOPC of region perturbation; ``extras["drops"]`` = s_0 - s_k, k=1..R (Quantus's curve).

    Higher is better for ``order="morf"``; for ``"lerf"`` lower is better.
    """
    params = metric_params(locals())
    x, a, t = prepare(model, inputs, attributions, targets)
    curves = _curves(model, x, a, t, order=order, patch_size=patch_size, resample=resample, baseline=baseline,
                     baseline_params=baseline_params, output=output, max_batch=max_batch, seed=seed,
                     features_per_step=1, max_steps=regions_evaluation)
    drops = (curves[:, :1] - curves[:, 1:]).float()
    return MetricResult(_aopc(curves).float(), info_of(region_perturbation), params, curves,
                        extras={"drops": drops})


@register_metric(
    MetricInfo(
        name="aopc",
        category="faithfulness",
        higher_is_better=True,
        range=(float("-inf"), float("inf")),
        requires=_REQ,
        cost=Passes(forwards="steps + 1"),
        references=_SAMEK,
        description="Area over the perturbation curve: mean drop of the target score over evenly spaced MoRF steps.",
        ranks_map=True,
    )
)
def aopc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    steps: int = 20,
    patch_size: int = 1,
    order: str = "morf",
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    resample: str = "rank_native",
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """``mean_{k=0..steps} (s_0 - s_k)`` on ``floor(k * F / steps)`` perturbed features."""
    params = metric_params(locals())
    x, a, t = prepare(model, inputs, attributions, targets)
    curves = _curves(model, x, a, t, **params)
    return MetricResult(_aopc(curves).float(), info_of(aopc), params, curves)


@register_metric(
    MetricInfo(
        name="abpc",
        category="faithfulness",
        higher_is_better=True,
        range=(float("-inf"), float("inf")),
        requires=_REQ,
        cost=Passes(forwards="2 * (steps + 1)"),
        references=(
            "Schulz, Sixt, Tombari, Landgraf. Restricting the Flow: Information Bottlenecks for Attribution. ICLR 2020.",
        ),
        description="Area between the LeRF and MoRF deletion curves.",
        ranks_map=True,
    )
)
def abpc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    steps: int = 20,
    patch_size: int = 1,
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    resample: str = "rank_native",
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """``trapezoid(lerf - morf, dx=1/steps)``; curves = MoRF, ``extras["lerf"]`` = LeRF curve."""
    params = metric_params(locals())
    x, a, t = prepare(model, inputs, attributions, targets)
    morf = _curves(model, x, a, t, order="morf", **params)
    lerf = _curves(model, x, a, t, order="lerf", **params)
    score = trapezoid(lerf - morf, 1.0 / steps).float()
    return MetricResult(score, info_of(abpc), params, morf, extras={"lerf": lerf})
