"""Summaries of perturbation curves: trapezoid areas."""

from __future__ import annotations

from torch import Tensor


def trapezoid(curves: Tensor, dx: float | Tensor = 1.0) -> Tensor:
    """Composite trapezoid rule along the last axis with spacing `dx` (scalar or [B]); [B]."""
    y = curves.double()
    area = (y[:, 1:] + y[:, :-1]).sum(dim=1) * 0.5
    return area * (dx.double() if isinstance(dx, Tensor) else dx)
