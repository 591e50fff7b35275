"""Input validation shared by every public function: clear errors instead of silent nonsense.

Images are checked against the pixel range their model takes: [0, 1] by default (xaibench's
convention; normalisation lives inside the model). A model that takes another range declares it
once with `set_input_range` (``None`` switches the check off for that model).

Besides images, maps, targets and masks: class indices in range (`check_targets`), probability
vectors that sum to 1 (`check_probabilities`), logits (`check_logits`), counts and numbers in
range (`check_count`, `check_number`), non-empty batches of matching size (`check_nonempty`,
`check_same_batch`). Every error names the argument and says how to fix it.

A model in training mode is evaluated in eval mode and put back as it was, with a warning
(`evaluation_mode`; the metrics' registry and the explainers apply it): batch-norm statistics
and dropout must not change a score, nor a score the model.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from numbers import Integral, Real

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


TRAINING_MODE = (
    "the model is in training mode: it is evaluated in eval mode (batch-norm running statistics and dropout "
    "left alone) and put back in training mode afterwards; call model.eval() first to silence this warning"
)


def mode_dependent(module: nn.Module) -> bool:
    """Whether `module` computes differently in training mode: batch / instance norm, dropout, and
    layers named like dropout (timm's DropPath, DropBlock)."""
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)) or \
        "Drop" in type(module).__name__


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Within the block `model` is in eval mode; every module's mode is restored afterwards, also on
    errors. A model with a layer that behaves differently in training mode (`mode_dependent`) left
    in training mode gets a `UserWarning` (`TRAINING_MODE`). Scores equal the eval-mode scores and
    buffers (batch-norm statistics) stay unchanged."""
    modes = [(m, m.training) for m in model.modules()]
    if any(m.training and mode_dependent(m) for m in model.modules()):
        warnings.warn(TRAINING_MODE, UserWarning, stacklevel=4)
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def check_nonempty(t: Tensor, name: str, what: str) -> None:
    """`t` holds at least one row (dimension 0)."""
    if t.ndim == 0 or t.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (0 {what}); pass at least one")


def check_same_batch(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """`a` and `b` have one row per item of the same batch."""
    if a.shape[0] != b.shape[0]:
        raise InputError(f"{names[0]} has {a.shape[0]} rows but {names[1]} has {b.shape[0]}: pass one per item of "
                         "the same batch")


def check_positive_int(value: object, name: str) -> int:
    """A positive int (a number of steps, samples, a window or patch size, a batch bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """An int >= `minimum` (a count of bins, samples, repeats, ...); returned as int."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_number(value: float | Tensor, name: str, low: float = 0.0, high: float = 1.0, *,
                 open_low: bool = False) -> None:
    """A finite number (or every entry of a tensor) in [low, high] (``open_low``: (low, high]); the
    defaults check a fraction."""
    if isinstance(value, Tensor):
        if value.is_complex() or not torch.isfinite(value).all():
            raise InputError(f"{name} must hold finite numbers in [{low:g}, {high:g}]")
        lo, hi = (float(value.amin()), float(value.amax())) if value.numel() else (low + 1, low + 1)
    elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
        lo = hi = float(value)
    else:
        raise InputError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    if lo < low or hi > high or (open_low and lo <= low):
        bracket = "(" if open_low else "["
        got = f"{lo:g}" if hi == lo else f"values from {lo:g} to {hi:g}"
        raise InputError(f"{name} must be in {bracket}{low:g}, {high:g}], got {got}")


def _finite_tensor(t: Tensor, name: str, ndim: int, kind: str, what: str) -> None:
    """A non-empty finite floating tensor of `ndim` dimensions (`kind` describes it, `what` its rows)."""
    if not isinstance(t, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of {kind}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise InputError(f"{name} must be {kind}, got shape {tuple(t.shape)}")
    check_nonempty(t, name, what)
    if not t.is_floating_point():
        raise InputError(f"{name} must be floating point {kind}, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: some entries are NaN or Inf")


def check_logits(logits: Tensor, name: str = "logits") -> None:
    """Logits are a non-empty finite floating tensor [N, classes >= 2]."""
    _finite_tensor(logits, name, 2, "scores [N, classes >= 2]", "rows")
    if logits.shape[1] < 2:
        raise InputError(f"{name} must be scores [N, classes >= 2], got shape {tuple(logits.shape)}")


PROBABILITY_TOLERANCE = 1e-3


def check_probabilities(probs: Tensor, name: str = "probs", atol: float = PROBABILITY_TOLERANCE) -> None:
    """Probability vectors: a non-empty tensor [N, classes >= 2] with entries in [0, 1] and rows that
    sum to 1 within `atol` (softmax outputs, not logits)."""
    check_logits(probs, name)
    if (probs < 0).any() or (probs > 1).any():
        raise InputError(f"{name} must be probabilities in [0, 1] (softmax outputs), got values in "
                         f"[{float(probs.amin()):.4g}, {float(probs.amax()):.4g}]; for logits apply .softmax(dim=1)")
    sums = probs.double().sum(1)
    bad = ((sums - 1).abs() > atol).nonzero().flatten().tolist()
    if bad:
        raise InputError(f"{name}: rows {bad[:10]} do not sum to 1 (e.g. {float(sums[bad[0]]):.4g}); pass probability "
                         "vectors (softmax outputs over all classes)")


def check_images(inputs: Tensor, name: str = "inputs", model: nn.Module | None = None,
                 value_range: tuple[float, float] | None = None) -> None:
    """Images are a non-empty floating tensor [B, C, H, W] with finite values; with `model`, in the
    pixel range the model takes (`input_range`); without one, in `value_range` when given (functions
    that use no model but assume images in [0, 1] pass `DEFAULT_RANGE`)."""
    _finite_tensor(inputs, name, 4, "images [B, C, H, W]", "images")
    if not _range_checked.get():
        return
    if model is not None:
        _check_range(inputs, name, input_range(model))
    elif value_range is not None:
        _check_range(inputs, name, value_range, by_model=False)


def _check_range(inputs: Tensor, name: str, value_range: tuple[float, float] | None, by_model: bool = True) -> None:
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
    if not by_model:
        raise InputError(f"{name} hold pixel values in [{lo:.4g}, {hi:.4g}], but images in [{low:g}, {high:g}] are "
                         f"expected.{hint}")
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
    check_nonempty(attributions, name, "maps")
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


def check_targets(targets: Tensor | int | list[int], batch: int, num_classes: int | None = None,
                  name: str = "targets", broadcast: bool = True) -> Tensor:
    """Return class indices as a long tensor [B]; an int is broadcast (unless ``broadcast=False``).
    Floating values, a wrong count and classes outside [0, num_classes) are errors."""
    try:
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{name} must be integer class indices, got {type(targets).__name__}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name} must be integer class indices, got {t.dtype}")
    t = t.long().flatten()
    if broadcast and t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"{name} has {t.numel()} entries for {batch} rows; pass one class index per row")
    if (t < 0).any() or (num_classes is not None and (t >= num_classes).any()):
        bad = t[(t < 0) | (t >= (num_classes if num_classes is not None else t.max() + 1))]
        raise InputError(f"{name} out of range [0, {num_classes}): {bad.tolist()[:10]}; class indices count from 0")
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
