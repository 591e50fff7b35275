"""Focus (Arias-Duart et al. 2022): the share of positive relevance on the target-class tiles of a mosaic.

Build mosaics and their target-tile masks with `xaibench.data.mosaics.build_mosaics`. The metric
takes maps [M, h, w] of the mosaics (explaining the mosaic's target class) and ``masks``
[M, 2H, 2W], the union of the target-class tiles; each mask must be constant on each quadrant.
Positive part of the map; coarser maps are upsampled bilinearly to the mask resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, register_metric
from xaibench.metrics.localisation import positive_mass, prepare
from xaibench.passes import Passes


def _check_tiles(masks: Tensor) -> None:
    height, width = masks.shape[-2:]
    if height % 2 or width % 2:
        raise InputError(f"mosaic masks must have even height and width, got {height}x{width}")
    quads = masks.view(masks.shape[0], 2, height // 2, 2, width // 2)
    if not (quads == quads[:, :, :1, :, :1]).all():
        raise InputError("focus masks must mark whole mosaic tiles (constant on each quadrant)")


@register_metric(
    MetricInfo(
        name="focus",
        category="localisation",
        higher_is_better=True,
        range=(0.0, 1.0),
        requires=("attributions", "masks"),
        cost=Passes(note="maps of mosaics"),
        references=(
            "Arias-Duart, Pares, Garcia-Gasulla & Gimenez-Abalos (2022). Focus! Rating XAI methods and finding "
            "biases. FUZZ-IEEE.",
        ),
        description="Positive relevance on the target-class tiles of a 2x2 mosaic over total positive relevance.",
    )
)
def focus(attributions: Tensor, masks: Tensor) -> MetricResult:
    """``sum(max(a,0) on target tiles) / sum(max(a,0))`` per mosaic.

    A map with no positive relevance gives NaN (Quantus divides by ``total + 1e-9`` and returns 0).
    """
    maps, masks = prepare(attributions, masks)
    _check_tiles(masks)
    return positive_mass(focus.info, maps, masks)
