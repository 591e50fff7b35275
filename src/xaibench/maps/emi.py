"""Explanation-masked images (EMIs, MAPS): keep the pixels an attribution map ranks highest, grey out the rest.

Conventions (as MAPS' ``generate_emis.py``):

- each map channel is made non-negative (``|A|``) and divided by its own maximum (left as is
  where the maximum is 0);
- the threshold ``t`` is the p-th percentile, with linear interpolation (NumPy's default), of all
  channel values of the image together;
- a pixel is kept where any channel is ``>= t``: so with identical channels exactly the top
  (100 - p) % of pixels are kept, up to ties at the threshold;
- a *positive* EMI fills the pixels that are not kept, a *negative* EMI fills the kept ones.

A map [B, H, W] (xaibench's channel-reduced maps) behaves as C identical channels, C being the
number of image channels. Maps of another resolution are resized to the images' (bilinear for
maps coarser than the image, area for finer ones) before thresholding.

The fill value is given in pixel space (images in [0, 1], xaibench's convention). MAPS fills with
0.5 *in the model's normalised input space*; `MAPS_FILL` is that grey for ImageNet mean and std
(the default, for compatibility), and `normalised_fill` converts for other normalisations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.checks import DEFAULT_RANGE, check_images, check_number
from xaibench.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAPS_PERCENTILES = (50, 60, 65, 70, 75, 80, 85, 90, 95, 97, 98, 99)
KINDS = ("positive", "negative")


def normalised_fill(value: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> tuple[float, ...]:
    """The pixel-space colour that a model normalising with (mean, std) sees as `value` in every channel."""
    check_number(value, "value", -1e6, 1e6)
    if len(mean) != len(std) or not len(mean):
        raise InputError(f"mean and std need one value per channel each, got {len(mean)} and {len(std)}")
    for s in std:
        check_number(s, "std", 0.0, float("inf"), open_low=True)
    return tuple(value * s + m for m, s in zip(mean, std))


MAPS_FILL = normalised_fill(0.5)  # (0.5995, 0.568, 0.5185): MAPS' grey, in pixel space


def _as_channels(attributions: Tensor, inputs: Tensor) -> Tensor:
    """Attributions as float [B, C, H, W] at the images' resolution."""
    b, c, h, w = inputs.shape
    if attributions.ndim == 3:
        attributions = attributions.unsqueeze(1)
    if attributions.ndim != 4 or attributions.shape[0] != b or attributions.shape[1] not in (1, c):
        raise InputError(
            f"attributions must be maps [B, H, W] or [B, C, H, W] for images {tuple(inputs.shape)}, "
            f"got shape {tuple(attributions.shape)}"
        )
    if not attributions.is_floating_point():
        attributions = attributions.float()
    if not torch.isfinite(attributions).all():
        bad = (~torch.isfinite(attributions)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputError(f"attributions of images {bad[:10]} contain NaN or Inf values")
    if attributions.shape[-2:] != (h, w):
        mode = "area" if attributions.shape[-2] > h else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        attributions = F.interpolate(attributions, size=(h, w), mode=mode, **kwargs)
    return attributions.expand(b, c, h, w)


def keep_mask(inputs: Tensor, attributions: Tensor, percentile: float) -> Tensor:
    """Bool [B, H, W]: the pixels a positive EMI at `percentile` keeps (see the module conventions)."""
    check_number(percentile, "percentile", 0.0, 100.0)
    check_images(inputs)
    if not isinstance(attributions, Tensor):
        raise InputError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    maps = _as_channels(attributions, inputs).abs()
    peak = maps.amax(dim=(2, 3), keepdim=True)
    maps = torch.where(peak > 0, maps / torch.where(peak > 0, peak, 1.0), maps)
    values = maps.flatten(1).sort(dim=1).values  # [B, C*H*W]
    pos = float(percentile) / 100.0 * (values.shape[1] - 1)
    lo, frac = int(pos), pos - int(pos)
    hi = min(lo + 1, values.shape[1] - 1)
    threshold = values[:, lo] + (values[:, hi] - values[:, lo]) * frac  # NumPy's 'linear' percentile
    return (maps >= threshold.view(-1, 1, 1, 1)).any(dim=1)


def emi(inputs: Tensor, attributions: Tensor, percentile: float, *,
        fill: float | Sequence[float] | Tensor = MAPS_FILL, kind: str = "positive") -> Tensor:
    """Explanation-masked images [B, C, H, W] of `inputs` (images in [0, 1]) at `percentile`.

    `fill`: pixel-space value, one per channel or one for all (default `MAPS_FILL`, MAPS' 0.5 in
    ImageNet-normalised space). `kind`: "positive" keeps the top pixels, "negative" removes them.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    check_images(inputs, value_range=DEFAULT_RANGE)
    keep = keep_mask(inputs, attributions, percentile).unsqueeze(1)
    try:
        colour = torch.as_tensor(fill, dtype=inputs.dtype, device=inputs.device).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"fill must be a pixel value in [0, 1] or one per channel, got {fill!r}") from None
    c = inputs.shape[1]
    if colour.numel() not in (1, c):
        raise InputError(f"fill must have 1 or {c} values (one per image channel), got {colour.numel()}")
    check_number(colour, "fill (pixel-space colour)", *DEFAULT_RANGE)
    colour = colour.view(1, -1, 1, 1)
    return torch.where(keep if kind == "positive" else ~keep, inputs, colour)

