"""Figures of the report, rendered with matplotlib (Agg) to base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_data_uri(fig: plt.Figure) -> str:
    """Encode a figure as a PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _png_uri(buf.getvalue())


def _grid(n: int, width: float = 3.4, height: float = 2.6, cols: int = 4) -> tuple[plt.Figure, np.ndarray]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def curves_figure(curves: pd.DataFrame, axis_labels: dict[str, tuple[str, str]] | None = None) -> str | None:
    """Mean curve (over images) per method, one panel per curve metric; x = fraction of steps.

    `axis_labels` maps a metric to its (x, y) axis labels; the default is a perturbation curve's.
    """
    if curves.empty:
        return None
    metrics = list(dict.fromkeys(curves["metric"]))
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes.flat, metrics):
        sub = curves[curves["metric"] == metric]
        for method, group in sub.groupby("method", sort=False):
            values = np.array([np.asarray(c, dtype=float) for c in group["curve"]])
            mean = np.nanmean(values, axis=0)
            ax.plot(np.linspace(0, 1, mean.shape[0]), mean, label=str(method), lw=1.4)
        ax.set_title(metric, fontsize=10)
        xlabel, ylabel = (axis_labels or {}).get(metric, ("fraction of perturbation steps", "model score"))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return to_data_uri(fig)


def distributions_figure(results: pd.DataFrame) -> str:
    """Box plots of per-image scores by method, one panel per metric."""
    metrics = list(dict.fromkeys(results["metric"]))
    methods = list(dict.fromkeys(results["method"]))
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes.flat, metrics):
        sub = results[results["metric"] == metric]
        data = [sub.loc[sub["method"] == m, "score"].dropna().to_numpy() for m in methods]
        data = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right", fontsize=7)
        arrow = "higher is better" if bool(sub["higher_is_better"].iloc[0]) else "lower is better"
        ax.set_title(f"{metric} ({arrow})", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return to_data_uri(fig)


def agreement_figure(agreement: pd.DataFrame) -> str | None:
    """Heatmap of the metric x metric Kendall tau between method rankings."""
    if agreement.empty:
        return None
    values = agreement.to_numpy(dtype=float)
    n = values.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(values, vmin=-1, vmax=1, cmap="coolwarm")
    labels = [str(c) for c in agreement.columns]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), [str(i) for i in agreement.index], fontsize=7)
    for i in range(n):
        for j in range(n):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Kendall tau")
    fig.tight_layout()
    return to_data_uri(fig)


def gallery_figure(images: torch.Tensor, maps: torch.Tensor, *, cell: int = 96, gap: int = 4) -> str:
    """Images (top row) and their maps overlaid (bottom row, `xaibench.plotting.overlay`) as one PNG.

    images: uint8 [n, C, H, W]; maps: [n, h, w]. Each picture is scaled (nearest) to `cell` pixels
    high; drawn with PIL, without matplotlib, so a report with many galleries stays fast.
    """
    from PIL import Image

    from xaibench.plotting import overlay

    n = images.shape[0]
    tiles = []
    for k in range(n):
        img = images[k].float() / 255.0
        rgb = (img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]).permute(1, 2, 0)
        tiles.append(((rgb.numpy() * 255).round().astype(np.uint8), overlay(img, maps[k])))
    h, w = tiles[0][0].shape[:2]
    width = max(1, round(cell * w / h))
    sheet = Image.new("RGB", (n * width + (n - 1) * gap, 2 * cell + gap), "white")
    for k, pair in enumerate(tiles):
        for row, tile in enumerate(pair):
            picture = Image.fromarray(tile).resize((width, cell), Image.NEAREST)
            sheet.paste(picture, (k * (width + gap), row * (cell + gap)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return _png_uri(buf.getvalue())
