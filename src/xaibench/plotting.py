"""Heatmap overlays and galleries (matplotlib, Agg backend), shared by the CLI and the HTML report.

Images are [C, H, W] in [0, 1] (C = 1 or 3); maps are [H, W] (any sign). Each map is min-max
normalised on its own (a constant map shows as all-low), coloured with a colormap and blended
over the grey-scale image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from xaibench.errors import InputError  # noqa: E402


def _image_rgb(image: Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> float RGB [H, W, 3] in [0, 1]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"image must have shape [C, H, W] with C = 1 or 3, got {tuple(image.shape)}")
    img = image.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def normalise(heatmap: Tensor) -> Tensor:
    """Min-max normalise to [0, 1]; a constant map becomes all zeros."""
    m = heatmap.detach().float().cpu()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def overlay(image: Tensor, heatmap: Tensor, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """The min-max normalised `heatmap` [h, w] coloured with `cmap` over the grey-scale `image`.

    A map at another resolution than the image is resized bilinearly. Returns RGB uint8 [H, W, 3].
    """
    if heatmap.ndim != 2:
        raise InputError(f"heatmap must have shape [H, W], got {tuple(heatmap.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _image_rgb(image)
    h, w = rgb.shape[:2]
    m = heatmap.detach().float().cpu()
    if tuple(m.shape) != (h, w):
        m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    colours = plt.get_cmap(cmap)(normalise(m).numpy())[..., :3]
    grey = rgb.mean(axis=2, keepdims=True).repeat(3, axis=2)
    out = (1 - alpha) * grey + alpha * colours
    return (out * 255).round().clip(0, 255).astype(np.uint8)


def save_gallery(images: Tensor, maps: Mapping[str, Tensor], path: str | Path, *,
                 titles: Sequence[str] | None = None, cmap: str = "jet", alpha: float = 0.5,
                 cell: float = 1.6) -> Path:
    """A PNG grid: one row per image; columns = the image, then each method's map overlaid.

    images: [N, C, H, W] in [0, 1]; maps: method -> [N, h, w]; titles: one per row (e.g. ids).
    """
    n = images.shape[0]
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise InputError(f"maps of {name!r} must have shape [{n}, H, W], got {tuple(m.shape)}")
    if titles is not None and len(titles) != n:
        raise InputError(f"titles has {len(titles)} entries, expected {n}")
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(cell * cols, cell * n), squeeze=False)
    try:
        for i in range(n):
            axes[i, 0].imshow(_image_rgb(images[i]))
            if titles is not None:
                axes[i, 0].set_ylabel(str(titles[i]), fontsize=7)
            for j, (name, m) in enumerate(maps.items(), start=1):
                axes[i, j].imshow(overlay(images[i], m[i], cmap=cmap, alpha=alpha))
                if i == 0:
                    axes[i, j].set_title(name, fontsize=8)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_title("image", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
