"""``builtin:digits-hard``: the built-in digits under random affine transforms, clutter and noise.

The plain digits are nearly solved by the small built-in CNN, so training settings cannot differ
there; this variant is hard enough for them to differ in accuracy and calibration. Each image of
`xaibench.data.digits` (same 32x32 grey images, same stratified train / test split, same labels)
is changed once, deterministically from the fixed seed `SEED` and the split, in batched torch:

1. a random affine transform of the digit: rotation U(-35, 35) degrees, scale U(0.7, 1.1),
   shear U(-0.3, 0.3), translation U(-0.2, 0.2) of the half-width per axis (``affine_grid`` /
   ``grid_sample``, bilinear, zeros outside, ``align_corners=False``);
2. clutter: `FRAGMENTS` pieces of other digits of the same split (drawn uniformly, any class),
   each zoomed by U(1.0, 1.6), placed at a random shift and cut to a random 8..14-pixel square
   window, at intensity U(0.5, 0.9), merged with the digit by the pixel-wise maximum;
3. Gaussian noise of std `NOISE`, clipped to [0, 1].

The grey result is copied to the three RGB channels. Masks: ``digit``, the transformed digit's
stroke pixels (transformed clean digit > 0.3), and ``clutter``, the pixels where a fragment is
above 0.3; the default mask is ``digit``. Ids are ``digits-hard-<index into load_digits>``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image, resize_crop_mask
from xaibench.data.digits import CLASSES, SIZE, STROKE_THRESHOLD, digits_arrays
from xaibench.errors import InputError

SEED = 0
FRAGMENTS = 2
NOISE = 0.1
SPLITS = ("train", "test")


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _warp(images: Tensor, theta: Tensor) -> Tensor:
    """images [N, H, W] resampled by affine matrices theta [N, 2, 3] (output -> input coordinates)."""
    grid = F.affine_grid(theta, [images.shape[0], 1, *images.shape[-2:]], align_corners=False)
    return F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _affine(gen: torch.Generator, n: int, degrees: float, scale: tuple[float, float], shear: float,
            shift: float) -> Tensor:
    """Random affine matrices [N, 2, 3] in normalised coordinates (rotation, scale, shear, shift)."""
    angle = _uniform(gen, n, -degrees, degrees) * math.pi / 180
    s = _uniform(gen, n, *scale)
    sh = _uniform(gen, n, -shear, shear)
    t = _uniform(gen, 2 * n, -shift, shift).view(n, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    forward = torch.stack([torch.stack([cos, -sin + sh * cos], 1), torch.stack([sin, cos + sh * sin], 1)], 1)
    forward = forward * s[:, None, None]
    inverse = torch.linalg.inv(forward)  # grid_sample reads the input at inverse(output)
    return torch.cat([inverse, -(inverse @ t[:, :, None])], 2)


def _make(grey: Tensor, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """(images [N, H, W], digit masks, clutter masks) of one split."""
    gen = torch.Generator().manual_seed(SEED * 2 + SPLITS.index(split))
    n = grey.shape[0]
    digit = _warp(grey, _affine(gen, n, 35.0, (0.7, 1.1), 0.3, 0.2)).clamp(0, 1)
    image = digit.clone()
    clutter = torch.zeros_like(digit)
    for _ in range(FRAGMENTS):
        source = torch.randint(0, n, (n,), generator=gen)
        zoom = _affine(gen, n, 180.0, (1.0, 1.6), 0.0, 0.6)
        piece = _warp(grey[source], zoom)
        side = torch.randint(8, 15, (n,), generator=gen)
        top = (torch.rand(n, generator=gen) * (SIZE - side + 1)).long()
        left = (torch.rand(n, generator=gen) * (SIZE - side + 1)).long()
        pos = torch.arange(SIZE)
        rows = (pos[None] >= top[:, None]) & (pos[None] < (top + side)[:, None])
        cols = (pos[None] >= left[:, None]) & (pos[None] < (left + side)[:, None])
        piece = piece * (rows[:, :, None] & cols[:, None, :]) * _uniform(gen, n, 0.5, 0.9)[:, None, None]
        clutter = torch.maximum(clutter, piece)
        image = torch.maximum(image, piece)
    image = (image + NOISE * torch.randn(image.shape, generator=gen)).clamp(0, 1)
    return image, digit > STROKE_THRESHOLD, clutter > STROKE_THRESHOLD


@functools.lru_cache(maxsize=2)
def _split(split: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(sklearn indices, labels, images [N, H, W], digit masks, clutter masks) of `split`."""
    grey, labels, splits = digits_arrays()
    idx = torch.as_tensor(splits[split])
    return (idx, labels[idx], *_make(grey[idx], split))


class DigitsHardDataset(ImageDataset):
    """``builtin:digits-hard`` (see the module doc). Held in memory."""

    def __init__(self, split: str = "test", image_size: int | None = None) -> None:
        if split not in SPLITS:
            raise InputError(f"builtin:digits-hard has no split {split!r}; known splits: {', '.join(SPLITS)}")
        self.spec = "builtin:digits-hard"
        self.split = split
        self.classes = list(CLASSES)
        self.mask_names = ("digit", "clutter")
        self.default_mask = "digit"
        self.image_size = image_size
        self.indices, self.labels, grey, self.digit_masks, self.clutter_masks = _split(split)
        self.images = grey[:, None].expand(-1, 3, -1, -1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        image = resize_crop_image(self.images[i], self.image_size).clone()  # callers may modify it
        masks = {
            "digit": resize_crop_mask(self.digit_masks[i], self.image_size).clone(),
            "clutter": resize_crop_mask(self.clutter_masks[i], self.image_size).clone(),
        }
        return make_sample(image, int(self.labels[i]), f"digits-hard-{int(self.indices[i]):04d}", masks,
                           self.default_mask)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images [N, 3, 32, 32] and labels [N] at once (for training)."""
        return self.images.contiguous(), self.labels
