"""IROF: Iterative Removal Of Features (Rieger & Hansen, 2020), as Quantus IROF.

The image is split into SLIC superpixels (scikit-image, ``n_segments=100``, ``compactness=10``,
``start_label=0``: Quantus's defaults), or `segments` [B, H, W] given by the caller. Superpixels
are ranked by their MEAN attribution (MoRF, ties by label) and removed cumulatively, one per step,
replaced by the baseline (default ``"mean"``: per-image, per-channel mean of the original image).
Curves [B, S+1] hold the target score after 0..S removals (images with fewer superpixels repeat
their last value). Score: the area over the curve normalised by the original score,
``S_b - trapezoid(curve[1:S_b+1] / curve[0], dx=1)`` (Quantus; in [0, S_b] for probabilities;
higher is better). ``extras["normalised"]`` = score / S_b. NaN where the original score is <= 0.

Deliberate difference: Quantus's ``"mean"`` baseline is the mean over all channels of the image
as perturbed so far (it changes at every step); ours is the original image's per-channel mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaibench.metrics.base import MetricInfo, MetricResult, info_of, metric_params, nan_reasons, register_metric
from xaibench.passes import Passes
from xaibench.perturbation.engine import (
    perturbation_curves,
    prepare,
    rank_features,
    step_counts,
    superpixel_segments,
)


@register_metric(
    MetricInfo(
        name="irof",
        category="faithfulness",
        higher_is_better=True,
        range=(0.0, float("inf")),
        requires=("model", "inputs", "attributions", "targets"),
        cost=Passes(forwards="S + 1", note="S superpixels, about n_segments; + one SLIC per image on CPU"),
        references=(
            "Rieger, Hansen. IROF: a low resource evaluation metric for explanation methods. ICLR workshop 2020.",
        ),
        description="Area over the curve while superpixels are removed in order of mean attribution.",
        ranks_map=True,
    )
)
def irof(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    segments: Tensor | None = None,
    n_segments: int = 100,
    compactness: float = 10.0,
    baseline: str = "mean",
    baseline_params: dict[str, Any] | None = None,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """IROF area over the curve (higher is better); see the module doc."""
    params = metric_params(locals())
    params["segments"] = "given" if segments is not None else "slic"
    x, a, t = prepare(model, inputs, attributions, targets)
    seg = superpixel_segments(x, n_segments=n_segments, compactness=compactness) if segments is None else segments
    ranking = rank_features(a, x.shape[-2:], order="morf", granularity="superpixel", segments=seg)
    counts = step_counts(ranking.num_features, features_per_step=1)
    curves = perturbation_curves(
        model, x, t, ranking, counts, mode="delete", baseline=baseline, baseline_params=baseline_params,
        output=output, max_batch=max_batch, seed=seed,
    )
    s0 = curves[:, 0].double()
    bad = s0 <= 0
    rel = curves[:, 1:].double() / s0.masked_fill(bad, float("nan"))[:, None]
    n_seg = ranking.num_features.to(rel.device)
    # trapezoid over the first S_b points of each row: intervals k -> k+1 with k + 1 < S_b
    interval_ok = torch.arange(rel.shape[1] - 1, device=rel.device)[None, :] + 1 < n_seg[:, None]
    area = ((rel[:, 1:] + rel[:, :-1]) * 0.5 * interval_ok).sum(dim=1)
    score = n_seg.double() - area
    return MetricResult(
        score.float(), info_of(irof), params, curves,
        nan_reasons(bad, "score of the unperturbed image is <= 0"),
        {"normalised": (score / n_seg.double()).float(), "num_segments": n_seg},
    )
