"""Explanation alignment: a data-set level mean of a per-image human-alignment score, like accuracy.

``explanation_alignment(attributions, masks, score="shared_interest", **params)`` scores one batch
with any registered localisation metric (default: Shared Interest IoU of the mean + 1 std
binarisation) and returns an `Alignment` holding the per-image scores and their mean over the
images where the score is defined. Over a data set, score it batch by batch and `combine` the
results, which gives the same mean as scoring everything at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xaibench.errors import InputError
from xaibench.metrics.base import METRICS


@dataclass(frozen=True)
class Alignment:
    """Per-image alignment scores and their mean.

    scores:  float32 [N]; NaN where undefined, with `reasons`.
    value:   mean over the defined scores (NaN if none is), reported like accuracy.
    defined: how many scores entered the mean.
    score:   the metric used and `params` its parameters.
    """

    scores: Tensor
    reasons: tuple[str | None, ...]
    score: str
    params: dict[str, Any]

    @property
    def defined(self) -> int:
        return int((~torch.isnan(self.scores)).sum())

    @property
    def value(self) -> float:
        return float(torch.nanmean(self.scores.double())) if self.defined else math.nan

    def __repr__(self) -> str:
        return f"Alignment({self.score}: {self.value:.4g} over {self.defined}/{self.scores.numel()} images)"


def explanation_alignment(
    attributions: Tensor, masks: Tensor, *, score: str = "shared_interest", **params: Any
) -> Alignment:
    """Alignment of maps [B, h, w] with masks [B, H, W] under the localisation metric `score`.

    params go to that metric (for ``shared_interest``: ``score="iou_coverage"`` by default, so
    ``explanation_alignment(a, m)`` is the mean Shared Interest IoU).
    """
    entry = METRICS.get(score)
    if entry.info.requires != ("attributions", "masks"):
        raise InputError(f"{score!r} is not a map-vs-mask metric (it requires {entry.info.requires})")
    result = entry.fn(attributions=attributions, masks=masks, **params)
    n = result.scores.numel()
    return Alignment(
        scores=result.scores.detach().float().cpu(),
        reasons=result.reasons or (None,) * n,
        score=score,
        params=dict(result.params),
    )


def combine(parts: Iterable[Alignment]) -> Alignment:
    """One `Alignment` from the results of several batches (same metric and parameters)."""
    parts = list(parts)
    if not parts:
        raise InputError("combine needs at least one Alignment")
    first = parts[0]
    if any(p.score != first.score or p.params != first.params for p in parts):
        raise InputError("combine: the batches were scored with different metrics or parameters")
    return Alignment(
        scores=torch.cat([p.scores for p in parts]),
        reasons=tuple(r for p in parts for r in p.reasons),
        score=first.score,
        params=first.params,
    )
