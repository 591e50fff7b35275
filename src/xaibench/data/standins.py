"""Built-in stand-ins for the explanation-alignment recipes, made from the built-in digits.

Each plays the role of a real data set of Bang, Boggust & Satyanarayan (2024) with the same
structure, so every recipe runs here in minutes (images 3 x 32 x 32, splits ``train``/``test`` of
`xaibench.data.digits`, ids ``digits-<index>`` as there):

- ``builtin:digits-tint`` (for CelebA smiling vs hair colour, recipe ``bias``): label ``5-9``
  (1) or ``0-4`` (0), a `FRAME`-pixel frame tinted ``warm`` or ``cool`` (drawn independently of the
  label with a seeded generator, so all four groups exist; a recipe samples biased subsets from
  them). Masks ``digit`` (the task region, as the mouth) and ``frame`` (the bias region, as the
  hair). `attributes` gives ``warm`` / ``cool`` as 0/1.
- ``builtin:digits-regions`` (for CelebAMask-HQ, recipe ``feature-ranking``): the images of
  ``builtin:digits-spurious`` (square colour = label) with four region masks: ``upper`` and
  ``lower`` strokes (rows above / from 16), ``square`` and ``background`` (the rest).
- ``builtin:digits-low`` / ``builtin:digits-high`` (source / target of recipe ``transfer``): the
  digits 0-4 / 5-9, labels 0-4 (``digits-high``: label = digit - 5), mask ``digit``.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image, resize_crop_mask
from xaibench.data.digits import SIZE, STROKE_THRESHOLD, DigitsDataset, digits_arrays, square_mask
from xaibench.errors import InputError

FRAME = 3
TINT_SEED = 2
TINTS = torch.tensor([[1.0, 0.55, 0.0], [0.0, 0.45, 1.0]])  # warm (orange), cool (blue)
SPLITS = ("train", "test")
NAMES = ("digits-tint", "digits-regions", "digits-low", "digits-high")


def frame_mask() -> Tensor:
    """bool [32, 32]: the outer `FRAME` pixels of the image."""
    mask = torch.ones(SIZE, SIZE, dtype=torch.bool)
    mask[FRAME:-FRAME, FRAME:-FRAME] = False
    return mask


class StandIn(ImageDataset):
    """A stand-in held in memory: images [N, 3, 32, 32], labels, ids and masks [N, 32, 32] per name."""

    def __init__(self, name: str, split: str, image_size: int | None) -> None:
        if name not in NAMES:
            raise InputError(f"unknown stand-in {name!r}; known: {', '.join(NAMES)}")
        if split not in SPLITS:
            raise InputError(f"builtin:{name} has no split {split!r}; known splits: {', '.join(SPLITS)}")
        self.spec, self.split, self.image_size = f"builtin:{name}", split, image_size
        self.extra = pd.DataFrame()
        build = {"digits-tint": self._tint, "digits-regions": self._regions,
                 "digits-low": self._low_high, "digits-high": self._low_high}[name]
        build(name)
        self.mask_names = tuple(self.masks)
        self.default_mask = self.mask_names[0]

    def _tint(self, name: str) -> None:
        grey, labels, splits = digits_arrays()
        idx = torch.as_tensor(splits[self.split])
        gen = torch.Generator().manual_seed(TINT_SEED + SPLITS.index(self.split))
        tint = torch.randint(0, 2, (len(idx),), generator=gen)
        frame = frame_mask()
        images = grey[idx][:, None].expand(-1, 3, -1, -1).clone()
        images[:, :, frame] = TINTS[tint][:, :, None]
        self.images, self.labels = images, (labels[idx] >= 5).long()
        self.ids = [f"digits-{int(i):04d}" for i in idx]
        self.classes = ["0-4", "5-9"]
        self.masks = {"digit": (grey[idx] > STROKE_THRESHOLD) & ~frame, "frame": frame.expand(len(idx), -1, -1)}
        self.extra = pd.DataFrame({"warm": (tint == 0).long().numpy(), "cool": (tint == 1).long().numpy()})

    def _regions(self, name: str) -> None:
        base = DigitsDataset("digits-spurious", split=self.split)
        digit, square = base.digit_masks, square_mask().expand(len(base), -1, -1)
        upper = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        upper[: SIZE // 2] = True
        self.images, self.labels, self.classes = base.images, base.labels, base.classes
        self.ids = [f"digits-{int(i):04d}" for i in base.indices]
        self.masks = {"upper": digit & upper, "lower": digit & ~upper, "square": square,
                      "background": ~(digit | square)}

    def _low_high(self, name: str) -> None:
        base = DigitsDataset("digits", split=self.split)
        keep = base.labels < 5 if name == "digits-low" else base.labels >= 5
        offset = 0 if name == "digits-low" else 5
        self.images, self.labels = base.images[keep], base.labels[keep] - offset
        self.ids = [f"digits-{int(i):04d}" for i in base.indices[keep]]
        self.classes = [str(d + offset) for d in range(5)]
        self.masks = {"digit": base.digit_masks[keep]}

    def __len__(self) -> int:
        return len(self.ids)

    def attributes(self) -> pd.DataFrame:
        """One row per image (data set order): ``id`` and the stand-in's attributes (0/1)."""
        return self.extra.assign(id=self.ids)

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        masks = {n: resize_crop_mask(m[i], self.image_size).clone() for n, m in self.masks.items()}
        image = resize_crop_image(self.images[i], self.image_size).clone()
        return make_sample(image, int(self.labels[i]), self.ids[i], masks, self.default_mask)
