"""Baselines: the values that replace removed features (pixel space, images in [0, 1]).

``fill(inputs, baseline, seed=..., **params)`` returns a tensor shaped like `inputs` holding the
replacement value of every pixel; a perturbation keeps ``inputs`` where a feature is kept and
takes ``fill(...)`` where it is removed. Everything runs batched on the inputs' device.

Built-in baselines (``BASELINES``):

- ``black``: 0 everywhere; ``white``: 1 everywhere.
- ``mean``: per-image, per-channel mean of the image.
- ``uniform``: i.i.d. uniform noise in [0, 1), drawn from one generator seeded by `seed`.
- ``gaussian_blur``: the image blurred with a Gaussian (``kernel_size=51``, ``sigma=20.0``,
  the values used by autotimm's ExplanationMetrics), separable, reflect padding as in
  ``torchvision.transforms.functional.gaussian_blur``.
- ``box_blur``: the image blurred with a ``kernel_size`` x ``kernel_size`` mean filter; by default
  as Gomez et al.'s code (``saliency_maps_metrics``' ``blur_data``): ``kernel_size=None`` means
  ``max(H // 5, 9)`` rounded up to odd (from the image height, square), ``padding="zeros"``
  (a plain convolution: pixels near the border average in zeros, so borders darken).
  ``padding="reflect"`` reflects the image instead.

Convention for kernels larger than the image under reflect padding (which needs ``pad < size``):
a kernel is truncated to the largest odd size ``<= 2 * size - 1`` along that axis (the Gaussian
weights keep their `sigma` and are renormalised). For kernels that fit, the result equals
torchvision's. Zero padding takes any kernel size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.errors import InputError
from xaibench.registry import Registry
from xaibench.seeding import make_generator

BaselineFn = Callable[..., Tensor]
BASELINES: Registry[BaselineFn] = Registry("baseline")


def _odd_kernel(kernel_size: int, size: int) -> int:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return min(kernel_size, 2 * size - 1)


PADDINGS = ("reflect", "zeros")


def _separable(inputs: Tensor, k_h: Tensor, k_w: Tensor, padding: str = "reflect") -> Tensor:
    """Convolve every channel with the outer product of 1-d kernels `k_h` x `k_w` (odd sizes),
    padding by reflection or with zeros."""
    b, c, h, w = inputs.shape
    x = inputs.reshape(b * c, 1, h, w)
    ph, pw = k_h.numel() // 2, k_w.numel() // 2
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), mode="reflect") if padding == "reflect" else F.pad(x, (pw, pw, ph, ph))
    x = F.conv2d(x, k_h.view(1, 1, -1, 1).to(x))
    x = F.conv2d(x, k_w.view(1, 1, 1, -1).to(x))
    return x.reshape(b, c, h, w)


def _gaussian_1d(kernel_size: int, sigma: float, device: torch.device) -> Tensor:
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@BASELINES.register("black")
def _black(inputs: Tensor, generator: torch.Generator) -> Tensor:
    return torch.zeros_like(inputs)


@BASELINES.register("white")
def _white(inputs: Tensor, generator: torch.Generator) -> Tensor:
    return torch.ones_like(inputs)


@BASELINES.register("mean")
def _mean(inputs: Tensor, generator: torch.Generator) -> Tensor:
    return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()


@BASELINES.register("uniform")
def _uniform(inputs: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)


@BASELINES.register("gaussian_blur")
def _gaussian_blur(
    inputs: Tensor, generator: torch.Generator, kernel_size: int = 51, sigma: float = 20.0
) -> Tensor:
    if sigma <= 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    h, w = inputs.shape[-2:]
    k_h = _gaussian_1d(_odd_kernel(kernel_size, h), sigma, inputs.device)
    k_w = _gaussian_1d(_odd_kernel(kernel_size, w), sigma, inputs.device)
    return _separable(inputs, k_h, k_w)


def gomez_kernel_size(height: int) -> int:
    """Gomez et al.'s box kernel side for images of `height` rows: max(height // 5, 9), made odd."""
    k = max(height // 5, 9)
    return k + 1 if k % 2 == 0 else k


@BASELINES.register("box_blur")
def _box_blur(inputs: Tensor, generator: torch.Generator, kernel_size: int | None = None,
              padding: str = "zeros") -> Tensor:
    if padding not in PADDINGS:
        raise InputError(f"padding must be one of {PADDINGS}, got {padding!r}")
    h, w = inputs.shape[-2:]
    k = gomez_kernel_size(h) if kernel_size is None else kernel_size
    if padding == "reflect":
        kh, kw = _odd_kernel(k, h), _odd_kernel(k, w)
    else:
        kh = kw = _odd_kernel(k, k)  # zero padding takes any odd size
    dev = inputs.device
    return _separable(inputs, torch.full((kh,), 1.0 / kh, device=dev), torch.full((kw,), 1.0 / kw, device=dev),
                      padding)


def fill(
    inputs: Tensor, baseline: str, *, seed: int | torch.Generator | None = 0, **params: Any
) -> Tensor:
    """Replacement values [B, C, H, W] for removed features of `inputs` [B, C, H, W].

    `baseline` names an entry of ``BASELINES`` (unknown names raise ``UnknownNameError`` with
    suggestions); `params` go to it (``kernel_size``, ``sigma`` for the blurs). `seed` drives the
    random baselines (``uniform``); the output is on the inputs' device, in their dtype.
    """
    fn = BASELINES.get(baseline)
    if inputs.ndim != 4:
        raise InputError(f"inputs must have shape [B, C, H, W], got {tuple(inputs.shape)}")
    try:
        return fn(inputs, make_generator(seed, inputs.device), **params)
    except TypeError as err:
        raise InputError(f"baseline {baseline!r}: {err}") from err
