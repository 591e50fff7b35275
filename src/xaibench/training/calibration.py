"""Calibration errors: ECE (equal-width bins), adaptive ECE (equal-mass bins) and class-wise ECE.

Inputs are softmax probabilities [N, C] and labels [N]; the top-label quantities are the
confidence ``max_c p_c`` and the hit ``argmax_c p_c == label``. Every error is
``sum_b |B_b| / N * |mean confidence(B_b) - mean hit(B_b)|`` over the non-empty bins b:

- `expected_calibration_error`: 15 equal-width bins ``[k/15, (k+1)/15)`` (the last closed), computed
  by torchmetrics (``binary_calibration_error`` of (confidence, hit), which equals its multiclass
  top-label ECE);
- `adaptive_calibration_error` (AdaECE, Mukhoti et al. 2020): bins holding equal numbers of samples;
  the edges interpolate the sorted confidences as their reference code does (``np.interp`` of
  ``np.linspace(0, N, n_bins + 1)``), a sample falls in ``(lower, upper]``; the smallest confidence
  belongs to the first bin (their code drops it);
- `classwise_calibration_error` (Kull et al. 2019): for every class c, the ECE of the
  one-vs-rest pair (p_c, 1[label = c]) with equal-width bins, averaged over the classes.

Inputs are checked (`xaibench.checks`): probabilities are rows in [0, 1] summing to 1 (logits
are refused: apply softmax first), labels class indices in [0, C), confidences in [0, 1] with
0/1 hits, at least one sample, and ``n_bins`` an int >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xaibench.checks import check_count, check_number, check_probabilities, check_targets
from xaibench.errors import InputError

N_BINS = 15


def _check(probs: Tensor, labels: Tensor) -> Tensor:
    """Labels [N] as long on the probabilities' device (see module doc for what is checked)."""
    check_probabilities(probs, "probs")
    return check_targets(labels, probs.shape[0], probs.shape[1], name="labels", broadcast=False).to(probs.device)


def _check_confidences(conf: Tensor, hits: Tensor, n_bins: int) -> None:
    for name, t in (("conf", conf), ("hits", hits)):
        if not isinstance(t, Tensor) or t.ndim != 1 or t.numel() == 0:
            raise InputError(f"{name} must be a non-empty tensor [N], got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if conf.shape != hits.shape:
        raise InputError(f"conf has {conf.numel()} entries but hits has {hits.numel()}: one per sample")
    check_number(conf.float(), "conf (top-label confidences)")
    if not ((hits == 0) | (hits == 1)).all():
        raise InputError("hits must be 0 or 1 (whether the top label is right)")
    check_count(n_bins, "n_bins")


def top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence [N] float, hit [N] float 0/1) of probabilities [N, C] and labels [N]."""
    labels = _check(probs, labels)
    conf, pred = probs.float().max(dim=1)
    return conf, (pred == labels).float()


def _gap(conf: Tensor, hits: Tensor, bins: Tensor, n_bins: int) -> Tensor:
    """``sum_b |sum conf - sum hits| / N`` over bins `bins` [..., N] (long in [0, n_bins)); [...]."""
    sums = torch.zeros(*bins.shape[:-1], n_bins, dtype=torch.float64, device=conf.device)
    diff = sums.scatter_add(-1, bins, conf.double() - hits.double())
    return (diff.abs().sum(-1) / conf.shape[-1]).float()


def _equal_width(values: Tensor, n_bins: int) -> Tensor:
    """Bin index of every value in equal-width bins of [0, 1] (``[lo, hi)``, the last closed)."""
    return (values.double() * n_bins).floor().long().clamp(0, n_bins - 1)


def _equal_mass_edges(conf: Tensor, n_bins: int) -> Tensor:
    """n_bins + 1 edges: the sorted confidences interpolated at ``linspace(0, N, n_bins + 1)`` (np.interp)."""
    s = conf.double().sort().values
    n = s.numel()
    pos = torch.linspace(0, n, n_bins + 1, dtype=torch.float64, device=conf.device).clamp(max=n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _equal_mass(conf: Tensor, n_bins: int) -> Tensor:
    edges = _equal_mass_edges(conf, n_bins)
    return torch.bucketize(conf.double(), edges[1:-1].contiguous(), right=False)


def expected_calibration_error(probs: Tensor, labels: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """ECE with `n_bins` equal-width bins (torchmetrics), a 0-d float tensor."""
    check_count(n_bins, "n_bins")
    conf, hits = top_label(probs, labels)
    return confidence_calibration_error(conf, hits, n_bins=n_bins)


def confidence_calibration_error(conf: Tensor, hits: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """ECE of top-label confidences [N] and hits [N] (0/1), equal-width bins (torchmetrics)."""
    from torchmetrics.functional.classification import binary_calibration_error

    _check_confidences(conf, hits, n_bins)
    return binary_calibration_error(conf.float(), hits.long(), n_bins=n_bins, norm="l1")


def adaptive_calibration_error(probs: Tensor, labels: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """AdaECE with `n_bins` equal-mass bins (see module doc), a 0-d float tensor."""
    check_count(n_bins, "n_bins")
    conf, hits = top_label(probs, labels)
    return confidence_adaptive_error(conf, hits, n_bins=n_bins)


def confidence_adaptive_error(conf: Tensor, hits: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """AdaECE of top-label confidences [N] and hits [N] (0/1)."""
    _check_confidences(conf, hits, n_bins)
    return _gap(conf, hits, _equal_mass(conf, n_bins), n_bins)


def classwise_calibration_error(probs: Tensor, labels: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """Class-wise ECE: the mean over classes of the one-vs-rest ECE (see module doc), a 0-d tensor."""
    check_count(n_bins, "n_bins")
    labels = _check(probs, labels)
    p = probs.float().T  # [C, N]
    hits = (labels[None, :] == torch.arange(p.shape[0], device=p.device)[:, None]).float()
    return _gap(p, hits, _equal_width(p, n_bins), n_bins).mean()


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin (length n_bins): edges ``lower``/``upper``, mean confidence, accuracy (NaN when empty), count."""

    lower: Tensor
    upper: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor


def reliability_bins(conf: Tensor, hits: Tensor, *, n_bins: int = N_BINS, adaptive: bool = False) -> ReliabilityBins:
    """The bins of a reliability diagram: equal-width (as ECE) or equal-mass (as AdaECE)."""
    _check_confidences(conf, hits, n_bins)
    if adaptive:
        edges = _equal_mass_edges(conf, n_bins)
        bins = _equal_mass(conf, n_bins)
    else:
        edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=conf.device)
        bins = _equal_width(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).scatter_add(0, bins, torch.ones_like(bins, dtype=torch.float64))
    sum_conf = torch.zeros_like(count).scatter_add(0, bins, conf.double())
    sum_hits = torch.zeros_like(count).scatter_add(0, bins, hits.double())
    empty = count == 0
    denom = count.clamp_min(1)
    nan = torch.full_like(count, float("nan"))
    return ReliabilityBins(edges[:-1], edges[1:], torch.where(empty, nan, sum_conf / denom),
                           torch.where(empty, nan, sum_hits / denom), count.long())
