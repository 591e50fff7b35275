"""2x2 mosaics for the Focus metric (Arias-Duart et al. 2022).

Each mosaic holds two images of its target class and two of other classes, at random positions.
Tiles are numbered in raster order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xaibench.checks import check_images
from xaibench.errors import InputError
from xaibench.seeding import make_generator


@dataclass(frozen=True)
class Mosaics:
    """A batch of mosaics.

    images:  [M, C, 2H, 2W] in [0, 1]
    targets: [M] long, the class of two of the four tiles
    layout:  [M, 4] long, the class of each tile (raster order)
    sources: [M, 4] long, the index of each tile's image in the source tensor
    """

    images: Tensor
    targets: Tensor
    layout: Tensor
    sources: Tensor

    @property
    def masks(self) -> Tensor:
        """Target-tile masks [M, 2H, 2W] bool, the `masks` argument of `xaibench.metrics.focus`."""
        return tile_masks(self.layout == self.targets[:, None], self.images.shape[-2:])


def tile_masks(tiles: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bool masks [M, H, W] from per-tile flags [M, 4] (raster order) for mosaics of size (H, W) (even)."""
    height, width = int(size[0]), int(size[1])
    if tiles.ndim != 2 or tiles.shape[1] != 4:
        raise InputError(f"tile flags must have shape [M, 4], got {tuple(tiles.shape)}")
    if height % 2 or width % 2:
        raise InputError(f"mosaic size must be even in both dimensions, got {height}x{width}")
    grid = tiles.bool().view(-1, 2, 2)
    return grid.repeat_interleave(height // 2, dim=1).repeat_interleave(width // 2, dim=2)


def build_mosaics(
    images: Tensor, labels: Tensor, n: int, *, seed: int | torch.Generator | None = 0
) -> Mosaics:
    """`n` mosaics from labelled images [N, C, H, W] (in [0, 1]) and labels [N].

    Per mosaic: a target class drawn uniformly among classes with at least two images; two distinct
    images of that class; two distinct images of any other classes (which may share a class);
    the four placed in a uniformly random order. Every draw comes from one generator (`seed`).
    """
    check_images(images)
    labels = torch.as_tensor(labels, device=images.device)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise InputError(f"labels must be integer [N] with N={images.shape[0]}, got {tuple(labels.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    labels = labels.long()
    gen = make_generator(seed, images.device)
    order = labels.argsort(stable=True)
    classes, counts = labels.unique(return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    others = labels.shape[0] - counts
    eligible = ((counts >= 2) & (others >= 2)).nonzero().flatten()
    if eligible.numel() == 0:
        raise InputError("mosaics need a class with at least two images and at least two images of other classes")

    def draw(high: Tensor) -> Tensor:
        return (torch.rand(high.shape, generator=gen, device=images.device) * high).long().clamp(max=high - 1)

    cls = eligible[draw(torch.full((n,), eligible.numel(), device=images.device))]
    count, start, other = counts[cls], starts[cls], others[cls]
    first = draw(count)
    second = (first + 1 + draw(count - 1)) % count
    r1 = draw(other)
    r2 = (r1 + 1 + draw(other - 1)) % other
    # Other-class picks index the sorted order with the class block [start, start + count) skipped.
    picks = torch.stack(
        [start + first, start + second, torch.where(r1 < start, r1, r1 + count), torch.where(r2 < start, r2, r2 + count)],
        dim=1,
    )
    sources = order[picks]
    perm = torch.rand(n, 4, generator=gen, device=images.device).argsort(dim=1)
    sources = sources.gather(1, perm)
    tiles = images[sources]  # [M, 4, C, H, W]
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    return Mosaics(
        images=torch.cat([top, bottom], dim=-2),
        targets=classes[cls],
        layout=labels[sources],
        sources=sources,
    )
