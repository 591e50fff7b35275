"""Localisation metrics: does an attribution map fall on the human mask of the object?

Every metric here is ``f(attributions [B, h, w], masks [B, H, W] bool, **params) -> MetricResult``.

Conventions shared by all localisation metrics (and by `shared_interest`, `focus`):

- Resolution: maps coarser than the masks are upsampled to the mask resolution with bilinear
  interpolation (``align_corners=False``) before scoring; maps finer than the masks are an error
  (downsample them, or upsample the masks, yourself).
- Boxes: ``masks`` may also be boxes ``[B, 4]`` = ``(x1, y1, x2, y2)``, inclusive pixel indices on
  the map's own grid (`boxes_to_masks` converts boxes given on another grid).
- Computation is in float64 on the maps' device; scores are float32 [B].
- An empty mask gives NaN with the reason in ``MetricResult.reasons``; so does any other undefined
  ratio (no positive relevance, a constant map for the pointing game, a mask covering the whole
  image for AUC). Nothing undefined is reported as 0.
- Sign handling (fixed per metric, as its reference defines it):

  ===========================  ==================================================================
  pointing_game                raw map (its maxima)
  energy_pointing_game         positive part ``max(a, 0)``
  relevance_mass_accuracy      positive part
  attribution_localisation     positive part
  relevance_rank_accuracy      raw map (its ranking)
  top_k_intersection           raw map (its ranking)
  auc                          raw map (its ranking)
  ===========================  ==================================================================

  Pass ``attributions.abs()`` to score magnitudes instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.checks import check_maps, check_masks
from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, register_metric
from xaibench.passes import Passes
from xaibench.stats import average_ranks

EMPTY_MASK = "empty mask"
NO_POSITIVE = "no positive relevance in the map"

_ZHANG = (
    "Zhang et al. (2018). Top-down neural attention by excitation backprop. IJCV 126:1084-1102.",
)
_SCORECAM = ("Wang et al. (2020). Score-CAM: Score-weighted visual explanations for CNNs. CVPR Workshops.",)
_ARRAS = ("Arras, Osman & Samek (2022). CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural "
          "network explanations. Information Fusion 81:14-40.",)
_KOHLBRENNER = ("Kohlbrenner et al. (2020). Towards best practice in explaining neural network decisions with LRP. "
                "IJCNN.",)
_THEINER = ("Theiner, Muller-Budack & Ewerth (2022). Interpretable semantic photo geolocation. WACV.",)
_FAWCETT = ("Fawcett (2006). An introduction to ROC analysis. Pattern Recognition Letters 27:861-874.",)


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes ``[B, 4]`` = ``(x1, y1, x2, y2)`` (inclusive pixel indices) -> bool masks ``[B, H, W]``.

    A box with ``x2 < x1`` or ``y2 < y1`` (or outside the image) gives an empty mask.
    """
    if not isinstance(boxes, Tensor):
        boxes = torch.as_tensor(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must have shape [B, 4] = (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes.double()).all():
        raise InputError("boxes contain NaN or Inf values")
    height, width = size
    b = boxes.double()[:, :, None, None]
    ys = torch.arange(height, device=boxes.device, dtype=torch.float64)[:, None]
    xs = torch.arange(width, device=boxes.device, dtype=torch.float64)[None, :]
    return (b[:, 0] <= xs) & (xs <= b[:, 2]) & (b[:, 1] <= ys) & (ys <= b[:, 3])


def prepare(attributions: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Check maps and masks (or boxes); return float64 maps at mask resolution and bool masks."""
    check_maps(attributions)
    if isinstance(masks, Tensor) and masks.ndim == 2 and masks.shape[-1] == 4:
        masks = boxes_to_masks(masks, (attributions.shape[-2], attributions.shape[-1]))
    masks = check_masks(masks)
    if masks.shape[0] != attributions.shape[0]:
        raise InputError(f"masks has batch size {masks.shape[0]}, attributions {attributions.shape[0]}")
    maps = attributions.detach().double()
    (h, w), (height, width) = maps.shape[-2:], masks.shape[-2:]
    if (h, w) != (height, width):
        if h > height or w > width:
            raise InputError(
                f"attributions ({h}x{w}) are finer than the masks ({height}x{width}); only coarser maps are "
                "upsampled: resize one of them first"
            )
        maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return maps, masks.to(maps.device)


def reasons_for(*conditions: tuple[Tensor, str]) -> tuple[str | None, ...] | None:
    """Per-image reasons from (undefined [B] bool, reason) pairs; the first that applies wins."""
    flags = [cond.flatten().tolist() for cond, _ in conditions]
    out = tuple(next((r for f, (_, r) in zip(column, conditions) if f), None) for column in zip(*flags))
    return out if any(r is not None for r in out) else None


def finish(info: MetricInfo, scores: Tensor, params: dict, *conditions: tuple[Tensor, str]) -> MetricResult:
    """Set NaN where any condition holds and return the result with its reasons."""
    undefined = torch.zeros_like(scores, dtype=torch.bool)
    for cond, _ in conditions:
        undefined |= cond
    scores = torch.where(undefined, torch.nan, scores).float()
    return MetricResult(scores=scores, info=info, params=params, reasons=reasons_for(*conditions))


def positive_mass(
    info: MetricInfo, maps: Tensor, masks: Tensor, *, weighted: bool = False, params: dict | None = None
) -> MetricResult:
    """Positive relevance inside the mask over total positive relevance, for prepared maps and masks.

    weighted: multiply by pixels / mask pixels (Kohlbrenner et al.'s weighted ratio).
    NaN for an empty mask or a map without positive relevance.
    """
    pos, inside = maps.clamp(min=0).flatten(1), masks.flatten(1)
    total = pos.sum(dim=1)
    score = (pos * inside).sum(dim=1) / torch.where(total > 0, total, 1.0)
    size = inside.sum(dim=1)
    if weighted:
        score = score * inside.shape[1] / size.clamp(min=1)
    return finish(info, score, params or {}, (size == 0, EMPTY_MASK), (total <= 0, NO_POSITIVE))


def _disc_dilate(masks: Tensor, radius: float) -> Tensor:
    """Masks grown by a disc of `radius` pixels (all pixels within Euclidean distance `radius`)."""
    r = int(math.floor(radius))
    if r == 0:
        return masks
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float64)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).to(torch.float32)
    grown = F.conv2d(masks[:, None].float(), disc[None, None], padding=r)
    return grown[:, 0] > 0.5


@register_metric(
    MetricInfo(
        name="pointing_game",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_ZHANG,
        description="1 if a maximum of the map lies in the mask (optionally within `tolerance` pixels), else 0.",
    )
)
def pointing_game(attributions: Tensor, masks: Tensor, *, tolerance: float = 0.0) -> MetricResult:
    """Hit (1) if any pixel holding the map's maximum lies in the mask, else miss (0).

    tolerance: radius in pixels (at mask resolution) of the disc around the maximum that counts,
    as Zhang et al. (15 px at 224 px); a hit if a mask pixel lies within that distance of a maximum.
    Raw map (no sign change). A constant map has no maximum location: NaN.
    """
    if not tolerance >= 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps, masks = prepare(attributions, masks)
    flat = maps.flatten(1)
    top = flat.amax(dim=1, keepdim=True)
    is_max = (flat == top).view_as(maps)
    region = _disc_dilate(masks, tolerance)
    hit = (is_max & region).flatten(1).any(dim=1).double()
    constant = flat.amin(dim=1) == top[:, 0]
    return finish(
        pointing_game.info, hit, {"tolerance": tolerance},
        (~masks.flatten(1).any(dim=1), EMPTY_MASK), (constant, "constant map: no maximum location"),
    )


@register_metric(
    MetricInfo(
        name="energy_pointing_game",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_SCORECAM,
        description="Energy of the positive part of the map inside the mask (box) over its total energy.",
    )
)
def energy_pointing_game(attributions: Tensor, masks: Tensor) -> MetricResult:
    """``sum(max(a,0) in mask) / sum(max(a,0))`` (Score-CAM's energy-based pointing game).

    Same quantity as `relevance_mass_accuracy`; Score-CAM defines it on boxes (pass boxes [B, 4]).
    """
    return positive_mass(energy_pointing_game.info, *prepare(attributions, masks))


@register_metric(
    MetricInfo(
        name="relevance_mass_accuracy",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_ARRAS,
        description="Positive relevance inside the mask over the total positive relevance.",
    )
)
def relevance_mass_accuracy(attributions: Tensor, masks: Tensor) -> MetricResult:
    """``sum(max(a,0) in mask) / sum(max(a,0))`` (Arras et al.: only positive relevance counts).

    Quantus' ``RelevanceMassAccuracy`` uses the raw map (its ratio can leave [0, 1] for signed maps);
    both agree on non-negative maps.
    """
    return positive_mass(relevance_mass_accuracy.info, *prepare(attributions, masks))


@register_metric(
    MetricInfo(
        name="attribution_localisation",
        category="localisation",
        higher_is_better=True,
        range=(0.0, math.inf),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_KOHLBRENNER,
        description="Inside-total ratio of positive relevance; `weighted` multiplies it by image size / mask size.",
    )
)
def attribution_localisation(attributions: Tensor, masks: Tensor, *, weighted: bool = False) -> MetricResult:
    """Kohlbrenner et al.'s inside-total relevance ratio ``mu = R_in / R_tot`` of the positive part.

    weighted: ``mu_w = mu * S_tot / S_in`` (pixels of the image over pixels of the mask), which
    rewards concentration on small objects; it is 1 for a map spread uniformly over the whole
    image (chance level), ``S_tot / S_in`` for a map spread uniformly over the mask, and can
    exceed 1. (Quantus multiplies by a size ratio the other way round; see the docs.)
    """
    return positive_mass(
        attribution_localisation.info, *prepare(attributions, masks), weighted=weighted, params={"weighted": weighted}
    )


def top_hits(maps: Tensor, masks: Tensor, k: Tensor) -> Tensor:
    """Expected number of mask pixels among the `k` [B] highest-valued pixels of each map.

    Ties at the k-th value are broken uniformly at random in expectation: each tied pixel counts
    with weight (free slots) / (tied pixels). Requires 1 <= k <= pixels.
    """
    flat, inside = maps.flatten(1), masks.flatten(1)
    # topk, not a full sort: only the k-th largest value is needed (several times faster on CPU).
    kth = flat.topk(int(k.max()), dim=1).values.gather(1, (k - 1).clamp(min=0)[:, None])
    above, tied = flat > kth, flat == kth
    hits_above = (above & inside).sum(dim=1).double()
    hits_tied = (tied & inside).sum(dim=1).double()
    slots = k.double() - above.sum(dim=1).double()
    return hits_above + hits_tied * slots / tied.sum(dim=1).double()


@register_metric(
    MetricInfo(
        name="relevance_rank_accuracy",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_ARRAS,
        description="Fraction of the |mask| highest-ranked pixels that lie in the mask.",
    )
)
def relevance_rank_accuracy(attributions: Tensor, masks: Tensor) -> MetricResult:
    """With K = |mask|: (mask pixels among the K top-ranked pixels) / K. Raw map ranking.

    Ties at the K-th value count fractionally (uniform tie-breaking in expectation); Quantus breaks
    them by ``argsort`` order. Equal on maps without ties.
    """
    maps, masks = prepare(attributions, masks)
    size = masks.flatten(1).sum(dim=1)
    score = top_hits(maps, masks, size.clamp(min=1)) / size.clamp(min=1).double()
    return finish(relevance_rank_accuracy.info, score, {}, (size == 0, EMPTY_MASK))


@register_metric(
    MetricInfo(
        name="top_k_intersection",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_THEINER,
        description="Fraction of the k highest-ranked pixels that lie in the mask.",
    )
)
def top_k_intersection(
    attributions: Tensor, masks: Tensor, *, k: int | float = 1000, concept_influence: bool = False
) -> MetricResult:
    """(mask pixels among the k top-ranked pixels) / k, raw map ranking, at mask resolution.

    k: a number of pixels (int, Quantus' default 1000 assumes 224 px images) or a fraction of the
    pixels (float in (0, 1), rounded, at least 1).
    concept_influence: multiply by (pixels / mask pixels), as Quantus (range then [0, pixels]).
    Ties at the k-th value count fractionally, as in `relevance_rank_accuracy`.
    """
    maps, masks = prepare(attributions, masks)
    n = maps[0].numel()
    if isinstance(k, float) and 0 < k < 1:
        k = max(1, round(k * n))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise InputError(f"k must be an integer in [1, {n}] (pixels at mask resolution) or a fraction in (0, 1), "
                         f"got {k!r}")
    size = masks.flatten(1).sum(dim=1)
    score = top_hits(maps, masks, torch.full_like(size, k)) / k
    if concept_influence:
        score = score * n / size.clamp(min=1).double()
    return finish(
        top_k_intersection.info, score, {"k": k, "concept_influence": concept_influence}, (size == 0, EMPTY_MASK)
    )


@register_metric(
    MetricInfo(
        name="auc",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_FAWCETT,
        description="ROC AUC of the map as a score for mask pixels (ties count one half).",
    )
)
def auc(attributions: Tensor, masks: Tensor) -> MetricResult:
    """Area under the ROC curve of the raw map predicting the mask, per image.

    Computed as the Mann-Whitney statistic from average ranks, so tied values count 1/2 exactly as
    ``sklearn.metrics.roc_auc_score``. Undefined (NaN) when the mask is empty or covers the image.
    """
    maps, masks = prepare(attributions, masks)
    flat, inside = maps.flatten(1), masks.flatten(1)
    n_pos = inside.sum(dim=1).double()
    n_neg = inside.shape[1] - n_pos
    rank_sum = (average_ranks(flat) * inside).sum(dim=1)
    score = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp(min=1)
    return finish(auc.info, score, {}, (n_pos == 0, EMPTY_MASK), (n_neg == 0, "mask covers the whole image"))
