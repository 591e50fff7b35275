"""Focal losses (Lin et al. 2017) and the adaptive focal loss of Mukhoti et al. (2020).

Per sample ``-(1 - p_t)^gamma * log p_t`` with ``p_t`` the softmax probability of the true class,
computed from ``log_softmax`` (stable for any logits). Adaptive: gamma = 5 where p_t < 0.2, 3 where
0.2 <= p_t < 0.5, 1 otherwise; gamma is chosen from the detached p_t and carries no gradient.

Inputs are checked (`xaibench.checks`): logits a non-empty finite float tensor [B, C >= 2],
targets one class index in [0, C) per row (a mean over an empty batch would be NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.checks import check_logits, check_number, check_targets
from xaibench.errors import InputError

REDUCTIONS = ("mean", "sum", "none")
# (upper bound of p_t, gamma) in increasing order; the last gamma applies above the last bound.
ADAPTIVE_GAMMAS = ((0.2, 5.0), (0.5, 3.0))
ADAPTIVE_GAMMA_ABOVE = 1.0


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _checked(logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
    """Class indices [B] for logits [B, C] (see module doc); an unknown `reduction` is an error too."""
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_logits(logits)
    return check_targets(targets, logits.shape[0], logits.shape[1], broadcast=False).to(logits.device)


def _focal(logits: Tensor, targets: Tensor, gamma: Tensor | float, reduction: str) -> Tensor:
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, targets.long()[:, None])[:, 0]
    pt = log_pt.exp()
    return _reduce(-((1.0 - pt) ** gamma) * log_pt, reduction)


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float = 2.0, reduction: str = "mean") -> Tensor:
    """Focal loss with a fixed `gamma` (0 = cross-entropy) of logits [B, C] and class indices [B]."""
    check_number(gamma, "gamma", 0.0, float("inf"))
    targets = _checked(logits, targets, reduction)
    return _focal(logits, targets, float(gamma), reduction)


def adaptive_gamma(pt: Tensor) -> Tensor:
    """Gamma per sample from the true-class probability (see module doc), same shape as `pt`."""
    if not isinstance(pt, Tensor) or not pt.is_floating_point():
        raise InputError(f"pt must be a float tensor of probabilities, got {getattr(pt, 'dtype', type(pt).__name__)}")
    check_number(pt, "pt")
    gamma = torch.full_like(pt, ADAPTIVE_GAMMA_ABOVE)
    for bound, value in reversed(ADAPTIVE_GAMMAS):
        gamma = torch.where(pt < bound, torch.full_like(pt, value), gamma)
    return gamma


def adaptive_focal_loss(logits: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    """Adaptive focal loss (gamma 5 / 3 / 1 by p_t, see module doc) of logits [B, C], class indices [B]."""
    targets = _checked(logits, targets, reduction)
    with torch.no_grad():
        pt = F.softmax(logits.float(), dim=1).gather(1, targets.long()[:, None])[:, 0]
    return _focal(logits, targets, adaptive_gamma(pt), reduction)
