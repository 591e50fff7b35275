"""Sufficiency (Dasgupta, Frost & Moshkovitz 2022), as Quantus' ``Sufficiency``.

Two images share an explanation when the distance between their maps is at most `threshold`.
The local sufficiency of image ``i`` is the fraction of the *other* images of the batch sharing
its explanation that the model assigns the same predicted class (arg max of the logits).

Distance: standardised Euclidean distance between flattened maps (each feature divided by its
variance over the batch, ``ddof=1``, as ``scipy.spatial.distance.cdist(..., "seuclidean")``),
then divided by the largest distance of the batch (Quantus' ``normalise_by_max``). Maps are
taken in absolute value by default (Quantus ``abs=True``). The score depends on the whole batch:
compare scores only between batches of the same images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_maps, check_positive_int
from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, nan_reasons, register_metric
from xaibench.passes import Passes


@register_metric(
    MetricInfo(
        name="sufficiency",
        category="faithfulness",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("model", "inputs", "attributions"),
        cost=Passes(forwards="1"),
        references=(
            "Dasgupta, Frost & Moshkovitz (2022). Framework for evaluating faithfulness of local explanations. ICML.",
        ),
        description="Fraction of the other images whose map lies within threshold (normalised standardised "
        "Euclidean distance) that get the same predicted class.",
    )
)
@torch.no_grad()
def sufficiency(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    *,
    threshold: float = 0.6,
    abs: bool = True,
    max_batch: int = 256,
) -> MetricResult:
    """Sufficiency of maps [B, h, w] for `inputs` [B, C, H, W] (B >= 2; the batch is the population).

    Features with zero variance over the batch carry no information and are left out of the
    distance (scipy would divide by zero). An image with no neighbour within `threshold` gets NaN.
    """
    check_images(inputs, model=model)
    check_maps(attributions, batch=inputs.shape[0])
    check_positive_int(max_batch, "max_batch")
    if inputs.shape[0] < 2:
        raise InputError("sufficiency compares images of a batch: it needs at least 2 images")
    if not threshold >= 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    a = attributions.detach().to(inputs.device, torch.float64).flatten(1)
    a = a.abs() if abs else a
    var = a.var(dim=0, unbiased=True)
    informative = var > 0
    z = a[:, informative] / var[informative].sqrt()
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    top = dist.max()
    dist = dist / top if top > 0 else dist
    near = dist <= threshold
    near.fill_diagonal_(False)
    chunks = range(0, inputs.shape[0], max_batch)
    predicted = torch.cat([model(inputs[s : s + max_batch]).argmax(dim=1) for s in chunks])
    same = predicted[:, None] == predicted[None, :]
    n_near = near.sum(dim=1)
    scores = torch.where(n_near > 0, (near & same).sum(dim=1) / n_near.clamp_min(1), torch.nan).float()
    return MetricResult(
        scores=scores,
        info=info_of(sufficiency),
        params=dict(threshold=threshold, abs=abs, max_batch=max_batch),
        reasons=nan_reasons(n_near == 0, "no other image of the batch has a map within the threshold"),
        extras={"predicted": predicted, "neighbours": n_near},
    )
