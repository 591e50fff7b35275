"""Perturbation methods that sample: RISE (own batched torch) and feature permutation (Captum).

RISE (Petsiuk et al. 2018): N random masks M_i [H, W] in [0, 1], each a `grid` x `grid` binary grid
(cells kept with probability `p`) upsampled bilinearly to ((grid + 1) * cell) pixels per side,
``cell = ceil(H / grid)``, then cropped at a random offset in [0, cell) per axis (as the authors'
code; borders replicate the edge where theirs reflects). The map is
``sum_i f_c(x * M_i) M_i / (N p)`` with f_c the target's softmax probability (as in the paper).
The masks depend on `seed` only, not on the images or the batch, so an image's map does not depend
on the other images of its batch. The B x N masked images are scored in chunks of at most
`max_batch` rows; masks are made chunk by chunk (memory independent of N).

Feature permutation (Captum's FeaturePermutation): each feature (a `patch` x `patch` square, all
channels) is exchanged between the images of the batch by a random permutation (never the
identity); the attribution is the drop of the target logit. It needs at least 2 images per call
and, by design, an image's map depends on the other images of its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from captum.attr import FeaturePermutation
from torch import Tensor, nn

from xaibench.checks import check_positive_int
from xaibench.errors import InputError
from xaibench.explainers.base import Explainer, register
from xaibench.explainers.gradient import expansions_per_image, seeded_global_rng
from xaibench.passes import Passes
from xaibench.seeding import make_generator


def rise_masks(grids: Tensor, offsets: Tensor, size: tuple[int, int]) -> Tensor:
    """RISE masks [N, H, W] from binary grids [N, s, s] and crop offsets [N, 2] (see the module doc)."""
    n, s, _ = grids.shape
    h, w = size
    cell_h, cell_w = math.ceil(h / s), math.ceil(w / s)
    up = F.interpolate(grids[:, None].float(), size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    rows = offsets[:, 0, None] + torch.arange(h, device=grids.device)  # [N, H]
    cols = offsets[:, 1, None] + torch.arange(w, device=grids.device)  # [N, W]
    return up[torch.arange(n, device=grids.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register("rise", cost=Passes(forwards="n_masks"), resolution="input")
class RISEExplainer(Explainer):
    """RISE (Petsiuk et al. 2018): mean of random masks weighted by the target probability they keep.

    Raw attribution [B, 1, H, W] (non-negative).
    """

    PARAMS = {
        "n_masks": "number of random masks N",
        "grid": "cells per side of the random binary grid",
        "p": "probability that a grid cell is kept",
    }

    def __init__(self, model: nn.Module, *, n_masks: int = 1000, grid: int = 7, p: float = 0.5,
                 seed: int | torch.Generator | None = 0, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.n_masks = check_positive_int(n_masks, "n_masks")
        self.grid = check_positive_int(grid, "grid")
        if not 0.0 < float(p) <= 1.0:
            raise InputError(f"p must be in (0, 1], got {p!r}")
        self.p = float(p)
        self.generator = make_generator(seed)
        self.params.update(n_masks=n_masks, grid=grid, p=p, seed=seed if isinstance(seed, int) else None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        b, _, h, w = inputs.shape
        if self.grid > min(h, w):
            raise InputError(f"grid = {self.grid} is finer than the {h}x{w} images")
        gen = self.generator
        grids = torch.rand(self.n_masks, self.grid, self.grid, generator=gen, device=gen.device) < self.p
        cells = torch.tensor([math.ceil(h / self.grid), math.ceil(w / self.grid)], device=gen.device)
        offsets = (torch.rand(self.n_masks, 2, generator=gen, device=gen.device) * cells).long()
        grids, offsets = grids.to(inputs.device), offsets.to(inputs.device)
        chunk = expansions_per_image(self.max_batch, b)
        total = torch.zeros(b, h, w, device=inputs.device)
        with torch.no_grad():
            for start in range(0, self.n_masks, chunk):
                masks = rise_masks(grids[start:start + chunk], offsets[start:start + chunk], (h, w))  # [c, H, W]
                c = masks.shape[0]
                masked = (inputs[:, None] * masks[None, :, None]).flatten(0, 1)  # [B*c, C, H, W]
                probs = self.model(masked).softmax(1).view(b, c, -1)
                scores = probs.gather(2, targets[:, None, None].expand(b, c, 1))[..., 0]  # [B, c]
                total += torch.einsum("bc,chw->bhw", scores, masks)
        return (total / (self.n_masks * self.p))[:, None]


@register("feature_permutation", cost=Passes(forwards="1 + ceil(H/patch) * ceil(W/patch)"), resolution="input")
class FeaturePermutationExplainer(Explainer):
    """Feature permutation (Captum): target-logit drop when a square is swapped between the batch's images.

    Needs at least 2 images per call; maps depend on the batch. Default map: signed sum over channels.
    """

    PARAMS = {"patch": "side of the square permuted features, in pixels"}

    def __init__(self, model: nn.Module, *, patch: int = 8, seed: int | torch.Generator | None = 0,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.patch = check_positive_int(patch, "patch")
        self.generator = make_generator(seed)
        self.params.update(patch=patch, seed=seed if isinstance(seed, int) else None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if inputs.shape[0] < 2:
            raise InputError("feature_permutation permutes features between the images of a batch: it needs "
                             f"at least 2 images per call, got {inputs.shape[0]}")
        h, w = inputs.shape[2:]
        rows = torch.arange(h, device=inputs.device) // self.patch
        cols = torch.arange(w, device=inputs.device) // self.patch
        mask = rows[:, None] * ((w + self.patch - 1) // self.patch) + cols[None, :]
        with seeded_global_rng(self.generator, inputs.device):
            return FeaturePermutation(self.model).attribute(
                inputs, target=targets, feature_mask=mask[None, None],
                perturbations_per_eval=expansions_per_image(self.max_batch, inputs.shape[0]),
            )
