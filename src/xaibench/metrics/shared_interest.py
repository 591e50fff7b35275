"""Shared Interest (Boggust et al., CHI 2022): set overlap of a binarised map S and a human mask G.

Scores, per image:

- ``iou_coverage``          ``|S ∩ G| / |S ∪ G|``
- ``ground_truth_coverage`` ``|S ∩ G| / |G|``
- ``saliency_coverage``     ``|S ∩ G| / |S|``; with ``binarize=None`` the saliency may stay
  continuous and the score is ``sum(|s| in G) / sum(|s|)``, as the reference implementation.

Binarisation of a continuous map (``binarize``), after per-image min-max normalisation to [0, 1]
of the raw map (pass ``attributions.abs()`` for signed methods):

- ``"mean_std"``:   keep pixels ``>= mean + k * std`` (population std; the reference's ``binarize_std``)
- ``"percentile"``: keep pixels ``>= quantile(q)`` (``q`` in [0, 1], linear interpolation as
  ``numpy.percentile``; the reference's ``binarize_percentile``)
- ``"threshold"``:  keep pixels ``>= t`` (``t`` on the normalised scale)
- ``None``:         the map is used as given and must be binary (0/1) unless the score is
  ``saliency_coverage``.

A constant map cannot be min-max normalised, an empty mask or an empty binarised map leaves the
scores undefined: NaN with the reason. Maps coarser than the masks are upsampled bilinearly first
(`xaibench.metrics.localisation.prepare`).

`shared_interest_cases` sorts images into the paper's eight recurring patterns from the three
scores and whether the prediction was correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, register_metric
from xaibench.metrics.localisation import EMPTY_MASK, finish, prepare, reasons_for
from xaibench.passes import Passes

SCORES = ("iou_coverage", "ground_truth_coverage", "saliency_coverage")
BINARIZATIONS = ("mean_std", "percentile", "threshold")
CASES = (
    "human aligned",
    "sufficient subset",
    "sufficient context",
    "context dependent",
    "confuser",
    "insufficient subset",
    "distractor",
    "context confusion",
)
CONSTANT_MAP = "constant map: cannot be min-max normalised for binarisation"
EMPTY_SALIENCY = "empty saliency region (nothing kept by the binarisation)"
_BOGGUST = (
    "Boggust, Hoover, Satyanarayan & Strobelt (2022). Shared Interest: Measuring human-AI alignment to "
    "identify recurring patterns in model behavior. CHI.",
)

Score = Literal["iou_coverage", "ground_truth_coverage", "saliency_coverage"]
Binarize = Literal["mean_std", "percentile", "threshold"] | None


def binarize_maps(
    attributions: Tensor,
    method: Literal["mean_std", "percentile", "threshold"] = "mean_std",
    *,
    k: float = 1.0,
    q: float = 0.9,
    t: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Binary maps [B, H, W] from continuous maps and a bool [B] flag of constant (undefined) maps.

    Each map is min-max normalised to [0, 1], then pixels at or above the method's threshold are
    kept (see the module docstring). Constant maps give an all-False map and a True flag.
    """
    if method not in BINARIZATIONS:
        raise InputError(f"binarize must be one of {BINARIZATIONS} or None, got {method!r}")
    flat = attributions.double().flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    constant = (high <= low)[:, 0]
    norm = (flat - low) / torch.where(high > low, high - low, 1.0)
    if method == "mean_std":
        threshold = norm.mean(dim=1, keepdim=True) + k * norm.std(dim=1, correction=0, keepdim=True)
    elif method == "percentile":
        if not 0 <= q <= 1:
            raise InputError(f"q must be a quantile in [0, 1], got {q}")
        ordered = norm.sort(dim=1).values
        pos = q * (ordered.shape[1] - 1)
        lo, hi = int(pos), min(int(pos) + 1, ordered.shape[1] - 1)
        threshold = ordered[:, lo : lo + 1] + (ordered[:, hi : hi + 1] - ordered[:, lo : lo + 1]) * (pos - lo)
    else:
        threshold = torch.full_like(low, float(t))
    binary = (norm >= threshold) & ~constant[:, None]
    return binary.view_as(attributions), constant


def _safe(denominator: Tensor) -> Tensor:
    """Denominator with zeros replaced by 1 (those images are flagged undefined separately)."""
    return torch.where(denominator > 0, denominator, 1.0)


@dataclass(frozen=True)
class _Overlap:
    iou: Tensor
    ground_truth_coverage: Tensor
    saliency_coverage: Tensor
    conditions: tuple[tuple[Tensor, str], ...]


def _overlap(
    attributions: Tensor, masks: Tensor, binarize: Binarize, k: float, q: float, t: float, continuous_ok: bool
) -> _Overlap:
    maps, masks = prepare(attributions, masks)
    g = masks.flatten(1)
    empty_mask = ~g.any(dim=1)
    if binarize is None:
        binary = ((maps == 0) | (maps == 1)).all()
        if not binary and not continuous_ok:
            raise InputError(
                "with binarize=None the saliency must be binary (0/1) at mask resolution for iou_coverage and "
                "ground_truth_coverage; choose binarize='mean_std' | 'percentile' | 'threshold'"
            )
        s = maps.abs().flatten(1)
        constant = torch.zeros_like(empty_mask)
    else:
        if binarize not in BINARIZATIONS:
            raise InputError(f"binarize must be one of {BINARIZATIONS} or None, got {binarize!r}")
        bits, constant = binarize_maps(maps, binarize, k=k, q=q, t=t)
        s = bits.flatten(1).double()
    inter = (s * g).sum(dim=1)
    s_total = s.sum(dim=1)
    g_total = g.sum(dim=1).double()
    union = torch.maximum(s, g.double()).sum(dim=1)  # |S ∪ G| for binary S (IoU is not used otherwise)
    empty_s = (s_total <= 0) & ~constant
    return _Overlap(
        iou=inter / _safe(union),
        ground_truth_coverage=inter / _safe(g_total),
        saliency_coverage=inter / _safe(s_total),
        conditions=((empty_mask, EMPTY_MASK), (constant, CONSTANT_MAP), (empty_s, EMPTY_SALIENCY)),
    )


@register_metric(
    MetricInfo(
        name="shared_interest",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(),
        references=_BOGGUST,
        description="Shared Interest overlap of the binarised map and the mask: IoU, ground-truth or saliency "
        "coverage (`score`).",
    )
)
def shared_interest(
    attributions: Tensor,
    masks: Tensor,
    *,
    score: Score = "iou_coverage",
    binarize: Binarize = "mean_std",
    k: float = 1.0,
    q: float = 0.9,
    t: float = 0.5,
) -> MetricResult:
    """Shared Interest `score` of maps [B, h, w] against masks [B, H, W] (see the module docstring).

    The reference's argument order is (ground truth, saliency); here, as for every metric, it is
    ``attributions, masks``. With ``binarize=None`` the maps are used as they are (binary unless
    ``score="saliency_coverage"``, which then uses ``|s|``).
    """
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES}, got {score!r}")
    ov = _overlap(attributions, masks, binarize, k, q, t, continuous_ok=score == "saliency_coverage")
    values = {"iou_coverage": ov.iou, "ground_truth_coverage": ov.ground_truth_coverage,
              "saliency_coverage": ov.saliency_coverage}[score]
    params = {"score": score, "binarize": binarize, **_binarize_params(binarize, k, q, t)}
    return finish(shared_interest.info, values, params, *ov.conditions)


def _binarize_params(binarize: Binarize, k: float, q: float, t: float) -> dict[str, float]:
    return {"mean_std": {"k": k}, "percentile": {"q": q}, "threshold": {"t": t}}.get(binarize, {})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SharedInterestCases:
    """Per-image Shared Interest case and the three scores it was derived from.

    cases:  long [B], an index into `names`, or -1 (no case: undefined scores, or both coverages
            high while IoU is low, a pattern outside the eight).
    names:  the eight case names (`CASES`).
    reasons: why an image has case -1 (``None`` where it has a case).
    """

    cases: Tensor
    iou: Tensor
    ground_truth_coverage: Tensor
    saliency_coverage: Tensor
    reasons: tuple[str | None, ...]
    names: tuple[str, ...] = CASES

    def labels(self) -> list[str | None]:
        """The case name of each image (``None`` for -1)."""
        return [self.names[c] if c >= 0 else None for c in self.cases.tolist()]

    def counts(self) -> dict[str, int]:
        """How many images fall in each case (all eight listed)."""
        found = torch.bincount(self.cases[self.cases >= 0], minlength=len(self.names)).tolist()
        return dict(zip(self.names, found))


def shared_interest_cases(
    attributions: Tensor,
    masks: Tensor,
    correct: Tensor,
    *,
    high: float = 0.5,
    binarize: Literal["mean_std", "percentile", "threshold"] = "mean_std",
    k: float = 1.0,
    q: float = 0.9,
    t: float = 0.5,
) -> SharedInterestCases:
    """The eight Shared Interest cases of a batch, from the three scores and `correct` [B] bool.

    A score is *high* when ``>= high``. Rules, checked in this order (correct / incorrect):

    1. IoU high                            -> human aligned      / confuser
    2. saliency coverage high, GT low      -> sufficient subset  / insufficient subset
    3. GT coverage high, saliency low      -> sufficient context / distractor
    4. both coverages low (so IoU low)     -> context dependent  / context confusion

    (IoU <= min of the coverages, so rule 1 implies both coverages are high.) Both coverages high
    with IoU low matches none of the eight: -1 with a reason, as for undefined scores.
    """
    correct = torch.as_tensor(correct)
    if correct.dtype != torch.bool or correct.ndim != 1 or correct.shape[0] != attributions.shape[0]:
        raise InputError(f"correct must be a bool tensor [B] with B={attributions.shape[0]}")
    if not 0 < high <= 1:
        raise InputError(f"high must be in (0, 1], got {high}")
    ov = _overlap(attributions, masks, binarize, k, q, t, continuous_ok=False)
    iou_hi = ov.iou >= high
    sc_hi = ov.saliency_coverage >= high
    gt_hi = ov.ground_truth_coverage >= high
    pattern = torch.full_like(iou_hi, -1, dtype=torch.long)
    pattern = torch.where(~sc_hi & ~gt_hi, 3, pattern)
    pattern = torch.where(gt_hi & ~sc_hi, 2, pattern)
    pattern = torch.where(sc_hi & ~gt_hi, 1, pattern)
    pattern = torch.where(iou_hi, 0, pattern)
    undefined = torch.zeros_like(iou_hi)
    for cond, _ in ov.conditions:
        undefined |= cond
    unmatched = (pattern < 0) & ~undefined
    correct = correct.to(pattern.device)
    cases = torch.where(pattern >= 0, pattern + 4 * (~correct).long(), -1)
    cases = torch.where(undefined, -1, cases)
    reasons = reasons_for(*ov.conditions, (unmatched, "both coverages high but IoU low: none of the eight cases"))
    return SharedInterestCases(
        cases=cases,
        iou=torch.where(undefined, torch.nan, ov.iou).float(),
        ground_truth_coverage=torch.where(undefined, torch.nan, ov.ground_truth_coverage).float(),
        saliency_coverage=torch.where(undefined, torch.nan, ov.saliency_coverage).float(),
        reasons=reasons or (None,) * cases.shape[0],
    )
