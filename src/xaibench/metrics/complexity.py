"""Complexity of attribution maps: how concentrated the magnitude ``|a|`` is.

``f(attributions [B, h, w], **params) -> MetricResult``; the map's own resolution, float64.
All three use the absolute value of the map (Quantus' default ``abs=True``). Direction as in
Quantus: sparser is better (`sparseness` higher, `complexity` and `effective_complexity` lower).
An all-zero map has no distribution of magnitude: NaN for `sparseness` and `complexity`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xaibench.checks import check_maps
from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, register_metric
from xaibench.metrics.localisation import finish
from xaibench.passes import Passes

ZERO_MAP = "all-zero map"


def _magnitudes(attributions: Tensor) -> Tensor:
    check_maps(attributions)
    return attributions.detach().double().abs().flatten(1)


@register_metric(
    MetricInfo(
        name="sparseness",
        category="complexity",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions",),
        cost=Passes(),
        references=("Chalasani et al. (2020). Concise explanations of neural networks using adversarial "
                    "training. ICML.",),
        description="Gini index of |a|: 0 for a uniform map, (n-1)/n when one pixel holds everything.",
    )
)
def sparseness(attributions: Tensor) -> MetricResult:
    """Gini index of the sorted magnitudes ``x_(1) <= ... <= x_(n)``:
    ``sum_i (2i - n - 1) x_(i) / (n sum_i x_(i))``.

    Quantus adds 1e-7 to every magnitude first; here the index is exact (differences ~1e-7 / mean |a|).
    """
    x = _magnitudes(attributions).sort(dim=1).values
    n = x.shape[1]
    i = torch.arange(1, n + 1, device=x.device, dtype=torch.float64)
    total = x.sum(dim=1)
    score = ((2 * i - n - 1) * x).sum(dim=1) / (n * torch.where(total > 0, total, 1.0))
    return finish(sparseness.info, score, {}, (total <= 0, ZERO_MAP))


@register_metric(
    MetricInfo(
        name="complexity",
        category="complexity",
        higher_is_better=False,
        range=(0.0, math.inf),
        requires=("attributions",),
        cost=Passes(),
        references=("Bhatt, Weller & Moura (2020). Evaluating and aggregating feature-based model explanations. "
                    "IJCAI.",),
        description="Shannon entropy (nats) of the fractional contributions |a| / sum |a|; at most log(pixels).",
    )
)
def complexity(attributions: Tensor) -> MetricResult:
    """``-sum_i p_i log p_i`` with ``p = |a| / sum |a|`` and ``0 log 0 = 0`` (Quantus: ``log(p + 1e-12)``)."""
    x = _magnitudes(attributions)
    total = x.sum(dim=1, keepdim=True)
    p = x / torch.where(total > 0, total, 1.0)
    score = -torch.special.xlogy(p, p).sum(dim=1)
    return finish(complexity.info, score, {}, (total[:, 0] <= 0, ZERO_MAP))


@register_metric(
    MetricInfo(
        name="effective_complexity",
        category="complexity",
        higher_is_better=False,
        range=(0.0, math.inf),
        requires=("attributions",),
        cost=Passes(),
        references=("Nguyen & Martinez (2020). On quantitative aspects of model interpretability. arXiv:2007.07584.",),
        description="Number of pixels with |a| > eps (after division by max |a| when `normalise`).",
    )
)
def effective_complexity(attributions: Tensor, *, eps: float = 1e-5, normalise: bool = True) -> MetricResult:
    """Count of pixels with ``|a| > eps``.

    normalise: divide each map by its own maximum magnitude first, so `eps` is relative; an all-zero
    map is left as it is (count 0). Quantus' default ``normalise_by_max`` divides by the maximum
    over the whole batch instead, which makes a score depend on the other images of the batch.
    """
    if not eps >= 0:
        raise InputError(f"eps must be >= 0, got {eps}")
    x = _magnitudes(attributions)
    if normalise:
        top = x.amax(dim=1, keepdim=True)
        x = x / torch.where(top > 0, top, 1.0)
    score = (x > eps).sum(dim=1).double()
    return finish(effective_complexity.info, score, {"eps": eps, "normalise": normalise})
