"""Shared machinery of the random-subset and correlation faithfulness metrics.

Conventions used by every metric built on this module:

- A *feature* is one cell of the attribution map. Maps at input resolution have one feature per
  pixel (all colour channels of that pixel together). Lower-resolution maps (e.g. CAM maps) are
  accepted when the input size is an integer multiple of the map size; a feature is then the
  block of ``(H/h) x (W/w)`` pixels it covers.
- Removing a feature replaces its pixels by the baseline
  (`xaibench.perturbation.baselines.fill`, with `baseline_params`), in [0, 1] pixel space.
  Random baselines (``uniform``) draw fresh values for every perturbed copy.
- The model is scored with `xaibench.perturbation.forward.class_scores` (softmax probability of
  the target class by default), in chunks of at most `max_batch` perturbed images; masks and
  perturbed images exist only one chunk at a time, so memory is bounded by `max_batch`.
- Random draws come from one `torch.Generator` (`xaibench.seeding.make_generator`) on the
  inputs' device, drawn chunk by chunk in row order with `torch.rand`; on CPU the draws are
  therefore the same whatever `max_batch` is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_maps, check_positive_int, check_targets
from xaibench.errors import InputError
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.forward import class_scores

OUTPUTS = ("softmax", "logit", "log_softmax")
# Baselines whose replacement values are random: each perturbed copy draws its own values.
RANDOM_BASELINES = frozenset({"uniform"})


def validate(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor | int | list[int] | None,
    output: str,
    max_batch: int,
) -> tuple[Tensor | None, int]:
    """Check inputs, maps, targets, `output` and `max_batch`; return (targets on the inputs' device, n_classes).

    The number of classes is read from one forward pass of the first image.
    """
    check_images(inputs, model=model)
    check_maps(attributions, batch=inputs.shape[0])
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
    check_positive_int(max_batch, "max_batch")
    block_size(inputs, attributions)
    with torch.no_grad():
        n_classes = int(model(inputs[:1]).shape[1])
    if targets is None:
        return None, n_classes
    return check_targets(targets, inputs.shape[0], n_classes).to(inputs.device), n_classes


def block_size(inputs: Tensor, attributions: Tensor) -> tuple[int, int]:
    """Pixels per feature along (H, W); the input size must be a multiple of the map size."""
    (h, w), (big_h, big_w) = attributions.shape[-2:], inputs.shape[-2:]
    if big_h % h or big_w % w:
        raise InputError(
            f"attributions of size {h}x{w} do not tile inputs of size {big_h}x{big_w}; "
            "use maps at input resolution or an integer fraction of it"
        )
    return big_h // h, big_w // w


def to_pixels(feature_masks: Tensor, block: tuple[int, int]) -> Tensor:
    """Expand feature masks/values [M, h, w] to pixels [M, 1, H, W] (each feature covers a block)."""
    out = feature_masks
    if block != (1, 1):
        out = out.repeat_interleave(block[0], dim=1).repeat_interleave(block[1], dim=2)
    return out[:, None]


def check_count(value: int | float, n_features: int, name: str) -> int:
    """An int counts features; a float in (0, 1] is a fraction of them. Must be in [1, n_features]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be an int (features) or a float fraction, got {value!r}")
    count = int(value) if isinstance(value, int) else round(value * n_features)
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise InputError(f"{name} as a fraction must lie in (0, 1], got {value}")
    if not 1 <= count <= n_features:
        raise InputError(f"{name}={value} gives {count} features; the maps have {n_features} features")
    return count


def perturbed_scores(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    n_rows: int,
    rows_per_image: int,
    chunk_masks: Callable[[int, int], Tensor],
    block: tuple[int, int],
    *,
    baseline: str,
    baseline_params: Mapping[str, Any] | None,
    output: str,
    max_batch: int,
    generator: torch.Generator,
) -> Tensor:
    """Class scores of ``n_rows`` perturbed images, built and scored `max_batch` rows at a time.

    Row ``r`` perturbs image ``r // rows_per_image``. ``chunk_masks(start, stop)`` returns the
    feature masks [stop - start, h, w] (bool, True = replaced by the baseline) of those rows.
    Returns float32 [n_rows].
    """
    random_fill = baseline in RANDOM_BASELINES
    params = dict(baseline_params or {})
    out = torch.empty(n_rows, dtype=torch.float32, device=inputs.device)
    for start in range(0, n_rows, max_batch):
        stop = min(start + max_batch, n_rows)
        image = torch.arange(start, stop, device=inputs.device) // rows_per_image
        x = inputs[image]
        if random_fill:  # fresh values for every perturbed copy
            values = fill(x, baseline, seed=generator, **params)
        else:  # once per image of this chunk
            first = start // rows_per_image
            values = fill(inputs[first : (stop - 1) // rows_per_image + 1], baseline, **params)[image - first]
        mask = to_pixels(chunk_masks(start, stop), block)
        perturbed = torch.where(mask, values, x)
        out[start:stop] = class_scores(model, perturbed, targets[image], output=output, max_batch=max_batch)
    return out


def random_subsets(keys: Tensor, sizes: Tensor) -> Tensor:
    """Random feature subsets as bool masks [n, F]: row ``i`` holds the `sizes[i]` features with
    the largest uniform `keys[i]` (keys [n, F] from ``torch.rand``), i.e. a uniform random subset."""
    top = keys.topk(int(sizes.max()), dim=1).indices
    keep = torch.arange(top.shape[1], device=keys.device) < sizes[:, None]
    return torch.zeros_like(keys, dtype=torch.bool).scatter_(1, top, keep)


def ranks_desc(values: Tensor) -> Tensor:
    """Position [n, F] (0 = largest) of every feature when each row is sorted in descending order
    (stable: ties keep their feature order)."""
    order = values.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)
