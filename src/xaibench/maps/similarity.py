"""Similarity of attribution maps, as MAPS compares them (per image pair, batched).

- `l1_similarity`, `l2_similarity`: each map z-scored (mean 0, std 1, + 1e-8), then
  ``1 / (1 + d + 1e-8)`` with d the mean absolute difference (L1) or the root mean squared
  difference (L2). A constant map has no z-score: the pair's similarity is NaN (with MAPS'
  ``+ 1e-8`` every constant map would z-score to zeros and count as identical to any other
  constant map, e.g. an all-zero and an all-one map).
- `lpips_similarity`: maps as 3 identical channels scaled by their maximum magnitude into
  [-1, 1], LPIPS (AlexNet backbone, the linear heads torchmetrics ships) d, then
  ``1 / (1 + sqrt(d) + 1e-8)``. The AlexNet weights must be on this machine (a file you pass, or
  torchvision's cache): offline without them this raises `WeightsUnavailableError`, it never
  substitutes random weights.
- `inverse_l2`: MAPS' ground truth of map agreement between two models, ``1 / (||A1 - A2|| + 1e-8)``
  on the maps as they are (no normalisation), per image.

Maps are [B, H, W] or [B, C, H, W]; the two batches must have the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from xaibench.checks import check_nonempty
from xaibench.devices import model_device
from xaibench.errors import InputError, WeightsUnavailableError

EPS = 1e-8
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet ImageNet weights


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch.Tensor of maps, got {type(t).__name__}")
    if a.shape != b.shape or a.ndim not in (3, 4):
        raise InputError(f"maps must be two batches [B, H, W] or [B, C, H, W] of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    for name, t in (("first", a), ("second", b)):
        if not torch.isfinite(t).all():
            raise InputError(f"the {name} maps contain NaN or Inf values")
    check_nonempty(a, "a", "maps")
    if a.is_complex() or a.dtype == torch.bool or b.is_complex() or b.dtype == torch.bool:
        raise InputError(f"maps must be real numbers, got {a.dtype} and {b.dtype}")
    return a.flatten(1).double(), b.flatten(1).double()


def _zscored_distance(a: Tensor, b: Tensor, distance: Callable[[Tensor], Tensor]) -> Tensor:
    """``1 / (1 + distance(z(a) - z(b)) + 1e-8)``, NaN for a pair with a constant map."""
    constant = (a.amax(1) == a.amin(1)) | (b.amax(1) == b.amin(1))
    sim = 1.0 / (1.0 + distance(_zscore(a) - _zscore(b)) + EPS)
    return torch.where(constant, torch.full_like(sim, float("nan")), sim)


def _zscore(x: Tensor) -> Tensor:
    x = x - x.mean(1, keepdim=True)
    return x / (x.std(1, unbiased=False, keepdim=True) + EPS)


def l1_similarity(a: Tensor, b: Tensor) -> Tensor:
    """``1 / (1 + mean|z(a) - z(b)| + 1e-8)`` per image, float64 [B] (NaN with a constant map)."""
    return _zscored_distance(*_pair(a, b), lambda d: d.abs().mean(1))


def l2_similarity(a: Tensor, b: Tensor) -> Tensor:
    """``1 / (1 + rms(z(a) - z(b)) + 1e-8)`` per image, float64 [B] (NaN with a constant map)."""
    return _zscored_distance(*_pair(a, b), lambda d: d.pow(2).mean(1).sqrt())


def inverse_l2(a: Tensor, b: Tensor) -> Tensor:
    """MAPS' ground-truth map agreement ``1 / (||a - b||_2 + 1e-8)`` per image, float64 [B]."""
    a, b = _pair(a, b)
    return 1.0 / ((a - b).norm(dim=1) + EPS)


def _alexnet_weights(path: str | Path | None) -> Path:
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsUnavailableError(f"AlexNet weights for LPIPS not found: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not cached.is_file():
        raise WeightsUnavailableError(
            f"LPIPS needs torchvision's ImageNet AlexNet weights ({ALEXNET_FILE}), which are not in "
            f"{cached.parent} and cannot be downloaded here; pass alexnet_weights=PATH to a copy"
        )
    return cached


def lpips_model(alexnet_weights: str | Path | None = None) -> nn.Module:
    """torchmetrics' LPIPS (AlexNet) with the backbone weights read from `alexnet_weights` or the cache."""
    from torchmetrics.functional.image.lpips import _LPIPS

    state = torch.load(_alexnet_weights(alexnet_weights), map_location="cpu", weights_only=True)
    model = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # random backbone, replaced below
    loaded = 0
    for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for index, layer in slice_.named_children():
            if isinstance(layer, nn.Conv2d):
                layer.weight.data.copy_(state[f"features.{index}.weight"])
                layer.bias.data.copy_(state[f"features.{index}.bias"])
                loaded += 1
    if loaded != 5:
        raise WeightsUnavailableError(f"{alexnet_weights}: not AlexNet weights (found {loaded} of 5 convolutions)")
    return model.eval()


def lpips_similarity(a: Tensor, b: Tensor, *, model: nn.Module | None = None,
                     alexnet_weights: str | Path | None = None) -> Tensor:
    """``1 / (1 + sqrt(LPIPS) + 1e-8)`` per image pair, float64 [B] (see the module docstring)."""
    _pair(a, b)
    if model is not None and not isinstance(model, nn.Module):
        raise InputError(f"model must be an LPIPS module (lpips_model()), got {type(model).__name__}")
    model = model or lpips_model(alexnet_weights)

    def prep(m: Tensor) -> Tensor:
        m = m.float()
        m = m.unsqueeze(1) if m.ndim == 3 else m
        m = m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m
        peak = m.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
        return (m / (peak + EPS)).clamp(-1, 1)

    device = model_device(model)
    with torch.no_grad():
        d = model(prep(a).to(device), prep(b).to(device)).flatten().double().clamp(min=0)
    return (1.0 / (1.0 + d.sqrt() + EPS)).cpu()
