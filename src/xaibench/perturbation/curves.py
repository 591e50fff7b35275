"""Summaries of perturbation curves: trapezoid areas and per-row Pearson correlations."""

from __future__ import annotations

import torch
from torch import Tensor


def trapezoid(curves: Tensor, dx: float | Tensor = 1.0) -> Tensor:
    """Composite trapezoid rule along the last axis with spacing `dx` (scalar or [B]); [B]."""
    y = curves.double()
    area = (y[:, 1:] + y[:, :-1]).sum(dim=1) * 0.5
    return area * (dx.double() if isinstance(dx, Tensor) else dx)


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair of `a`, `b` [B, K]; NaN where a row is constant."""
    constant = (a.amax(dim=1) == a.amin(dim=1)) | (b.amax(dim=1) == b.amin(dim=1))
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(dim=1) / den.clamp_min(1e-300)
    return torch.where(constant, torch.full_like(r, float("nan")), r.clamp(-1.0, 1.0))
