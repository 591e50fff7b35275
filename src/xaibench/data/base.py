"""Samples, batches and the data-set base class shared by every loader.

Conventions: images are float32 [3, H, W] in [0, 1] (RGB pixel space, no normalisation: models
returned by `xaibench.load_model` normalise inside); labels are class indices; masks are bool
[H, W] at the image's resolution, keyed by name (``digit``, ``square``, ``mask``, ``box``, ...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from xaibench.errors import InputError


@dataclass
class Sample:
    """One image of a data set.

    image:  float32 [3, H, W] in [0, 1]
    label:  class index (into the data set's ``classes``)
    id:     an identifier unique within the data set (file stem / index based)
    masks:  name -> bool [H, W] human annotations (may be empty)
    mask:   the default mask: the very same tensor object as one entry of ``masks``, or None
    """

    image: Tensor
    label: int
    id: str
    masks: dict[str, Tensor] = field(default_factory=dict)
    mask: Tensor | None = None


@dataclass
class Batch:
    """Samples stacked: images [B, 3, H, W], labels long [B], ids, masks name -> bool [B, H, W].

    Only mask names that every sample has are kept.
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    masks: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a `Batch`; all images must have the same size (pass ``image_size`` otherwise)."""
    samples = list(samples)
    if not samples:
        raise InputError("collate: no samples")
    sizes = {tuple(s.image.shape) for s in samples}
    if len(sizes) > 1:
        shown = ", ".join(f"{s.id}: {tuple(s.image.shape[-2:])}" for s in samples[:6])
        raise InputError(
            f"collate: images have different sizes ({shown}{', ...' if len(samples) > 6 else ''}); "
            "load the data set with image_size=<int> to resize and centre-crop them"
        )
    names = set(samples[0].masks)
    for s in samples[1:]:
        names &= set(s.masks)
    return Batch(
        images=torch.stack([s.image for s in samples]).float(),
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.long),
        ids=[str(s.id) for s in samples],
        masks={n: torch.stack([s.masks[n] for s in samples]).bool() for n in sorted(names)},
    )


@dataclass(frozen=True)
class ImageRecord:
    """What a run needs to know about one image before it runs (`ImageDataset.describe`).

    id:      the sample's id
    sha256:  hash of its content (image, label and annotations as stored)
    size:    (H, W) of the image as the data set returns it
    masks:   names of the masks the sample has
    missing: mask name -> the file that would hold it, for masks of the data set this sample lacks
    """

    id: str
    sha256: str
    size: tuple[int, int]
    masks: tuple[str, ...]
    missing: dict[str, str] = field(default_factory=dict)


def tensor_digest(*parts: object) -> str:
    """sha256 over tensors (dtype, shape, bytes) and other values (their repr), in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


class ImageDataset(Dataset):
    """Base class of xaibench data sets: ``len(ds)``, ``ds[i] -> Sample``, plus metadata.

    classes:      class names, index = label
    mask_names:   names of the masks the samples carry
    default_mask: the name of ``Sample.mask`` (None when there is none)
    spec, split:  what `load_dataset` was called with
    """

    classes: list[str]
    mask_names: tuple[str, ...]
    default_mask: str | None
    spec: str
    split: str

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def describe(self, index: int) -> ImageRecord:
        """Id, content hash, size and masks of sample `index` (this default reads the sample)."""
        s = self[index]
        masks = dict(sorted(s.masks.items()))
        return ImageRecord(s.id, tensor_digest(s.image, int(s.label), *masks.items()), tuple(s.image.shape[-2:]),
                           tuple(masks), {n: "" for n in self.mask_names if n not in masks})

    def _index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images")
        return i

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(spec={self.spec!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, masks={list(self.mask_names)})")


def make_sample(image: Tensor, label: int, id: str, masks: dict[str, Tensor], default: str | None) -> Sample:
    """A `Sample` whose ``mask`` is the very object ``masks[default]`` (None when absent)."""
    return Sample(image=image, label=int(label), id=id, masks=masks, mask=masks.get(default) if default else None)


# --- geometry shared by image, masks and boxes ----------------------------------------------------


def resize_crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): resize so the shorter side is `size` (longer side rounded), then
    centre-crop `size` x `size` starting at (top, left) of the resized image."""
    if size < 1:
        raise InputError(f"image_size must be >= 1, got {size}")
    scale = size / min(height, width)
    new_h = size if height <= width else max(size, int(round(height * scale)))
    new_w = size if width <= height else max(size, int(round(width * scale)))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return new_h, new_w, top, left


def resize_crop_image(image: Tensor, size: int | None) -> Tensor:
    """[3, H, W] -> [3, size, size]: bilinear (antialiased) resize of the shorter side, centre crop."""
    if size is None:
        return image
    h, w = image.shape[-2:]
    new_h, new_w, top, left = resize_crop_geometry(h, w, size)
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 1)
    return image[:, top:top + size, left:left + size].contiguous()


def resize_crop_mask(mask: Tensor, size: int | None) -> Tensor:
    """bool [H, W] -> bool [size, size]: the image's geometry with nearest-neighbour sampling at pixel
    centres (``nearest-exact``: output pixel i reads input pixel floor((i + 0.5) * H / new_h))."""
    if size is None:
        return mask
    h, w = mask.shape[-2:]
    new_h, new_w, top, left = resize_crop_geometry(h, w, size)
    if (new_h, new_w) != (h, w):
        mask = F.interpolate(mask[None, None].float(), size=(new_h, new_w), mode="nearest-exact")[0, 0] > 0.5
    return mask[top:top + size, left:left + size].contiguous()


def rasterise_boxes(boxes: Sequence[tuple[float, float, float, float]], height: int, width: int,
                    size: int | None = None) -> Tensor:
    """bool mask of the union of boxes given in original pixel coordinates.

    A box is (xmin, ymin, xmax, ymax) in the PASCAL VOC convention: 1-based, inclusive pixel
    indices, i.e. the continuous region [xmin - 1, xmax) x [ymin - 1, ymax) of an image `width` x
    `height`. With `size`, the region is scaled by the resize of `resize_crop_geometry` and shifted
    by its crop; a pixel is in the mask when its centre lies in a scaled box.
    """
    if size is None:
        new_h, new_w, top, left, out_h, out_w = height, width, 0, 0, height, width
    else:
        new_h, new_w, top, left = resize_crop_geometry(height, width, size)
        out_h = out_w = size
    sy, sx = new_h / height, new_w / width
    ys = torch.arange(out_h, dtype=torch.float64) + 0.5 + top
    xs = torch.arange(out_w, dtype=torch.float64) + 0.5 + left
    mask = torch.zeros(out_h, out_w, dtype=torch.bool)
    for xmin, ymin, xmax, ymax in boxes:
        rows = (ys >= (ymin - 1) * sy) & (ys < ymax * sy)
        cols = (xs >= (xmin - 1) * sx) & (xs < xmax * sx)
        mask |= rows[:, None] & cols[None, :]
    return mask
