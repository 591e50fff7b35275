"""Built-in data: scikit-learn's real handwritten digits, plain and with a spurious coloured square.

The 1797 8x8 images of `sklearn.datasets.load_digits` (intensities 0..16) are scaled to [0, 1] and
upsampled bilinearly (``align_corners=False``) to 32x32; the grey value is copied to the three RGB
channels (bright strokes on black). A stratified, seeded 70/30 split gives ``train`` (1257 images)
and ``test`` (540 images); image ids are ``digits-<index into load_digits>``.

Masks (bool [32, 32], identical in both sets):

- ``square``: the 6x6 square in the bottom-left corner (rows 26..31, columns 0..5), the region
  where ``builtin:digits-spurious`` draws its square (strokes reach it in about 2% of the images);
- ``digit``: the stroke pixels, upsampled intensity > 0.3, outside the square region.

``builtin:digits-spurious`` draws the square in one of 10 distinct colours (`COLOURS`). In
``train`` and ``test`` (alias ``correlated``) its colour is the label's colour, so colour alone
predicts the class. Two splits hold the test images with the colour's link to the label broken
(their ids are those of ``test``, the same digits, so results on the splits can be paired):

- ``uncorrelated`` (Bang, Boggust & Satyanarayan's uncorrelated test set): the colour is still a
  function of the label, through one shuffled palette (`UNCORRELATED_PALETTE`, a seeded permutation
  with no class kept on its own colour): every image of class c has the colour of class
  ``palette[c]``. A model that reads the square is consistently misled (its accuracy falls to about
  0 and its errors follow the palette), so it measures reliance on the colour;
- ``random_colour``: a colour drawn uniformly at random per image (seeded), independent of the
  label: the square carries no information (it matches the label in about 1 image in 10), so it
  measures what the model does when the cue is noise.

The default mask is ``digit``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image, resize_crop_mask
from xaibench.errors import InputError

SIZE = 32
SQUARE = (slice(26, 32), slice(0, 6))  # rows, columns of the spurious square
STROKE_THRESHOLD = 0.3
SPLIT_SEED = 0
TEST_FRACTION = 0.3
UNCORRELATED_SEED = 1
# the uncorrelated split's palette: class c gets colour UNCORRELATED_PALETTE[c] (randperm(10), seed 1)
UNCORRELATED_PALETTE = torch.randperm(10, generator=torch.Generator().manual_seed(UNCORRELATED_SEED))
CLASSES = [str(i) for i in range(10)]
# One colour per class (RGB in [0, 1]); none is grey, so a square never looks like a stroke.
COLOURS = torch.tensor(
    [
        [1.0, 0.0, 0.0],  # 0 red
        [0.0, 1.0, 0.0],  # 1 green
        [0.0, 0.0, 1.0],  # 2 blue
        [1.0, 1.0, 0.0],  # 3 yellow
        [1.0, 0.0, 1.0],  # 4 magenta
        [0.0, 1.0, 1.0],  # 5 cyan
        [1.0, 0.5, 0.0],  # 6 orange
        [0.5, 0.0, 1.0],  # 7 violet
        [0.5, 0.25, 0.0],  # 8 brown
        [0.0, 0.5, 0.5],  # 9 teal
    ]
)

SPLITS = {
    "digits": ("train", "test"),
    "digits-spurious": ("train", "test", "correlated", "uncorrelated", "random_colour"),
}


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[Tensor, Tensor, dict[str, np.ndarray]]:
    """(grey images float32 [N, 32, 32] in [0, 1], labels long [N], split name -> indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    small = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    grey = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    labels = torch.tensor(data.target, dtype=torch.long)
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=TEST_FRACTION, stratify=data.target, random_state=SPLIT_SEED)
    return grey, labels, {"train": np.sort(train), "test": np.sort(test)}


def square_mask() -> Tensor:
    """bool [32, 32]: the spurious square's region."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[SQUARE] = True
    return mask


class DigitsDataset(ImageDataset):
    """``builtin:digits`` / ``builtin:digits-spurious`` (see the module doc). Held in memory."""

    def __init__(self, name: str, split: str = "test", image_size: int | None = None) -> None:
        if name not in SPLITS:
            raise InputError(f"unknown built-in digits set {name!r}")
        if split not in SPLITS[name]:
            raise InputError(f"builtin:{name} has no split {split!r}; known splits: {', '.join(SPLITS[name])}")
        self.spec = f"builtin:{name}"
        self.split = split
        self.classes = list(CLASSES)
        self.mask_names = ("digit", "square")
        self.default_mask = "digit"
        self.image_size = image_size
        grey, labels, splits = digits_arrays()
        idx = torch.as_tensor(splits["train" if split == "train" else "test"])
        self.indices = idx
        self.labels = labels[idx]
        images = grey[idx][:, None].expand(-1, 3, -1, -1).clone()
        square = square_mask()
        digit = (grey[idx] > STROKE_THRESHOLD) & ~square
        self.colours: Tensor | None = None
        if name == "digits-spurious":
            if split == "uncorrelated":
                colour_ids = UNCORRELATED_PALETTE[self.labels]
            elif split == "random_colour":
                gen = torch.Generator().manual_seed(UNCORRELATED_SEED)
                colour_ids = torch.randint(0, len(COLOURS), (len(idx),), generator=gen)
            else:
                colour_ids = self.labels.clone()
            self.colours = colour_ids
            images[:, :, SQUARE[0], SQUARE[1]] = COLOURS[colour_ids][:, :, None, None]
        self.images = images
        self.digit_masks = digit
        self.square = square

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        image = resize_crop_image(self.images[i], self.image_size).clone()  # callers may modify it
        masks = {
            "digit": resize_crop_mask(self.digit_masks[i], self.image_size).clone(),
            "square": resize_crop_mask(self.square, self.image_size).clone(),
        }
        return make_sample(image, int(self.labels[i]), f"digits-{int(self.indices[i]):04d}", masks, self.default_mask)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images [N, 3, 32, 32] and labels [N] at once (for training the built-in models)."""
        return self.images, self.labels
