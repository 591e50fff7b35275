"""Single-step and correlation faithfulness metrics studied by Gomez, Fréour, Mouchère (2022).

Single step (one masked image per input; our reading of their ``saliency_maps_metrics``):

- the map is min-max normalised PER IMAGE to [0, 1] (theirs normalises over the whole batch),
  upsampled bicubically (align_corners=False) to the input size and clamped to [0, 1] (theirs is
  not clamped), giving a soft mask ``m``; the masked image is ``x * m + baseline * (1 - m)``.
- ``average_drop`` (AD, Chattopadhyay et al.): ``max(Y - O, 0) / Y`` with Y the score of the
  image and O that of the masked image (a fraction, not a percentage); lower is better.
- ``increase_in_confidence`` (IIC): ``1[O > Y]``; higher is better.
- ``average_drop_in_deletion`` (ADD, Jung & Oh): the mask is ``1 - m`` (the salient part is
  removed); ``(Y - O) / Y``; higher is better.

A constant map has no min-max normalisation: NaN (reason given). AD / ADD are NaN where Y <= 0.

Correlation metrics (Gomez et al.'s DC / IC): features (map pixels at native resolution by
default, ``resample="rank_native"``) are removed (DC, baseline black) or inserted (IC, baseline
``box_blur``) in MoRF order, ``F // min(steps, F)`` features per step (their 14x14 = 196 step
bound). Score: Pearson correlation, over the steps k = 1..K, between the mean attribution of the
features of step k and the score change it causes. Cumulative (``cumulative=True``, the
original): DC uses ``s_{k-1} - s_k``, IC ``s_k - s_{k-1}``. Non-cumulative (``cumulative=False``,
the "-nc" variants of their benchmark-reliability study; our reading): step k perturbs only the
features of step k, starting from the image (DC: change ``s_0 - s_k``) or from the baseline (IC:
change ``s_k - s_0``). Extras: ``auc`` = DAUC / IAUC (trapezoid, dx = 1/K). NaN where the score
changes or the step saliencies are constant over the steps (correlation undefined).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, metric_params, nan_reasons, register_metric
from xaibench.metrics.deletion import deletion, insertion
from xaibench.passes import Passes
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.curves import trapezoid
from xaibench.perturbation.engine import (
    perturbation_curves,
    prepare,
    rank_features,
    score_chunk,
    step_counts,
    step_saliency,
)
from xaibench.perturbation.images import soft_mask
from xaibench.seeding import make_generator
from xaibench.stats import pearson_rows

_REQ = ("model", "inputs", "attributions", "targets")
_GOMEZ = (
    "Gomez, Fréour, Mouchère. Metrics for saliency map evaluation of deep learning explanation methods. "
    "ICPRAI 2022.",
)
_CHATTO = (
    "Chattopadhyay et al. Grad-CAM++: Generalized gradient-based visual explanations for deep convolutional "
    "networks. WACV 2018.",
)
_JUNG = ("Jung, Oh. Towards better explanations of class activation mapping. ICCV 2021.",)


def _single_step(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, delete: bool, baseline: str,
    baseline_params: dict[str, Any] | None, output: str, max_batch: int, seed: int | torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(Y, O, constant-map flags) with chunks of at most `max_batch` images."""
    x, a, t = prepare(model, inputs, attributions, targets)
    constant = a.flatten(1).amin(1) == a.flatten(1).amax(1)
    y = torch.empty(x.shape[0], device=x.device)
    o = torch.empty(x.shape[0], device=x.device)
    gen = make_generator(seed, x.device)  # one stream over all chunks: random baselines do not depend on max_batch
    for start in range(0, x.shape[0], max_batch):
        sl = slice(start, start + max_batch)
        m = soft_mask(a[sl], x.shape[-2:])
        if delete:
            m = 1.0 - m
        base = fill(x[sl], baseline, seed=gen, **(baseline_params or {}))
        y[sl] = score_chunk(model, x[sl], t[sl], output)
        o[sl] = score_chunk(model, x[sl] * m + base * (1.0 - m), t[sl], output)
    return y.double(), o.double(), constant


_CONST = "the attribution map is constant: no min-max normalisation"


def _result(info: MetricInfo, score: Tensor, undefined: Tensor, reason: str, params: dict[str, Any],
            y: Tensor, o: Tensor) -> MetricResult:
    score = score.masked_fill(undefined, float("nan")).float()
    return MetricResult(score, info, params, reasons=nan_reasons(undefined, reason),
                        extras={"score": y.float(), "masked_score": o.float()})


@register_metric(
    MetricInfo(
        name="average_drop", category="faithfulness", higher_is_better=False, range=(0.0, 1.0), requires=_REQ,
        cost=Passes(forwards="2"), references=_CHATTO + _GOMEZ,
        description="Relative drop of the target score when only the salient part (soft mask) is kept.",
    )
)
def average_drop(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """AD = max(Y - O, 0) / Y per image (see module doc)."""
    params = metric_params(locals())
    y, o, const = _single_step(model, inputs, attributions, targets, delete=False, **params)
    bad = const | (y <= 0)
    return _result(info_of(average_drop), (y - o).clamp_min(0) / y, bad,
                   f"{_CONST}, or the image's score is <= 0", params, y, o)


@register_metric(
    MetricInfo(
        name="increase_in_confidence", category="faithfulness", higher_is_better=True, range=(0.0, 1.0),
        requires=_REQ, cost=Passes(forwards="2"), references=_CHATTO + _GOMEZ,
        description="1 when keeping only the salient part (soft mask) increases the target score.",
    )
)
def increase_in_confidence(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """IIC = 1[O > Y] per image (see module doc)."""
    params = metric_params(locals())
    y, o, const = _single_step(model, inputs, attributions, targets, delete=False, **params)
    return _result(info_of(increase_in_confidence), (o > y).double(), const, _CONST, params, y, o)


@register_metric(
    MetricInfo(
        name="average_drop_in_deletion", category="faithfulness", higher_is_better=True,
        range=(float("-inf"), 1.0), requires=_REQ, cost=Passes(forwards="2"), references=_JUNG + _GOMEZ,
        description="Relative drop of the target score when the salient part (soft mask) is removed.",
    )
)
def average_drop_in_deletion(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """ADD = (Y - O) / Y per image with the mask inverted (see module doc)."""
    params = metric_params(locals())
    y, o, const = _single_step(model, inputs, attributions, targets, delete=True, **params)
    bad = const | (y <= 0)
    return _result(info_of(average_drop_in_deletion), (y - o) / y, bad,
                   f"{_CONST}, or the image's score is <= 0", params, y, o)


def _correlation(
    info: MetricInfo, mode: str, model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor,
    params: dict[str, Any],
) -> MetricResult:
    if params["steps"] < 1:
        raise InputError(f"steps must be >= 1, got {params['steps']}")
    x, a, t = prepare(model, inputs, attributions, targets)
    patch = params["patch_size"]
    ranking = rank_features(a, x.shape[-2:], order="morf", granularity="patch" if patch > 1 else "pixel",
                            patch_size=patch, resample=params["resample"])
    n_feat = int(ranking.num_features.min())
    per_step = n_feat // min(params["steps"], n_feat)
    counts = step_counts(ranking.num_features, features_per_step=per_step)
    curves = perturbation_curves(
        model, x, t, ranking, counts, mode=mode, cumulative=params["cumulative"], baseline=params["baseline"],
        baseline_params=params["baseline_params"], output=params["output"], max_batch=params["max_batch"],
        seed=params["seed"],
    )
    c = curves.double()
    if params["cumulative"]:
        change = c[:, :-1] - c[:, 1:] if mode == "delete" else c[:, 1:] - c[:, :-1]
    else:
        change = c[:, :1] - c[:, 1:] if mode == "delete" else c[:, 1:] - c[:, :1]
    sal = step_saliency(ranking, counts)
    corr = pearson_rows(change, sal)
    reasons = nan_reasons(torch.isnan(corr), "score changes or step saliencies are constant over the steps")
    auc = trapezoid(c, 1.0 / (c.shape[1] - 1)).float()
    return MetricResult(corr.float(), info, params, curves, reasons, {"auc": auc, "step_saliency": sal.float()})


_CORR_COST = Passes(forwards="ceil(F / (F // min(steps, F))) + 1", note="F = number of features: map pixels or patches")


@register_metric(
    MetricInfo(
        name="deletion_correlation", category="faithfulness", higher_is_better=True, range=(-1.0, 1.0),
        requires=_REQ, cost=_CORR_COST, references=_GOMEZ,
        description="Correlation between the saliency of deleted features and the score drop they cause (DC).",
        ranks_map=True,
    )
)
def deletion_correlation(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, steps: int = 196,
    cumulative: bool = True, patch_size: int = 1, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, resample: str = "rank_native", output: str = "softmax",
    max_batch: int = 256, seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """DC (see module doc); ``extras["auc"]`` is DAUC."""
    params = metric_params(locals())
    return _correlation(info_of(deletion_correlation), "delete", model, inputs, attributions, targets, params)


@register_metric(
    MetricInfo(
        name="insertion_correlation", category="faithfulness", higher_is_better=True, range=(-1.0, 1.0),
        requires=_REQ, cost=_CORR_COST, references=_GOMEZ,
        description="Correlation between the saliency of inserted features and the score rise they cause (IC).",
        ranks_map=True,
    )
)
def insertion_correlation(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, steps: int = 196,
    cumulative: bool = True, patch_size: int = 1, baseline: str = "box_blur",
    baseline_params: dict[str, Any] | None = None, resample: str = "rank_native", output: str = "softmax",
    max_batch: int = 256, seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """IC (see module doc); ``extras["auc"]`` is IAUC."""
    params = metric_params(locals())
    return _correlation(info_of(insertion_correlation), "insert", model, inputs, attributions, targets, params)


# --- validity rates (Gomez & Mouchère's benchmark-reliability code) ------------------------------------
#
# ``metrics/faithfulness_metrics.py``: ``validity_rate_multi_step`` is the share of the steps of a
# deletion (insertion) curve where the score falls (rises) strictly; ``validity_rate_single_step``
# the share of images where the masked score moves the expected way: up for IIC/AD (the salient part
# kept), down for ADD (the salient part removed). Here the rate is per image (its steps, or 0/1);
# the mean over images is their pooled rate (every image has the same number of steps).

_GOMEZ_RELIABILITY = (
    "Gomez, Mouchère. On the reliability of saliency map metrics in explainable AI. arXiv:2311.17876.",
)


def _step_validity(info: MetricInfo, curves: Tensor, falling: bool, params: dict[str, Any]) -> MetricResult:
    c = curves.double()
    moved = c[:, :-1] > c[:, 1:] if falling else c[:, :-1] < c[:, 1:]
    return MetricResult(moved.double().mean(1).float(), info, params, curves)


def _deletion_like(mode: str, model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor,
                   params: dict[str, Any]) -> Tensor:
    run = deletion if mode == "delete" else insertion
    return run(model, inputs, attributions, targets, normalize=None, **params).curves


_VR_COST = Passes(forwards="steps + 1", note="the deletion / insertion curve")


@register_metric(
    MetricInfo(
        name="deletion_validity_rate", category="faithfulness", higher_is_better=True, range=(0.0, 1.0),
        requires=_REQ, cost=_VR_COST, references=_GOMEZ_RELIABILITY,
        description="Share of the deletion curve's steps where the target score falls (the curve's validity rate).",
    )
)
def deletion_validity_rate(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, steps: int = 50,
    baseline: str = "black", baseline_params: dict[str, Any] | None = None, granularity: str | None = None,
    patch_size: int = 1, resample: str = "upsample", output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Share of steps k with s_k > s_{k+1} on `deletion`'s curve (normalize=None, same parameters)."""
    params = metric_params(locals())
    curves = _deletion_like("delete", model, inputs, attributions, targets, params)
    return _step_validity(info_of(deletion_validity_rate), curves, True, params)


@register_metric(
    MetricInfo(
        name="insertion_validity_rate", category="faithfulness", higher_is_better=True, range=(0.0, 1.0),
        requires=_REQ, cost=_VR_COST, references=_GOMEZ_RELIABILITY,
        description="Share of the insertion curve's steps where the target score rises (the curve's validity rate).",
    )
)
def insertion_validity_rate(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, steps: int = 50,
    baseline: str = "gaussian_blur", baseline_params: dict[str, Any] | None = None, granularity: str | None = None,
    patch_size: int = 1, resample: str = "upsample", output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Share of steps k with s_k < s_{k+1} on `insertion`'s curve (normalize=None, same parameters)."""
    params = metric_params(locals())
    curves = _deletion_like("insert", model, inputs, attributions, targets, params)
    return _step_validity(info_of(insertion_validity_rate), curves, False, params)


def _single_validity(info: MetricInfo, delete: bool, model: nn.Module, inputs: Tensor, attributions: Tensor,
                     targets: Tensor, params: dict[str, Any]) -> MetricResult:
    y, o, const = _single_step(model, inputs, attributions, targets, delete=delete, **params)
    valid = (o < y) if delete else (o > y)
    return _result(info, valid.double(), const, _CONST, params, y, o)


@register_metric(
    MetricInfo(
        name="average_drop_validity_rate", category="faithfulness", higher_is_better=True, range=(0.0, 1.0),
        requires=_REQ, cost=Passes(forwards="2"), references=_GOMEZ_RELIABILITY,
        description="1 when the salient part alone (AD / IIC's masked image) scores higher than the image.",
    )
)
def average_drop_validity_rate(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """``1[O > Y]`` with AD's masked image (per image the value of ``increase_in_confidence``: the
    paper's IIC_AD validity rate is IIC's mean)."""
    params = metric_params(locals())
    return _single_validity(info_of(average_drop_validity_rate), False, model, inputs, attributions, targets, params)


@register_metric(
    MetricInfo(
        name="average_drop_in_deletion_validity_rate", category="faithfulness", higher_is_better=True,
        range=(0.0, 1.0), requires=_REQ, cost=Passes(forwards="2"), references=_GOMEZ_RELIABILITY,
        description="1 when removing the salient part (ADD's masked image) lowers the target score.",
    )
)
def average_drop_in_deletion_validity_rate(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, *, baseline: str = "black",
    baseline_params: dict[str, Any] | None = None, output: str = "softmax", max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """``1[O < Y]`` with ADD's masked image (the salient part removed)."""
    params = metric_params(locals())
    return _single_validity(info_of(average_drop_in_deletion_validity_rate), True, model, inputs, attributions, targets,
                            params)
