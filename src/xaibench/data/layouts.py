"""Data sets beside the core ones: published layouts, named subsets and the alignment stand-ins.

`extra_dataset` is what `load_dataset` asks first for a ``scheme:rest`` spec:

- ``celeba:<root>[#Attribute]``          `xaibench.data.celeba`
- ``celebamask-hq:<root>[#Attribute]``   `xaibench.data.celebamask`
- ``cifar100:<root>``                    `xaibench.data.cifar`
- ``subset:<file.json>``                 `xaibench.data.subset`
- ``builtin:digits-tint``, ``builtin:digits-regions``, ``builtin:digits-low``, ``builtin:digits-high``
  (`xaibench.data.standins`)
"""

from __future__ import annotations

from collections.abc import Callable

from xaibench.data.base import ImageDataset

SCHEMES = ("celeba", "celebamask-hq", "cifar100", "subset")


def extra_dataset(scheme: str, rest: str, split: str, image_size: int | None,
                  load: Callable[..., ImageDataset]) -> ImageDataset | None:
    """The data set of ``scheme:rest`` if this module knows it, else None; `load` (``load_dataset``)
    reads the data set a subset file names."""
    if scheme == "builtin":
        from xaibench.data.standins import NAMES, StandIn

        return StandIn(rest, split, image_size) if rest in NAMES else None
    if scheme == "celeba":
        from xaibench.data.celeba import CelebADataset

        return CelebADataset(rest, split, image_size)
    if scheme == "celebamask-hq":
        from xaibench.data.celebamask import CelebAMaskHQDataset

        return CelebAMaskHQDataset(rest, split, image_size)
    if scheme == "cifar100":
        from xaibench.data.cifar import Cifar100Dataset

        return Cifar100Dataset(rest, split, image_size)
    if scheme == "subset":
        from xaibench.data.subset import SubsetDataset

        return SubsetDataset(rest, split, image_size, load)
    return None
