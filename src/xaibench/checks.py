"""Input validation shared by explainers and metrics: clear errors instead of silent nonsense."""

from __future__ import annotations

import torch
from torch import Tensor

from xaibench.errors import InputError


def check_images(inputs: Tensor, name: str = "inputs") -> None:
    """Images are a floating tensor [B, C, H, W] with finite values."""
    if not isinstance(inputs, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise InputError(f"{name} must have shape [B, C, H, W], got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InputError(f"{name} must be floating point, got {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        raise InputError(f"{name} contain NaN or Inf values")


def check_maps(attributions: Tensor, batch: int | None = None, name: str = "attributions") -> None:
    """Attribution maps are a finite floating tensor [B, h, w] (any resolution)."""
    if not isinstance(attributions, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.ndim != 3:
        raise InputError(
            f"{name} must have shape [B, H, W] (reduce channels first), got {tuple(attributions.shape)}"
        )
    if batch is not None and attributions.shape[0] != batch:
        raise InputError(f"{name} has batch size {attributions.shape[0]}, expected {batch}")
    if not attributions.is_floating_point():
        raise InputError(f"{name} must be floating point, got {attributions.dtype}")
    bad = ~torch.isfinite(attributions).flatten(1).all(dim=1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise InputError(f"{name} contain NaN or Inf values (images {idx[:10]})")


def check_targets(targets: Tensor | int | list[int], batch: int, num_classes: int | None = None) -> Tensor:
    """Return targets as a long tensor [B]; an int is broadcast. Out-of-range classes are an error."""
    t = torch.as_tensor(targets)
    if t.is_floating_point():
        raise InputError(f"targets must be integer class indices, got {t.dtype}")
    t = t.long().flatten()
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"targets has {t.numel()} entries, expected {batch}")
    if (t < 0).any() or (num_classes is not None and (t >= num_classes).any()):
        raise InputError(f"targets out of range [0, {num_classes}): {t.tolist()[:10]}")
    return t


def check_masks(masks: Tensor, shape: torch.Size | tuple[int, ...] | None = None, name: str = "masks") -> Tensor:
    """Human masks are [B, H, W]; returned as bool. `shape`, when given, must match."""
    if not isinstance(masks, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    if masks.ndim != 3:
        raise InputError(f"{name} must have shape [B, H, W], got {tuple(masks.shape)}")
    if shape is not None and tuple(masks.shape) != tuple(shape):
        raise InputError(f"{name} has shape {tuple(masks.shape)}, expected {tuple(shape)}")
    return masks.bool() if masks.dtype != torch.bool else masks


def check_map_size(attributions: Tensor, size: torch.Size | tuple[int, ...], name: str = "attributions") -> None:
    """Maps [B, h, w] may be coarser than or as fine as the inputs' spatial `size` (H, W), never finer.

    Metrics that rank map cells and perturb input pixels cannot remove a fraction of a pixel: a
    finer map would be downsampled silently, so it is an error (resize it to the input first).
    """
    h, w = attributions.shape[-2:]
    big_h, big_w = int(size[0]), int(size[1])
    if h > big_h or w > big_w:
        raise InputError(
            f"{name} ({h}x{w}) are finer than the inputs ({big_h}x{big_w}); resize the maps to the input size "
            "or coarser first"
        )
