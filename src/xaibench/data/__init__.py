"""Data sets: built-in digits (plain and with a spurious square), image folders, ImageNet validation.

``load_dataset(spec, split="test", image_size=None, on_error="raise")`` returns a torch `Dataset`
whose items are `Sample` s (image float32 [3, H, W] in [0, 1], label, id, masks); `collate`
stacks samples into a `Batch`. Specs:

- ``builtin:digits``, ``builtin:digits-spurious``  (`xaibench.data.digits`)
- ``builtin:digits-hard``: affine transforms, clutter and noise  (`xaibench.data.digits_hard`)
- ``folder:<root>`` or a bare path to an existing folder  (`xaibench.data.folder.FolderDataset`)
- ``imagenet:<root>``  (`xaibench.data.folder.ImageNetDataset`)
- ``celeba:``, ``celebamask-hq:``, ``cifar100:``, ``subset:`` and the alignment stand-ins  (`xaibench.data.layouts`)
- ``folder:<root>?image_size=224`` (and ``imagenet:``): the spec carries `image_size`

See docs/models-data.md for layouts, masks and errors.
"""

from __future__ import annotations

import os

from xaibench.config import suggest
from xaibench.data.base import Batch, ImageDataset, Sample, collate
from xaibench.errors import InputError, UnknownNameError

BUILTIN = ("digits", "digits-spurious", "digits-hard")
SCHEMES = ("builtin", "folder", "imagenet")
ON_DISK = ("folder", "imagenet", "celeba", "celebamask-hq", "cifar100", "subset")  # spec = scheme:<path>[#...][?...]


def check_spec(spec: str) -> None:
    """A cheap check of a data set spec before anything is written: a set on disk names a path that
    exists (its files are read when used); any other spec is one `load_dataset` knows."""
    scheme, sep, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if sep and scheme in ON_DISK:
        root = os.path.expanduser(rest.partition("?")[0].partition("#")[0])
        if not os.path.exists(root):
            raise InputError(f"data set {spec!r}: {root} does not exist")
    elif not (isinstance(spec, str) and not sep and os.path.isdir(os.path.expanduser(spec))):
        load_dataset(spec)


def load_dataset(spec: str, split: str = "test", image_size: int | None = None,
                 on_error: str = "raise") -> ImageDataset:
    """The data set named by `spec` (see the module doc), split `split`.

    image_size: resize the shorter side to this and centre-crop a square (images and masks alike);
        None keeps each image's size (built-in sets are 32x32).
    on_error: ``"raise"`` (a bad file raises `InputError` naming it when read) or ``"skip"`` (folder
        sets: every file is read once now; bad samples are dropped with one warning counting them).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"data set spec must be a non-empty string, got {spec!r}")
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    scheme, sep, rest = spec.partition(":")
    if scheme in ("folder", "imagenet") and sep and "?" in rest:
        rest, image_size = _spec_image_size(spec, rest, image_size)
    if sep:  # published layouts (CelebA, CelebAMask-HQ, CIFAR-100), subsets, alignment stand-ins
        from xaibench.data.layouts import extra_dataset

        extra = extra_dataset(scheme, rest, split, image_size, load_dataset)
        if extra is not None:
            return extra
    if scheme == "builtin" and sep:
        from xaibench.data.digits import DigitsDataset

        if rest not in BUILTIN:
            hint = suggest(rest, BUILTIN, cutoff=0.4, form="builtin:{}")
            raise UnknownNameError(
                f"unknown built-in data set {spec!r}.{hint} Known: {', '.join('builtin:' + b for b in BUILTIN)}."
            )
        if rest == "digits-hard":
            from xaibench.data.digits_hard import DigitsHardDataset

            return DigitsHardDataset(split=split, image_size=image_size)
        return DigitsDataset(rest, split=split, image_size=image_size)
    if scheme in ("folder", "imagenet") and sep:
        from xaibench.data.folder import FolderDataset, ImageNetDataset

        cls = FolderDataset if scheme == "folder" else ImageNetDataset
        return cls(rest, split=split, image_size=image_size, on_error=on_error, spec=spec)
    if os.path.isdir(os.path.expanduser(spec)):
        from xaibench.data.folder import FolderDataset

        return FolderDataset(spec, split=split, image_size=image_size, on_error=on_error, spec=f"folder:{spec}")
    if sep and len(scheme) > 1:
        hint = suggest(scheme, SCHEMES, n=2, cutoff=0.4, form="{}:")
        raise UnknownNameError(f"unknown data set kind {scheme + ':'!r} in {spec!r}.{hint} "
                               f"Known: builtin:<name>, folder:<root>, imagenet:<root>, or a folder path.")
    raise InputError(
        f"data set {spec!r} is neither a spec (builtin:<name>, folder:<root>, imagenet:<root>) nor an existing folder"
    )


def _spec_image_size(spec: str, rest: str, image_size: int | None) -> tuple[str, int]:
    """``<root>?image_size=N`` -> (root, N); an `image_size` argument as well must agree with it."""
    root, _, query = rest.rpartition("?")
    key, eq, value = query.partition("=")
    if key.strip() != "image_size" or not eq or not value.strip().isdigit() or int(value) < 1:
        raise InputError(f"data set spec {spec!r}: after the root only '?image_size=<positive int>' is understood, "
                         f"got '?{query}'")
    if image_size is not None and image_size != int(value):
        raise InputError(f"data set spec {spec!r} says image_size={int(value)} but image_size={image_size} was "
                         "also given; give it once")
    return root, int(value)


__all__ = ["Batch", "ImageDataset", "Sample", "collate", "load_dataset"]
