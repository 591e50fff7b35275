"""Input validation shared by explainers and metrics: clear errors instead of silent nonsense.

Images are checked against the pixel range their model takes: [0, 1] by default (xaibench's
convention; normalisation lives inside the model). A model that takes another range declares it
once with `set_input_range` (``None`` switches the check off for that model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from xaibench.errors import InputError

DEFAULT_RANGE = (0.0, 1.0)
RANGE_SLACK = 0.01  # resampling may overshoot the range slightly
_RANGE_ATTR = "xaibench_input_range"
_range_checked: ContextVar[bool] = ContextVar("xaibench_range_checked", default=True)


def set_input_range(model: nn.Module, value_range: tuple[float, float] | None) -> nn.Module:
    """Declare the pixel range `model` takes: ``(low, high)``, or ``None`` for no range check
    (e.g. a model that takes ImageNet-normalised tensors). Returns `model`.

    The declaration is an attribute of the module, so wrappers around it (xaibench's
    normalisation, the autotimm facade) see it too.
    """
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise InputError(f"the input range must be (low, high) with low < high, got {value_range!r}")
        value_range = (low, high)
    setattr(model, _RANGE_ATTR, value_range)
    return model


def input_range(model: nn.Module) -> tuple[float, float] | None:
    """The pixel range `model` (or a module inside it) declared with `set_input_range`, else [0, 1]."""
    for m in model.modules():
        if hasattr(m, _RANGE_ATTR):
            return getattr(m, _RANGE_ATTR)
    return DEFAULT_RANGE


@contextlib.contextmanager
def perturbed_inputs() -> Iterator[None]:
    """Within the block images are not range-checked: a metric explains copies of checked images
    that it perturbed on purpose (noise may leave [0, 1])."""
    token = _range_checked.set(False)
    try:
        yield
    finally:
        _range_checked.reset(token)


def _empty(t: Tensor, name: str, what: str) -> None:
    if t.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (0 {what}); pass at least one")


def check_images(inputs: Tensor, name: str = "inputs", model: nn.Module | None = None) -> None:
    """Images are a non-empty floating tensor [B, C, H, W] with finite values; with `model`, in the
    pixel range the model takes (`input_range`)."""
    if not isinstance(inputs, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of images, got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise InputError(f"{name} must be images [B, C, H, W], got shape {tuple(inputs.shape)}")
    _empty(inputs, name, "images")
    if not inputs.is_floating_point():
        raise InputError(f"{name} must be floating point images in [0, 1], got {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        raise InputError(f"{name}: some pixels are NaN or Inf")
    if model is not None and _range_checked.get():
        _check_range(inputs, name, input_range(model))


def _check_range(inputs: Tensor, name: str, value_range: tuple[float, float] | None) -> None:
    if value_range is None:
        return
    low, high = value_range
    lo, hi = float(inputs.amin()), float(inputs.amax())
    if lo >= low - RANGE_SLACK and hi <= high + RANGE_SLACK:
        return
    if value_range != DEFAULT_RANGE:
        hint = ""
    elif hi > 1.5 and lo >= 0:
        hint = " They look like 8-bit pixel values: divide by 255."
    elif lo < 0:
        hint = (" They look like mean/std-normalised images: pass the images before normalisation and put "
                "the normalisation inside the model (load_model does).")
    else:
        hint = ""
    raise InputError(
        f"{name} hold pixel values in [{lo:.4g}, {hi:.4g}], but the model takes images in [{low:g}, {high:g}]."
        f"{hint} For a model that takes another range, declare it: "
        "xaibench.checks.set_input_range(model, (low, high)), or None to skip this check."
    )


def check_maps(attributions: Tensor, batch: int | None = None, name: str = "attributions",
               finite: bool = True) -> None:
    """Attribution maps are a non-empty floating tensor [B, h, w] (any resolution), finite unless
    ``finite=False`` (maps of a randomised model may overflow)."""
    if not isinstance(attributions, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.ndim != 3:
        raise InputError(
            f"{name} must have shape [B, H, W] (reduce channels first), got {tuple(attributions.shape)}"
        )
    _empty(attributions, name, "maps")
    if batch is not None and attributions.shape[0] != batch:
        raise InputError(f"{name} has batch size {attributions.shape[0]}, expected {batch} (one map per image)")
    if not attributions.is_floating_point():
        raise InputError(f"{name} must be floating point, got {attributions.dtype}")
    if not finite:
        return
    bad = ~torch.isfinite(attributions).flatten(1).all(dim=1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise InputError(f"{name}: the maps of images {idx[:10]} hold NaN or Inf values")


def check_targets(targets: Tensor | int | list[int], batch: int, num_classes: int | None = None) -> Tensor:
    """Return targets as a long tensor [B]; an int is broadcast. Out-of-range classes are an error."""
    t = torch.as_tensor(targets)
    if t.is_floating_point():
        raise InputError(f"targets must be integer class indices, got {t.dtype}")
    t = t.long().flatten()
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"targets has {t.numel()} entries for {batch} images")
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
