"""One engine for every "remove / reveal features in attribution order" metric.

Pipeline:

1. `rank_features` turns maps [B, h, w] into a `Ranking`: the features (pixels, square patches or
   superpixels) are scored, sorted, and every input pixel gets the rank of its feature
   (``ranks`` [B, H, W], 0 = perturbed first).
2. A step schedule ``counts`` [B, K+1] (`step_counts`) says how many features are perturbed
   after each step (``counts[:, 0] == 0``).
3. `perturbation_curves` builds each perturbed image on the fly from ``(ranks, counts[b, k])``
   (``removed = ranks < counts[b, k]``: a compare and a ``where`` or a multiplication), chunk by
   chunk of at most `max_batch` images, and scores the model on it.

Conventions:

- Orders: ``"morf"`` most relevant (largest attribution) first, ``"lerf"`` least relevant first,
  ``"random"`` a seeded random permutation. Sorting is stable, so tied features keep the order of
  their flat index (lower index first) in both ``morf`` and ``lerf``; a constant map therefore
  perturbs features in raster order. Signs are kept (no ``abs``): take ``abs`` before if wanted.
- Resolution (``resample``): ``"rank_native"`` ranks the map at its own resolution and maps
  each input pixel to its feature by nearest upsampling of the feature index (as Gomez et al.
  do for 7x7 CAMs); ``"upsample"`` first resizes the map bilinearly (align_corners=False) to the
  input size. Superpixels always rank at input resolution.
- Patch features: ``patch_size`` x ``patch_size`` tiles from the top-left corner (border tiles
  may be smaller) of the ranking grid (map pixels under ``rank_native``, input pixels under
  ``upsample``); a tile's score is the SUM of its attributions (as Quantus).
- Superpixels: SLIC (scikit-image, one call per image on CPU, ``start_label=0``); a superpixel's
  score is the MEAN of its attributions (as Quantus IROF).
- Modes: ``"delete"`` replaces perturbed features by the baseline; ``"insert"`` starts from the
  baseline and puts the original values back. ``cumulative=False`` perturbs at step k only the
  features of step k (ranks in ``[counts[k-1], counts[k])``), every step starting afresh.
- Scores: the target's softmax probability (``output="softmax"``), logit or log-softmax, as
  `xaibench.perturbation.forward.class_scores`, or ``"correct"``: 1.0 where the arg-max class
  is the target, else 0.0 (ROAD's accuracy). Runs under ``no_grad`` on the model's device;
  ``autocast="bfloat16"`` / ``"float16"`` runs the forwards in mixed precision
  (`xaibench.perturbation.forward.forward_precision`), scores stay float32.
- Memory: the inputs, one baseline image per input, the ranks, and at most `max_batch`
  perturbed images at a time; nothing grows with the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.checks import check_images, check_map_size, check_maps, check_targets
from xaibench.devices import model_device
from xaibench.errors import InputError
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.forward import class_scores, forward_precision
from xaibench.seeding import make_generator

ORDERS = ("morf", "lerf", "random")
GRANULARITIES = ("pixel", "patch", "superpixel")
RESAMPLES = ("rank_native", "upsample")
MODES = ("delete", "insert")
OUTPUTS = ("softmax", "logit", "log_softmax", "correct")

# (inputs chunk [n,C,H,W], removed [n,H,W] bool, baseline chunk [n,C,H,W]) -> perturbed [n,C,H,W]
Imputer = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Ranking:
    """Features of each image in perturbation order.

    ranks:         [B, H, W] long, at input resolution: rank of the feature holding each pixel.
    num_features:  [B] long, number of features of each image.
    sorted_scores: [B, F] float, feature scores in perturbation order (NaN past ``num_features``).
    """

    ranks: Tensor
    num_features: Tensor
    sorted_scores: Tensor


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {allowed}, got {value!r}")


def _superpixels(inputs: Tensor, n_segments: int, compactness: float) -> Tensor:
    from skimage.segmentation import slic

    imgs = inputs.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    segs = [slic(img, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1) for img in imgs]
    return torch.from_numpy(np.stack(segs).astype(np.int64)).to(inputs.device)


def rank_features(
    attributions: Tensor,
    size: tuple[int, int],
    *,
    order: str = "morf",
    granularity: str = "pixel",
    patch_size: int = 1,
    resample: str = "rank_native",
    segments: Tensor | None = None,
    seed: int | torch.Generator | None = 0,
) -> Ranking:
    """Rank the features of maps [B, h, w] for inputs of spatial `size` (H, W); see module doc.

    `segments` [B, H, W] (integer labels) are required for ``granularity="superpixel"``
    (`superpixel_segments` computes SLIC ones).
    """
    check_choice("order", order, ORDERS)
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("resample", resample, RESAMPLES)
    check_map_size(attributions, size)
    b, h, w = attributions.shape
    big_h, big_w = size
    a = attributions.to(torch.promote_types(attributions.dtype, torch.float32))
    if granularity == "superpixel" or (resample == "upsample" and (h, w) != (big_h, big_w)):
        if (h, w) != (big_h, big_w):
            a = F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        h, w = big_h, big_w
    dev = a.device
    if granularity == "superpixel":
        if segments is None:
            raise InputError("granularity='superpixel' needs segments [B, H, W]")
        if tuple(segments.shape) != (b, big_h, big_w):
            raise InputError(f"segments must have shape {(b, big_h, big_w)}, got {tuple(segments.shape)}")
        # relabel each image's segments to 0..n-1 (labels may be sparse)
        seg = segments.to(dev).long().flatten(1)
        uniq, inverse = torch.unique(seg, return_inverse=True)
        present = torch.zeros(b, uniq.numel(), dtype=torch.bool, device=dev)
        present.scatter_(1, inverse, True)
        new_id = present.long().cumsum(1) - 1
        labels = new_id.gather(1, inverse)
        num = present.sum(1)
    elif granularity == "patch":
        if patch_size < 1:
            raise InputError(f"patch_size must be >= 1, got {patch_size}")
        rows = torch.arange(h, device=dev) // patch_size
        cols = torch.arange(w, device=dev) // patch_size
        n_cols = -(-w // patch_size)
        labels = (rows[:, None] * n_cols + cols[None, :]).flatten().expand(b, -1)
        num = torch.full((b,), (-(-h // patch_size)) * n_cols, dtype=torch.long, device=dev)
    else:
        labels = torch.arange(h * w, device=dev).expand(b, -1)
        num = torch.full((b,), h * w, dtype=torch.long, device=dev)
    n_feat = int(num.max())
    flat = a.flatten(1)
    sums = torch.zeros(b, n_feat, dtype=flat.dtype, device=dev).scatter_add_(1, labels, flat)
    if granularity == "superpixel":
        cnt = torch.zeros(b, n_feat, dtype=flat.dtype, device=dev).scatter_add_(1, labels, torch.ones_like(flat))
        scores = sums / cnt.clamp_min(1)
    else:
        scores = sums
    valid = torch.arange(n_feat, device=dev)[None, :] < num[:, None]
    if order == "random":
        gen = make_generator(seed, dev)
        keys = torch.rand(b, n_feat, generator=gen, device=dev).masked_fill(~valid, float("inf"))
        perm = torch.sort(keys, dim=1, stable=True).indices
    elif order == "morf":
        perm = torch.sort(scores.masked_fill(~valid, -float("inf")), dim=1, descending=True, stable=True).indices
    else:
        perm = torch.sort(scores.masked_fill(~valid, float("inf")), dim=1, stable=True).indices
    rank_of = torch.empty_like(perm).scatter_(1, perm, torch.arange(n_feat, device=dev).expand(b, -1))
    pixel_rank = rank_of.gather(1, labels).view(b, h, w)
    if (h, w) != (big_h, big_w):
        pixel_rank = F.interpolate(pixel_rank[:, None].double(), size=size, mode="nearest")[:, 0].long()
    sorted_scores = scores.gather(1, perm).masked_fill(~valid.gather(1, perm), float("nan"))
    return Ranking(pixel_rank, num, sorted_scores)


def superpixel_segments(inputs: Tensor, *, n_segments: int = 100, compactness: float = 10.0) -> Tensor:
    """SLIC superpixels [B, H, W] long of images [B, C, H, W] (scikit-image, per image on CPU)."""
    return _superpixels(inputs, n_segments, compactness)


def step_counts(
    num_features: Tensor, *, steps: int | None = None, features_per_step: int | None = None
) -> Tensor:
    """Cumulative feature counts [B, K+1] (``counts[:, 0] = 0``, last = all features).

    ``steps=K``: ``counts[:, k] = floor(k * F / K)``; K larger than an image's number of features
    F is an InputError. ``features_per_step=m``: ``counts[:, k] = min(k * m, F)`` with
    ``K = ceil(max F / m)`` (Quantus's pixel flipping schedule).
    """
    if (steps is None) == (features_per_step is None):
        raise InputError("give exactly one of steps and features_per_step")
    num = num_features.long()
    if steps is not None:
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if steps > int(num.min()):
            raise InputError(f"steps={steps} exceeds the number of features ({int(num.min())}); use fewer steps")
        k = torch.arange(steps + 1, device=num.device)
        return (k[None, :] * num[:, None]) // steps
    assert features_per_step is not None
    if features_per_step < 1:
        raise InputError(f"features_per_step must be >= 1, got {features_per_step}")
    n_steps = -(-int(num.max()) // features_per_step)
    k = torch.arange(n_steps + 1, device=num.device)
    return torch.minimum(k[None, :] * features_per_step, num[:, None])


def step_saliency(ranking: Ranking, counts: Tensor) -> Tensor:
    """Mean feature score of the features perturbed at each step k = 1..K, [B, K] (NaN if none)."""
    s = torch.nan_to_num(ranking.sorted_scores.double(), nan=0.0)
    csum = torch.cat([torch.zeros_like(s[:, :1]), s.cumsum(1)], dim=1)
    c = counts.to(s.device)
    total = csum.gather(1, c[:, 1:]) - csum.gather(1, c[:, :-1])
    n = (c[:, 1:] - c[:, :-1]).double()
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, float("nan")))


_PER_IMAGE_MIN_STEPS = 8  # from this many steps per image, rows are built image by image (no gathers)
_CONSTANT_BASELINES = {"black": 0.0, "white": 1.0}


def constant_baseline(baseline: str | Tensor | float, params: dict[str, Any] | None) -> float | None:
    """The value of a spatially constant baseline (black, white, a number), else None."""
    if isinstance(baseline, str):
        return _CONSTANT_BASELINES.get(baseline) if not params else None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return float(baseline)
    if isinstance(baseline, Tensor) and baseline.numel() == 1:
        return float(baseline)
    return None


def shown_mask(r: Tensor, lo: Tensor | None, hi: Tensor, mode: str) -> Tensor:
    """Where a row shows the image (True) rather than the baseline, from ranks `r` and per-row
    bounds ``[lo, hi)`` of the perturbed ranks (``lo=None``: cumulative, from rank 0)."""
    if mode == "delete":
        return r >= hi if lo is None else (r < lo) | (r >= hi)
    return r < hi if lo is None else (r >= lo) & (r < hi)


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    ranking: Ranking,
    counts: Tensor,
    *,
    mode: str = "delete",
    cumulative: bool = True,
    baseline: str | Tensor = "black",
    baseline_params: dict[str, Any] | None = None,
    imputer: Imputer | None = None,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
    autocast: str | None = None,
) -> Tensor:
    """Scores [B, K+1] of the target class after each step of `counts` [B, K+1].

    `baseline`: a name for `xaibench.perturbation.baselines.fill` (with `baseline_params`), or a
    tensor broadcastable to `inputs`. `imputer`, when given, replaces the baseline for deletion:
    it receives ``(images, removed [n, H, W], baseline)`` per chunk (ROAD). Step 0 of
    ``mode="delete"`` is the unperturbed image; of ``mode="insert"`` the full baseline.

    Rows are built without copying the baseline: a constant one (black, white, a number) is
    written directly (a multiplication by the kept mask for black and non-negative images), and
    with at least `_PER_IMAGE_MIN_STEPS` steps the rows of each image are compared with its rank
    map by broadcasting (no per-row gathers of ranks, images or baselines).
    """
    check_choice("mode", mode, MODES)
    check_choice("output", output, OUTPUTS)
    if max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if imputer is not None and mode != "delete":
        raise InputError("an imputer only applies to mode='delete'")
    dev = model_device(model, inputs.device)
    x = inputs.to(dev)
    t = targets.to(dev)
    b, n_cols = counts.shape
    rank_dtype = torch.int32 if max(int(ranking.num_features.max()), int(counts.max())) < 2**31 - 1 else torch.long
    ranks = ranking.ranks.to(dev, rank_dtype)
    hi = counts.to(dev, rank_dtype)
    lo = None if cumulative else torch.cat([torch.zeros_like(hi[:, :1]), hi[:, :-1]], dim=1)
    const = None if imputer is not None else constant_baseline(baseline, baseline_params)
    base: Tensor | None = None
    if const is None:
        if isinstance(baseline, str):
            base = fill(x, baseline, seed=seed, **(baseline_params or {}))
        else:
            base = torch.as_tensor(baseline, dtype=x.dtype, device=dev).expand_as(x)
    by_mul = const == 0.0 and bool((x >= 0).all())  # x * 0 is +0.0 exactly like the filled value
    fill_value = None if const is None else torch.tensor(const, dtype=x.dtype, device=dev)
    per_image = imputer is None and n_cols >= _PER_IMAGE_MIN_STEPS
    total = b * n_cols
    out = torch.empty(total, dtype=torch.float32, device=dev)
    for start in range(0, total, max_batch):
        stop = min(start + max_batch, total)
        if per_image:
            chunk = torch.empty((stop - start, *x.shape[1:]), dtype=x.dtype, device=dev)
            for img in range(start // n_cols, (stop - 1) // n_cols + 1):
                k0, k1 = max(start - img * n_cols, 0), min(stop - img * n_cols, n_cols)
                rows = chunk[img * n_cols + k0 - start : img * n_cols + k1 - start]
                shown = shown_mask(ranks[img], None if lo is None else lo[img, k0:k1, None, None],
                               hi[img, k0:k1, None, None], mode)[:, None]
                if by_mul:
                    torch.mul(shown, x[img], out=rows)
                else:
                    other = fill_value if base is None else base[img]
                    torch.where(shown, x[img], other, out=rows)
            ib = torch.arange(start, stop, device=dev) // n_cols
        else:
            idx = torch.arange(start, stop, device=dev)
            ib, ki = idx // n_cols, idx % n_cols
            shown = shown_mask(ranks[ib], None if lo is None else lo[ib, ki][:, None, None],
                           hi[ib, ki][:, None, None], mode)[:, None]
            if imputer is not None:
                assert base is not None
                chunk = imputer(x[ib], ~shown[:, 0], base[ib])
            elif by_mul:
                chunk = x[ib].mul_(shown)
            elif base is None:
                chunk = x[ib].masked_fill_(~shown, const)
            else:
                chunk = torch.where(shown, x[ib], base[ib])
        out[start:stop] = score_chunk(model, chunk, t[ib], output, autocast)
    return out.view(b, n_cols)


@torch.no_grad()
def score_chunk(model: nn.Module, inputs: Tensor, targets: Tensor, output: str, autocast: str | None = None) -> Tensor:
    """Scores [n] of one chunk (see module doc for `output` and `autocast`), float32."""
    if output == "correct":
        with forward_precision(inputs.device, autocast):
            return (model(inputs).argmax(dim=1) == targets).float()
    return class_scores(model, inputs, targets, output=output, max_batch=max(1, inputs.shape[0]), autocast=autocast)


def prepare(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor | int | list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate the common metric arguments; return them on the model's device.

    Checks: images [B, C, H, W] finite and in the model's pixel range (`check_images`), maps
    [B, h, w] finite with the same B (at least 1) and no finer than the images, targets in ``[0, num_classes)`` (one forward on the first image tells the number of
    classes).
    """
    check_images(inputs, model=model)
    check_maps(attributions, batch=inputs.shape[0])
    check_map_size(attributions, inputs.shape[-2:])
    dev = model_device(model, inputs.device)
    x = inputs.to(dev)
    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    t = check_targets(targets, x.shape[0], num_classes).to(dev)
    return x, attributions.to(dev), t
