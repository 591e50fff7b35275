"""CelebA in its published layout (aligned and cropped images), with the mouth box as human mask.

``celeba:<root>`` (label: ``Smiling``) or ``celeba:<root>#<Attribute>`` (any of the 40 attributes)::

    <root>/img_align_celeba/000001.jpg        aligned and cropped images (178 x 218)
    <root>/list_attr_celeba.txt               count line, 40 attribute names, "<file> +-1 x 40" rows
    <root>/list_landmarks_align_celeba.txt    count line, 10 names, "<file> x y x y ..." rows
    <root>/list_eval_partition.txt            "<file> 0|1|2" rows (train / valid / test)

``<root>`` may also be the folder holding ``celeba/`` (torchvision's layout). Splits: ``train``,
``valid``, ``test``, ``all``. The label is 1 where the attribute is 1, else 0 (classes
``not <Attribute>``, ``<Attribute>``); `attributes` gives all 40 as 0/1 columns (for grouping).

Mask ``mouth`` (Bang, Boggust & Satyanarayan 2024): the box between the two mouth-corner landmarks
(columns ``leftmouth_x`` up to, not including, ``rightmouth_x``), extended by a third of its width
up from the left corner's row and down from the right corner's row (rows ``leftmouth_y - h`` up to,
not including, ``rightmouth_y + h`` with ``h = round(width / 3)``), clipped to the image. Image ids
are the file stems. Missing files raise `InputError` naming them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from xaibench.config import suggest
from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image, resize_crop_mask
from xaibench.errors import InputError

IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
LANDMARKS = "list_landmarks_align_celeba.txt"
PARTITION = "list_eval_partition.txt"
SPLITS = {"train": 0, "valid": 1, "test": 2}
MOUTH = ("leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")


def find_root(root: str | Path, marker: str, nested: str) -> Path:
    """`root`, or `root/<nested>` when only that holds `marker`; `InputError` naming what is missing."""
    root = Path(root).expanduser()
    for candidate in (root, root / nested):
        if (candidate / marker).exists():
            return candidate
    raise InputError(f"{root}: missing {root / marker} (nor {root / nested / marker}); expected the published layout")


def read_table(path: Path, header_lines: int) -> pd.DataFrame:
    """A whitespace-separated annotation file indexed by file name; `InputError` naming it when absent."""
    if not path.is_file():
        raise InputError(f"missing annotation file {path}")
    try:
        if header_lines == 0:
            return pd.read_csv(path, sep=r"\s+", header=None, index_col=0)
        return pd.read_csv(path, sep=r"\s+", skiprows=header_lines - 1)
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"cannot parse {path}: {err}") from None


def mouth_box(landmarks: Tensor, height: int, width: int) -> Tensor:
    """bool [height, width]: the mouth box of ``(leftmouth_x, leftmouth_y, rightmouth_x, rightmouth_y)``."""
    lx, ly, rx, ry = (int(v) for v in landmarks.tolist())
    extra = round((rx - lx) / 3)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(ly - extra, 0):max(ry + extra, 0), max(lx, 0):max(rx, 0)] = True
    return mask


def parse_spec(rest: str, default: str = "Smiling") -> tuple[str, str]:
    """(root, label attribute) of ``<root>`` or ``<root>#<Attribute>``."""
    root, _, attribute = rest.partition("#")
    return root, attribute or default


def check_attribute(attribute: str, known: list[str], path: Path) -> None:
    if attribute not in known:
        raise InputError(f"{path} has no attribute {attribute!r}.{suggest(attribute, known)} Known: {', '.join(known)}")


class CelebADataset(ImageDataset):
    """``celeba:<root>[#Attribute]`` (see the module doc). Annotations are read at once, images lazily."""

    def __init__(self, rest: str, split: str = "test", image_size: int | None = None) -> None:
        root, attribute = parse_spec(rest)
        if split not in (*SPLITS, "all"):
            raise InputError(f"CelebA has no split {split!r}; known splits: {', '.join([*SPLITS, 'all'])}")
        self.root = find_root(root, ATTRIBUTES, "celeba")
        self.spec, self.split, self.image_size = f"celeba:{rest}", split, image_size
        attrs = read_table(self.root / ATTRIBUTES, 2)
        check_attribute(attribute, list(attrs.columns), self.root / ATTRIBUTES)
        landmarks = read_table(self.root / LANDMARKS, 2)
        missing = [c for c in MOUTH if c not in landmarks.columns]
        if missing:
            raise InputError(f"{self.root / LANDMARKS}: no column {missing[0]!r}")
        partition = read_table(self.root / PARTITION, 0).iloc[:, 0]
        files = partition.index if split == "all" else partition.index[partition == SPLITS[split]]
        ends = files[:1].tolist() + files[-1:].tolist()
        absent = [f for f in ends if f not in attrs.index or f not in landmarks.index]
        if absent:
            raise InputError(f"{absent[0]} is in {self.root / PARTITION} but not in the attribute / landmark files")
        self.files = list(files)
        self.attribute = attribute
        self.table = (attrs.loc[self.files] > 0).astype("int64")
        self.landmarks = torch.tensor(landmarks.loc[self.files, list(MOUTH)].to_numpy(), dtype=torch.long)
        self.labels = torch.tensor(self.table[attribute].to_numpy())
        self.classes = [f"not {attribute}", attribute]
        self.mask_names = ("mouth",)
        self.default_mask = "mouth"

    def __len__(self) -> int:
        return len(self.files)

    def attributes(self) -> pd.DataFrame:
        """One row per image (data set order): ``id`` and the 40 attributes as 0/1."""
        return self.table.reset_index(drop=True).assign(id=[Path(f).stem for f in self.files])

    def __getitem__(self, index: int) -> Sample:
        from xaibench.data.folder import read_image

        i = self._index(index)
        path = self.root / IMAGES / self.files[i]
        if not path.is_file():
            raise InputError(f"missing image {path}")
        image = read_image(path)
        mouth = mouth_box(self.landmarks[i], *image.shape[-2:])
        masks = {"mouth": resize_crop_mask(mouth, self.image_size)}
        return make_sample(resize_crop_image(image, self.image_size), int(self.labels[i]), path.stem, masks, "mouth")
