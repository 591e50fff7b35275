"""Named subsets of another data set, described by one JSON file: ``subset:<file.json>``.

A recipe that samples images (a biased training set, a balanced test set) writes the indices once;
the trainer and the runner then load the subsets like any data set::

    {"spec": "celeba:/data/celeba", "splits": {"train-biased": {"split": "train", "indices": [4, 17, ...]},
                                               "test-balanced": {"split": "test", "indices": [...]}}}

Samples are those of the underlying data set (same ids, labels and masks), in the listed order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from xaibench.data.base import ImageDataset, Sample
from xaibench.errors import InputError
from xaibench.files import write_text


def write_subsets(path: str | Path, spec: str, splits: Mapping[str, tuple[str, Sequence[int]]]) -> Path:
    """Write the subsets ``name -> (split of spec, indices)`` of data set `spec` to `path`."""
    path = Path(path)
    body = {"spec": spec,
            "splits": {n: {"split": s, "indices": [int(i) for i in idx]} for n, (s, idx) in splits.items()}}
    write_text(path, json.dumps(body, indent=1))
    return path


class SubsetDataset(ImageDataset):
    """``subset:<file.json>``, split = the name of one subset in the file."""

    def __init__(self, file: str, split: str, image_size: int | None, load: Callable[..., ImageDataset]) -> None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise InputError(f"missing subset file {path}")
        try:
            body = json.loads(path.read_text())
            spec, splits = body["spec"], body["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{path} is not a subset file (needs 'spec' and 'splits'): {err}") from None
        if split not in splits:
            raise InputError(f"{path} has no subset {split!r}; known: {', '.join(splits)}")
        self.base = load(spec, split=splits[split]["split"], image_size=image_size)
        self.positions = [int(i) for i in splits[split]["indices"]]
        bad = [i for i in self.positions if not 0 <= i < len(self.base)]
        if bad:
            raise InputError(f"{path}: subset {split!r} holds index {bad[0]}, outside {spec} ({len(self.base)} images)")
        self.spec, self.split = f"subset:{file}", split
        self.classes, self.mask_names = self.base.classes, self.base.mask_names
        self.default_mask = self.base.default_mask
        base_labels = getattr(self.base, "labels", None)
        self.labels = base_labels[self.positions] if isinstance(base_labels, Tensor) else None  # read without images

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Sample:
        return self.base[self.positions[self._index(index)]]
