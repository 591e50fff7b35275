"""CelebAMask-HQ in its published layout: face images with per-region masks, grouped into regions.

``celebamask-hq:<root>`` (label: ``Smiling``) or ``celebamask-hq:<root>#<Attribute>``::

    <root>/CelebA-HQ-img/<i>.jpg                                  images (1024 x 1024), i = 0 .. 29999
    <root>/CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png  one binary PNG per annotated part (512 x 512)
    <root>/CelebAMask-HQ-attribute-anno.txt                       count line, 40 names, "<i>.jpg +-1 x 40" rows
    <root>/CelebA-HQ-to-CelebA-mapping.txt                        "idx orig_idx orig_file" (header line)

Masks are the paper's region unions (Bang, Boggust & Satyanarayan 2024), `REGIONS`: ``hair``,
``eye`` (both brows and eyes), ``mouth`` (both lips and the mouth), ``neck``, ``nose``, ``skin``,
``cloth``. A part PNG that does not exist means the part is not in the image (an empty region, as
CelebAMask-HQ omits absent parts); masks are upsampled (nearest) to the image's size. Splits follow
CelebA's evaluation partition of the original image (``orig_idx``): ``train`` (< 162770),
``valid`` (< 182637), ``test``, and ``all``. Image ids are ``hq-<i>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image, resize_crop_mask
from xaibench.data.celeba import check_attribute, find_root, parse_spec, read_table
from xaibench.errors import InputError

IMAGES = "CelebA-HQ-img"
MASKS = "CelebAMask-HQ-mask-anno"
ATTRIBUTES = "CelebAMask-HQ-attribute-anno.txt"
MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
PER_FOLDER = 2000
REGIONS: dict[str, tuple[str, ...]] = {
    "hair": ("hair",),
    "eye": ("l_brow", "r_brow", "l_eye", "r_eye"),
    "mouth": ("l_lip", "u_lip", "mouth"),
    "neck": ("neck",),
    "nose": ("nose",),
    "skin": ("skin",),
    "cloth": ("cloth",),
}
# CelebA's evaluation partition: first original index of valid and of test.
VALID_FROM, TEST_FROM = 162770, 182637


def part_path(root: Path, index: int, part: str) -> Path:
    return root / MASKS / str(index // PER_FOLDER) / f"{index:05d}_{part}.png"


def read_part(path: Path) -> Tensor | None:
    """bool [h, w] of a part PNG (nonzero = inside), or None when the file does not exist."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            grey = img.convert("L")
    except Exception as err:  # PIL raises many types for corrupt files
        raise InputError(f"cannot read mask {path}: {err}") from err
    return torch.from_numpy(np.asarray(grey) > 0)


class CelebAMaskHQDataset(ImageDataset):
    """``celebamask-hq:<root>[#Attribute]`` (see the module doc)."""

    def __init__(self, rest: str, split: str = "test", image_size: int | None = None) -> None:
        root, attribute = parse_spec(rest)
        splits = ("train", "valid", "test", "all")
        if split not in splits:
            raise InputError(f"CelebAMask-HQ has no split {split!r}; known splits: {', '.join(splits)}")
        self.root = find_root(root, ATTRIBUTES, "CelebAMask-HQ")
        for folder in (IMAGES, MASKS):
            if not (self.root / folder).is_dir():
                raise InputError(f"missing folder {self.root / folder}")
        self.spec, self.split, self.image_size = f"celebamask-hq:{rest}", split, image_size
        attrs = read_table(self.root / ATTRIBUTES, 2)
        check_attribute(attribute, list(attrs.columns), self.root / ATTRIBUTES)
        mapping = read_table(self.root / MAPPING, 1)
        if "orig_idx" not in mapping.columns and "orig_idx" != mapping.index.name:
            raise InputError(f"{self.root / MAPPING}: expected the columns idx, orig_idx, orig_file")
        mapping = mapping.reset_index()
        orig = mapping.set_index("idx")["orig_idx"]
        hq = np.array(sorted(int(Path(f).stem) for f in attrs.index))
        origin = orig.reindex(hq).to_numpy()
        if np.isnan(origin.astype(float)).any():
            raise InputError(f"{self.root / MAPPING} lacks image {int(hq[np.isnan(origin.astype(float))][0])}")
        keep = {"train": origin < VALID_FROM, "valid": (origin >= VALID_FROM) & (origin < TEST_FROM),
                "test": origin >= TEST_FROM, "all": np.ones(len(hq), dtype=bool)}[split]
        self.indices = hq[keep].tolist()
        self.attribute = attribute
        self.table = (attrs.loc[[f"{i}.jpg" for i in self.indices]] > 0).astype("int64")
        self.labels = torch.tensor(self.table[attribute].to_numpy())
        self.classes = [f"not {attribute}", attribute]
        self.mask_names = tuple(REGIONS)
        self.default_mask = None

    def __len__(self) -> int:
        return len(self.indices)

    def attributes(self) -> pd.DataFrame:
        """One row per image (data set order): ``id`` and the 40 attributes as 0/1."""
        return self.table.reset_index(drop=True).assign(id=[f"hq-{i}" for i in self.indices])

    def region(self, index: int, name: str, size: tuple[int, int]) -> Tensor:
        """bool [H, W] (the image's size): the union of the region's part masks of image `index`."""
        union: Tensor | None = None
        for part in REGIONS[name]:
            mask = read_part(part_path(self.root, index, part))
            if mask is not None:
                union = mask if union is None else union | mask
        if union is None:
            return torch.zeros(size, dtype=torch.bool)
        if tuple(union.shape) != tuple(size):
            union = F.interpolate(union[None, None].float(), size=size, mode="nearest-exact")[0, 0] > 0.5
        return union

    def __getitem__(self, index: int) -> Sample:
        from xaibench.data.folder import read_image

        i = self._index(index)
        hq = self.indices[i]
        path = self.root / IMAGES / f"{hq}.jpg"
        if not path.is_file():
            raise InputError(f"missing image {path}")
        image = read_image(path)
        size = tuple(image.shape[-2:])
        masks = {name: resize_crop_mask(self.region(hq, name, size), self.image_size) for name in REGIONS}
        return make_sample(resize_crop_image(image, self.image_size), int(self.labels[i]), f"hq-{hq}", masks, None)
