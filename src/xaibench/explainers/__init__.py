"""Explanation methods behind one batched protocol.

``xaibench.explainer(name, model, **params)`` returns an `Explainer`: calling it on images
[B, C, H, W] in [0, 1] and target classes [B] gives float32 maps [B, H, W] on the model's device;
``.attribute`` gives the raw attribution. ``METHODS`` lists every method with its cost, default
parameters and output resolution. See docs/explainers.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from xaibench.config import suggest
from xaibench.errors import InputError
from xaibench.explainers import baselines, cam, gradient  # noqa: F401  (registration)
from xaibench.explainers import classifier_cam, perturbative, sampling  # noqa: F401  (registration)
from xaibench.explainers import cam_family, lrp, surrogate, transformer  # noqa: F401  (registration)
from xaibench.explainers.base import METHODS, Explainer, MethodInfo, apply_sign, reduce_channels
from xaibench.explainers.cam import find_layer


def explainer(name: str, model: nn.Module, differentiable: bool = False, **params: Any) -> Explainer:
    """Build the explainer registered as `name` for `model`.

    ``differentiable=True``: maps that carry gradient to the model's weights (see
    `xaibench.explainers.differentiable`). Unknown method names raise `UnknownNameError`, unknown
    parameters `InputError`, both with the closest valid names.
    """
    info = METHODS.get(name)
    cls = info.cls
    if differentiable:
        from xaibench.explainers.differentiable import differentiable_class

        cls = differentiable_class(info)
    known = list(info.params)
    for key in params:
        if key not in known:
            raise InputError(f"method {info.name!r} has no parameter {key!r}.{suggest(key, known)} "
                             f"Known: {', '.join(known)}.")
    return cls(model, **params)


__all__ = ["METHODS", "Explainer", "MethodInfo", "apply_sign", "explainer", "find_layer", "reduce_channels"]
