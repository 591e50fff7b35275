"""Attribution maps as colours, and PNG galleries (images x methods), shared by the CLI and the report.

Colour convention (the same everywhere): a map with negative values is *signed* and drawn with
the diverging `DIVERGING` colour map centred at 0 (limits ``±max|m|``: blue negative, white 0, red
positive); a non-negative map is drawn with the sequential `SEQUENTIAL` map from 0 to its
maximum. Every map is scaled on its own and shown with its own colour bar; an all-zero map is the
colour of 0. Images are [C, H, W] in [0, 1] (C = 1 or 3); maps are [h, w] at any resolution
(resized to the image, bilinear, where needed).
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

DIVERGING = "RdBu_r"
SEQUENTIAL = "inferno"
OUTLINE = (0, 230, 64)  # mask and box outlines: green, visible on both colour maps


def image_rgb(image: Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] (or uint8) -> RGB uint8 [H, W, 3]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"image must have shape [C, H, W] with C = 1 or 3, got {tuple(image.shape)}")
    img = image.detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float().clamp(0, 1)
    return (img.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colour_limits(heatmap: Tensor, clip: float | None = None) -> tuple[float, float, str]:
    """(vmin, vmax, colour map name): ``(-a, a, DIVERGING)`` for a signed map (a = max |m|), else
    ``(0, max, SEQUENTIAL)``; an all-zero map gets limits of ±1 or [0, 1]. `clip` (a percentile, e.g.
    99.5) takes a as that percentile of |m| instead of its maximum, so that a few extreme pixels do not
    leave the rest of the map the colour of 0 (values beyond it take the end colours); a map whose
    percentile is 0 keeps its maximum."""
    m = heatmap.detach().float()
    finite = m[torch.isfinite(m)]
    if not finite.numel():
        return 0.0, 1.0, SEQUENTIAL
    magnitude = finite.abs()
    top = float(magnitude.max())
    if clip is not None:
        if not 0 < clip <= 100:
            raise InputError(f"clip must be a percentile in (0, 100], got {clip}")
        at = float(torch.quantile(magnitude.double().flatten(), clip / 100))
        top = at if at > 0 else top
    if float(finite.min()) < 0:
        return -top, top, DIVERGING
    return 0.0, (top if top > 0 else 1.0), SEQUENTIAL


def map_colours(heatmap: Tensor, size: tuple[int, int] | None = None,
                clip: float | None = None) -> tuple[np.ndarray, float, float, str]:
    """The map coloured by the convention above: (RGB uint8 [H, W, 3], vmin, vmax, colour map name).

    `size` = (H, W) resizes the map bilinearly first (limits are taken after resizing); `clip` as in
    `colour_limits`.
    """
    if heatmap.ndim != 2:
        raise InputError(f"heatmap must have shape [H, W], got {tuple(heatmap.shape)}")
    m = heatmap.detach().float().cpu()
    if size is not None and tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    vmin, vmax, cmap = colour_limits(m, clip)
    scaled = ((m - vmin) / (vmax - vmin)).clamp(0, 1).nan_to_num(0.5).numpy()
    rgb = plt.get_cmap(cmap)(scaled)[..., :3]
    return (rgb * 255).round().astype(np.uint8), vmin, vmax, cmap


def mask_outline(mask: Tensor) -> np.ndarray:
    """The border pixels of a bool mask [H, W] (inside the mask, next to a pixel outside or the edge)."""
    m = mask.detach().bool().cpu()
    padded = F.pad(m[None, None].float(), (1, 1, 1, 1), value=0.0)
    inner = -F.max_pool2d(-padded, 3, stride=1)[0, 0] > 0.5
    return (m & ~inner).numpy()


def save_gallery(images: Tensor, maps: Mapping[str, Tensor], path: str | Path, *,
                 titles: Sequence[str] | None = None, masks: Tensor | None = None,
                 cell: float = 1.6, clip: float | None = None) -> Path:
    """A PNG grid: one row per image; columns = the image, then each method's map with its colour bar.

    images: [N, C, H, W] in [0, 1]; maps: method -> [N, h, w]; titles: one per row (e.g. the id and
    the class names); masks: bool [N, H, W] drawn as outlines (contours) on every picture of the row;
    clip: see `colour_limits`. The format follows the suffix of `path` (.png, .svg, .pdf).
    """
    n = images.shape[0]
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise InputError(f"maps of {name!r} must have shape [{n}, H, W], got {tuple(m.shape)}")
    if titles is not None and len(titles) != n:
        raise InputError(f"titles has {len(titles)} entries, expected {n}")
    if masks is not None and tuple(masks.shape) != (n, *images.shape[-2:]):
        raise InputError(f"masks must have shape [{n}, {images.shape[-2]}, {images.shape[-1]}], got {tuple(masks.shape)}")
    cols = 1 + len(maps)
    size = tuple(images.shape[-2:])
    fig, axes = plt.subplots(n, cols, figsize=(cell * cols * 1.25, cell * n), squeeze=False)
    try:
        for i in range(n):
            axes[i, 0].imshow(image_rgb(images[i]))
            if titles is not None:
                axes[i, 0].set_ylabel(str(titles[i]), fontsize=7)
            for j, (name, m) in enumerate(maps.items(), start=1):
                rgb, vmin, vmax, cmap = map_colours(m[i], size, clip)
                axes[i, j].imshow(rgb)
                bar = plt.cm.ScalarMappable(norm=plt.Normalize(vmin, vmax), cmap=cmap)
                cb = fig.colorbar(bar, ax=axes[i, j], fraction=0.046, pad=0.03)
                cb.ax.tick_params(labelsize=5)
                if i == 0:
                    axes[i, j].set_title(name, fontsize=8)
            for ax in axes[i]:
                if masks is not None and bool(masks[i].any()) and not bool(masks[i].all()):
                    ax.contour(masks[i].float().cpu().numpy(), levels=[0.5], colors=[np.array(OUTLINE) / 255],
                               linewidths=0.9)
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_title("image", fontsize=8)
        width, height = fig.get_size_inches()  # margins in inches: row titles left, method names on top
        fig.subplots_adjust(left=0.55 / width, right=1 - 0.4 / width, bottom=0.05 / height, top=1 - 0.3 / height,
                            wspace=0.35, hspace=0.12)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def reliability_diagram(confidence: Tensor, hits: Tensor, *, n_bins: int = 15, adaptive: bool = False,
                        title: str = "") -> plt.Figure:
    """Reliability diagram of top-label confidences [N] and hits [N] (0/1): per bin, the accuracy
    (bars) against the mean confidence (red marks; the gap is the miscalibration), the diagonal of
    perfect calibration, and the ECE (AdaECE with ``adaptive=True``, equal-mass bins) in the title.
    Bins as `xaibench.training.calibration.reliability_bins`; empty bins are left blank."""
    from xaibench.training.calibration import confidence_adaptive_error, confidence_calibration_error, reliability_bins

    bins = reliability_bins(confidence, hits, n_bins=n_bins, adaptive=adaptive)
    error = (confidence_adaptive_error if adaptive else confidence_calibration_error)(confidence, hits, n_bins=n_bins)
    lower, upper = bins.lower.cpu().numpy(), bins.upper.cpu().numpy()
    acc, conf = bins.accuracy.cpu().numpy(), bins.confidence.cpu().numpy()
    filled = bins.count.cpu().numpy() > 0
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.bar(lower[filled], acc[filled], width=(upper - lower)[filled], align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy")
    ax.scatter((lower + upper)[filled] / 2, conf[filled], marker="_", s=200, color="#c44e52", label="confidence")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title + ': ' if title else ''}{'AdaECE' if adaptive else 'ECE'} {float(error):.3f}")
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig
