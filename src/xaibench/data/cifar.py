"""CIFAR-100 in its published python-pickle layout.

``cifar100:<root>``::

    <root>/cifar-100-python/train     pickle: b"data" uint8 [N, 3072] (RGB planes, rows), b"fine_labels", b"filenames"
    <root>/cifar-100-python/test      the same for the 10,000 test images
    <root>/cifar-100-python/meta      pickle: b"fine_label_names"

``<root>`` may also be the ``cifar-100-python`` folder itself. Splits ``train`` and ``test``; the
100 fine labels; images 3 x 32 x 32, no masks; ids ``<split>-<index>``. The files are Python
pickles as published (read with ``encoding="bytes"``): read only files you trust, as with any
pickle.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xaibench.data.base import ImageDataset, Sample, make_sample, resize_crop_image
from xaibench.errors import InputError

FOLDER = "cifar-100-python"
SPLITS = ("train", "test")


def _load(path: Path) -> dict[bytes, Any]:
    if not path.is_file():
        raise InputError(f"missing CIFAR-100 file {path}")
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except Exception as err:  # unpickling raises many types for damaged files
        raise InputError(f"cannot read {path} as a CIFAR-100 pickle: {err}") from None


def _field(table: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in table:
        raise InputError(f"{path} has no field {key.decode()!r} (expected the CIFAR-100 python layout)")
    return table[key]


class Cifar100Dataset(ImageDataset):
    """``cifar100:<root>`` (see the module doc). Held in memory (uint8)."""

    def __init__(self, root: str, split: str = "test", image_size: int | None = None) -> None:
        if split not in SPLITS:
            raise InputError(f"CIFAR-100 has no split {split!r}; known splits: {', '.join(SPLITS)}")
        base = Path(root).expanduser()
        folder = base if (base / "meta").is_file() and not (base / FOLDER).is_dir() else base / FOLDER
        self.spec, self.split, self.image_size = f"cifar100:{root}", split, image_size
        names = _field(_load(folder / "meta"), b"fine_label_names", folder / "meta")
        table = _load(folder / split)
        data = torch.as_tensor(_field(table, b"data", folder / split), dtype=torch.uint8)
        labels = torch.as_tensor(_field(table, b"fine_labels", folder / split), dtype=torch.long)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
            raise InputError(f"{folder / split}: data must be [N, 3072] with N labels, got {tuple(data.shape)}")
        self.images: Tensor = data.view(-1, 3, 32, 32)
        self.labels = labels
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.mask_names = ()
        self.default_mask = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        image = resize_crop_image(self.images[i].float() / 255.0, self.image_size)
        return make_sample(image, int(self.labels[i]), f"{self.split}-{i}", {}, None)
