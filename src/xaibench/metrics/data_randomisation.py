"""Adebayo et al.'s data randomisation test: maps of a model and of its twin trained on permuted labels.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. Sanity checks for saliency maps. NeurIPS 2018.
The same architecture is trained twice by the same trainer, once on the true labels and once on
labels permuted at random (it can only memorise); a method whose maps stay similar for the two
models does not depend on the relation between images and labels, and fails the test.

`map_similarity(maps, other_maps)` -> (Spearman, SSIM) per image: Spearman's rank correlation of
the flattened maps (average ranks for ties) and the mean SSIM (`xaibench.metrics.similarity.ssim`,
skimage's defaults: 7x7 uniform window) of the maps min-max normalised per image to [0, 1] with data
range 1, so that the two models' different map scales do not count. ``absolute=True`` (default)
compares |maps|, Adebayo et al.'s main variant. A constant map gives NaN (no ranking, no range).

`data_randomisation_test(model, permuted_model, inputs, targets, method, **params)` explains the same
images and classes with both models (a fresh explainer each, same parameters and seed) and returns
the similarities with both sets of maps. This is not the autotimm facade's
``data_randomization_test`` (`xaibench.compat`), which compares one model's maps for the target
class and for another class (Sixt et al.'s random-logit check) and retrains nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.metrics.similarity import spearman, ssim


class DataRandomisation(NamedTuple):
    """Per-image similarities [B] (float32, NaN where undefined) and the two models' maps [B, H, W]."""

    spearman: Tensor
    ssim: Tensor
    maps: Tensor
    permuted_maps: Tensor


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    return ((flat - lo) / torch.where(span > 0, span, torch.nan)).view_as(maps)


def map_similarity(maps: Tensor, other_maps: Tensor, *, absolute: bool = True) -> tuple[Tensor, Tensor]:
    """(Spearman [B], SSIM [B]) between two batches of maps [B, H, W] (see the module doc)."""
    if maps.ndim != 3 or maps.shape != other_maps.shape:
        raise InputError(f"need two map batches [B, H, W] of one shape, got {tuple(maps.shape)} and "
                         f"{tuple(other_maps.shape)}")
    a, b = (maps.abs(), other_maps.abs()) if absolute else (maps, other_maps)
    rho = spearman(a, b)
    na, nb = _minmax(a.double()), _minmax(b.double())
    undefined = torch.isnan(na).flatten(1).any(1) | torch.isnan(nb).flatten(1).any(1)
    s = ssim(torch.nan_to_num(na), torch.nan_to_num(nb), data_range=1.0)
    return rho, s.masked_fill(undefined.to(s.device), float("nan"))


def data_randomisation_test(model: nn.Module, permuted_model: nn.Module, inputs: Tensor, targets: Tensor,
                            method: str, *, absolute: bool = True, batch: int = 32,
                            **params: Any) -> DataRandomisation:
    """Maps of `method` (explainer parameters `params`) for `model` and `permuted_model` on the same
    images and classes, `batch` images per call, and their per-image similarities."""
    from xaibench.explainers import explainer

    out = []
    for net in (model, permuted_model):
        exp = explainer(method, net, **params)
        out.append(torch.cat([exp(inputs[s:s + batch], targets[s:s + batch]).detach()
                              for s in range(0, inputs.shape[0], batch)]))
    rho, s = map_similarity(out[0], out[1], absolute=absolute)
    return DataRandomisation(rho, s, out[0], out[1])
