"""Image folders with optional human annotations, and ImageNet validation as a variant of them.

Layout of ``folder:<root>`` (see docs/models-data.md)::

    <root>/<split>/<class>/<stem>.<png|jpg|jpeg|bmp|webp>   images (class = folder, sorted = label order)
    <root>/masks/<split>/<class>/<stem>.png                  optional binary mask  -> mask "mask"
    <root>/boxes/<split>/<class>/<stem>.xml                  optional PASCAL VOC boxes -> mask "box"

A mask PNG is read as grey values; nonzero pixels are inside. It must have the image's size. The
union of all ``<object><bndbox>`` boxes of an XML file becomes the mask ``box`` (VOC convention:
1-based inclusive pixel indices). The default mask is ``mask`` if the split has mask files, else
``box`` if it has box files, else none. Image ids are ``<class>/<stem>``.

With ``image_size`` every image is resized (shorter side to ``image_size``, bilinear, antialiased)
and centre-cropped to ``image_size`` x ``image_size``; masks go through the same geometry with
nearest-neighbour sampling, boxes are scaled in original pixel coordinates and rasterised after the
crop (`xaibench.data.base.rasterise_boxes`).

Files are read lazily, in ``__getitem__``; a bad file raises `InputError` naming it. With
``on_error="skip"`` every sample is read once when the data set is created and bad ones are
dropped with one warning that counts them.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xaibench.data.base import (
    ImageDataset,
    ImageRecord,
    Sample,
    make_sample,
    rasterise_boxes,
    resize_crop_image,
    resize_crop_mask,
)
from xaibench.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ANNOTATION_DIRS = ("masks", "boxes")


@dataclass(frozen=True)
class Entry:
    image: Path
    label: int
    id: str
    mask: Path | None
    boxes: Path | None


def read_image(path: Path) -> Tensor:
    """float32 [3, H, W] in [0, 1] (converted to RGB); `InputError` naming the file when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as err:  # PIL raises many types for corrupt / truncated / non-image files
        raise InputError(f"cannot read image {path}: {err}") from err
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_mask(path: Path, size: tuple[int, int], image: Path) -> Tensor:
    """bool [H, W]: nonzero pixels of a (grey/binary/palette) PNG; its size must be `size` (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            grey = img.convert("L")
    except Exception as err:
        raise InputError(f"cannot read mask {path}: {err}") from err
    if (grey.height, grey.width) != tuple(size):
        raise InputError(
            f"mask {path} is {grey.width}x{grey.height} (WxH) but its image {image} is {size[1]}x{size[0]}"
        )
    return torch.from_numpy(np.asarray(grey) > 0)


def read_boxes(path: Path, size: tuple[int, int] | None = None) -> list[tuple[float, float, float, float]]:
    """Boxes (xmin, ymin, xmax, ymax) of a PASCAL VOC XML file; `InputError` naming it when malformed.

    When the file states its image size (``<size><width>/<height>``) and `size` (H, W) is given,
    they must agree.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise InputError(f"cannot parse box file {path}: {err}") from err
    if size is not None:
        w, h = root.findtext("size/width"), root.findtext("size/height")
        try:
            stated = (int(float(h)), int(float(w))) if w is not None and h is not None else None
        except ValueError as err:
            raise InputError(f"box file {path}: non-numeric <size>: {err}") from err
        if stated is not None and stated != (0, 0) and stated != tuple(size):
            raise InputError(
                f"box file {path} is for a {stated[1]}x{stated[0]} (WxH) image, but the image is {size[1]}x{size[0]}"
            )
    boxes = []
    for k, box in enumerate(root.iter("bndbox")):
        try:
            values = tuple(float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise InputError(f"box file {path}: box {k} needs numeric xmin, ymin, xmax, ymax ({err})") from err
        if values[2] < values[0] or values[3] < values[1]:
            raise InputError(f"box file {path}: box {k} has xmax < xmin or ymax < ymin: {values}")
        boxes.append(values)  # type: ignore[arg-type]
    return boxes


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class FolderDataset(ImageDataset):
    """``folder:<root>``: an image folder with optional mask PNGs and VOC box files (module doc)."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike, split: str = "test", image_size: int | None = None,
                 on_error: str = "raise", spec: str | None = None) -> None:
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
            raise InputError(f"image_size must be a positive integer, got {image_size!r}")
        self.root = Path(root).expanduser()
        self.spec = spec or f"{self.kind}:{root}"
        self.image_size = None if image_size is None else int(image_size)
        if not self.root.is_dir():
            raise InputError(f"{self.spec}: data set folder {self.root} does not exist")
        self.split = self._resolve_split(split)
        split_dir = self.root / self.split
        self.classes = self._classes(split_dir)
        self.entries = self._scan(split_dir)
        if not self.entries:
            raise InputError(
                f"{self.spec}: split folder {split_dir} holds no images "
                f"(expected {split_dir}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})"
            )
        names = []
        if any(e.mask is not None for e in self.entries):
            names.append("mask")
        if any(e.boxes is not None for e in self.entries):
            names.append("box")
        self.mask_names = tuple(names)
        self.default_mask = names[0] if names else None
        if on_error == "skip":
            self._drop_bad()

    # --- layout hooks (ImageNet overrides them) ---

    def known_splits(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name not in ANNOTATION_DIRS
                      and not p.name.startswith("."))

    def _resolve_split(self, split: str) -> str:
        known = self.known_splits()
        if split not in known:
            raise InputError(
                f"{self.spec}: unknown split {split!r}; known splits: {', '.join(known) or 'none'} "
                f"(sub-folders of {self.root})"
            )
        return split

    def _classes(self, split_dir: Path) -> list[str]:
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise InputError(f"{self.spec}: split folder {split_dir} has no class sub-folders "
                             f"(expected {split_dir}/<class>/<image>)")
        return classes

    def _mask_path(self, cls: str, stem: str) -> Path:
        return self.root / "masks" / self.split / cls / f"{stem}.png"

    def _box_path(self, cls: str, stem: str) -> Path:
        return self.root / "boxes" / self.split / cls / f"{stem}.xml"

    # --- scanning and reading ---

    def _scan(self, split_dir: Path) -> list[Entry]:
        entries = []
        for label, cls in enumerate(self.classes):
            folder = split_dir / cls
            if not folder.is_dir():
                continue
            for path in _images(folder):
                mask = self._mask_path(cls, path.stem)
                boxes = self._box_path(cls, path.stem)
                entries.append(Entry(path, label, f"{cls}/{path.stem}", mask if mask.is_file() else None,
                                     boxes if boxes.is_file() else None))
        return entries

    def _drop_bad(self) -> None:
        good, bad = [], []
        for entry in self.entries:
            try:
                self._load(entry)
            except InputError as err:
                bad.append(str(err))
                continue
            good.append(entry)
        if bad:
            shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
            warnings.warn(f"{self.spec}: skipped {len(bad)} of {len(self.entries)} images: {shown}", stacklevel=3)
        if not good:
            raise InputError(f"{self.spec}: every image of split {self.split!r} is unreadable: {bad[0]}")
        self.entries = good

    def _load(self, entry: Entry) -> Sample:
        image = read_image(entry.image)
        h, w = image.shape[-2:]
        masks: dict[str, Tensor] = {}
        if entry.mask is not None:
            masks["mask"] = resize_crop_mask(read_mask(entry.mask, (h, w), entry.image), self.image_size)
        if entry.boxes is not None:
            masks["box"] = rasterise_boxes(read_boxes(entry.boxes, (h, w)), h, w, self.image_size)
        return make_sample(resize_crop_image(image, self.image_size), entry.label, entry.id, masks, self.default_mask)

    def describe(self, index: int) -> ImageRecord:
        """Id, hash of the files' bytes (image, mask, boxes) and label, size from the image header."""
        import hashlib
        import io

        from PIL import Image

        entry = self.entries[self._index(index)]
        h = hashlib.sha256(f"{entry.label}:{entry.id}:{self.image_size}".encode())
        try:
            data = entry.image.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception as err:
            raise InputError(f"cannot read image {entry.image}: {err}") from err
        h.update(data)
        files = {"mask": entry.mask, "box": entry.boxes}
        for name, path in files.items():
            if path is not None:
                h.update(name.encode() + path.read_bytes())
        expected = {"mask": self._mask_path, "box": self._box_path}
        cls, stem = self.classes[entry.label], entry.image.stem
        missing = {n: str(expected[n](cls, stem)) for n in self.mask_names if files[n] is None}
        size = (self.image_size, self.image_size) if self.image_size is not None else (height, width)
        return ImageRecord(entry.id, h.hexdigest(), size, tuple(n for n in self.mask_names if files[n] is not None),
                           missing)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        return self._load(self.entries[self._index(index)])


def _standard_wnids(root: Path) -> list[str] | None:
    """The 1000 ILSVRC-2012 class ids in label order: ``<root>/LOC_synset_mapping.txt`` or timm's list."""
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        return [line.split()[0] for line in mapping.read_text().splitlines() if line.strip()]
    try:
        from importlib.resources import files

        text = files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text()
    except Exception:
        return None
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    return wnids if len(wnids) == 1000 else None


class ImageNetDataset(FolderDataset):
    """``imagenet:<root>``: ILSVRC-2012 validation images sorted into class folders, with boxes.

    Layout::

        <root>/val/<wnid>/<name>.JPEG     the 50 000 validation images, one folder per class
        <root>/val_boxes/<name>.xml       optional boxes: ILSVRC2012_bbox_val_v3.tgz's val/ folder
                                          (flat, one XML per image), renamed to val_boxes
        <root>/LOC_synset_mapping.txt     optional class order (else the standard sorted wnids)

    Boxes may also follow the folder layout (``<root>/boxes/val/<wnid>/<name>.xml``). Labels are
    indices into the standard 1000 classes, so a subset of class folders still gets the labels
    of a 1000-class model. Split ``test`` is an alias of ``val`` (the labelled split).
    """

    kind = "imagenet"

    def known_splits(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name in ("val", "train"))

    def _resolve_split(self, split: str) -> str:
        if split == "test":
            split = "val"
        if not (self.root / split).is_dir():
            if split == "val":
                raise InputError(
                    f"{self.spec}: {self.root / 'val'} does not exist; expected the ILSVRC-2012 validation "
                    f"images sorted into class folders: {self.root}/val/<wnid>/<name>.JPEG "
                    f"(and optionally boxes in {self.root}/val_boxes/<name>.xml)"
                )
            return super()._resolve_split(split)
        return split

    def _classes(self, split_dir: Path) -> list[str]:
        found = super()._classes(split_dir)
        wnids = _standard_wnids(self.root)
        if wnids is None:
            if len(found) != 1000:
                raise InputError(
                    f"{self.spec}: {split_dir} has {len(found)} class folders; without the standard class "
                    f"list labels would not match a 1000-class model. Put LOC_synset_mapping.txt in {self.root}"
                )
            return found
        unknown = sorted(set(found) - set(wnids))
        if unknown:
            raise InputError(f"{self.spec}: folder {split_dir / unknown[0]} is not an ImageNet class id (wnid)")
        return wnids

    def _box_path(self, cls: str, stem: str) -> Path:
        flat = self.root / f"{self.split}_boxes" / f"{stem}.xml"
        return flat if flat.is_file() else super()._box_path(cls, stem)
