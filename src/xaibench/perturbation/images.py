"""The perturbed images themselves, one per input, built by the same code the metrics score.

For callers that need the images rather than the scores (training on faithfulness perturbations):

- `step_images`: the image a cumulative remove / reveal curve shows at step k of each input, i.e.
  row k of `perturbation_curves` (``ranks < k`` removed for ``"delete"``, shown for ``"insert"``;
  black is a multiplication by the kept mask, other baselines a ``where``), for a per-input k.
- `soft_mask`: the soft mask of the single-step metrics (AD, ADD, IIC): each map min-max normalised
  on its own, upsampled bicubically (align_corners=False) to the input size and clamped to [0, 1];
  a constant map gives zeros (its normalisation is undefined; the metrics report NaN there).

Both are batched torch on the inputs' device and carry no gradient to the map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.errors import InputError
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.engine import MODES, Ranking, check_choice, constant_baseline, shown_mask


def step_images(
    inputs: Tensor,
    ranking: Ranking,
    k: Tensor,
    *,
    mode: str = "delete",
    baseline: str = "black",
    baseline_params: dict[str, Any] | None = None,
    seed: int | torch.Generator | None = 0,
) -> Tensor:
    """Images [B, C, H, W]: `inputs` with the first ``k[b]`` features of `ranking` removed
    (``mode="delete"``, replaced by the baseline) or revealed on the baseline (``"insert"``)."""
    check_choice("mode", mode, MODES)
    if k.shape != (inputs.shape[0],):
        raise InputError(f"k must have shape [{inputs.shape[0]}], got {tuple(k.shape)}")
    x = inputs.detach()
    ranks = ranking.ranks.to(x.device)
    shown = shown_mask(ranks, None, k.to(x.device, ranks.dtype)[:, None, None], mode)[:, None]
    const = constant_baseline(baseline, baseline_params)
    if const == 0.0 and bool((x >= 0).all()):
        return x * shown
    base = fill(x, baseline, seed=seed, **(baseline_params or {})) if const is None else torch.full_like(x, const)
    return torch.where(shown, x, base)


def soft_mask(attributions: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft masks [B, 1, H, W] in [0, 1] of maps [B, h, w] for inputs of spatial `size` (module doc)."""
    a = attributions.detach()
    lo = a.flatten(1).amin(1)[:, None, None]
    hi = a.flatten(1).amax(1)[:, None, None]
    m = (a - lo) / (hi - lo).masked_fill(hi == lo, 1.0)
    return F.interpolate(m[:, None].float(), size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)
