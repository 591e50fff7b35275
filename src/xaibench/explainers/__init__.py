"""Explanation methods behind one batched protocol.

``xaibench.explainer(name, model, **params)`` returns an `Explainer`: calling it on images
[B, C, H, W] in [0, 1] and target classes [B] gives float32 maps [B, H, W] on the model's device;
``.attribute`` gives the raw attribution. ``METHODS`` lists every method with its cost, default
parameters and output resolution. See docs/explainers.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from xaibench.explainers import baselines, cam, gradient  # noqa: F401  (registration)
from xaibench.explainers.base import METHODS, Explainer, MethodInfo, apply_sign, reduce_channels
from xaibench.explainers.cam import find_layer


def explainer(name: str, model: nn.Module, **params: Any) -> Explainer:
    """Build the explainer registered as `name` for `model` (unknown names suggest close ones)."""
    return METHODS.get(name).cls(model, **params)


__all__ = ["METHODS", "Explainer", "MethodInfo", "apply_sign", "explainer", "find_layer", "reduce_channels"]
