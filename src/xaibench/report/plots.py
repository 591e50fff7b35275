"""Figures of the report as base64 PNG data URIs: matplotlib (Agg) for plots, PIL for gallery tiles."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from xaibench.colours import PALETTE, text_colour  # noqa: E402
from xaibench.plotting import DIVERGING, OUTLINE, image_rgb, map_colours, mask_outline  # noqa: E402


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


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CONTROL_STYLES = (("0.2", "--", "x"), ("0.45", ":", "+"), ("0.6", "-.", "1"))
MAP_CLIP = 99.5  # attribution maps: the colour scale ends at this percentile of |map|


def _style(method: str, k: int, controls: set[str]) -> dict:
    """Line style of a method: controls in greys with their own dash pattern and marker, the others solid in
    the colour-blind-safe palette, each with its own marker (so that a line hidden by another stays visible)."""
    if method in controls:
        colour, dashes, marker = CONTROL_STYLES[sorted(controls).index(method) % len(CONTROL_STYLES)]
        return {"color": colour, "ls": dashes, "lw": 1.4, "marker": marker, "ms": 5, "markevery": 0.1}
    return {"color": PALETTE[k % len(PALETTE)], "ls": "-", "lw": 1.6, "marker": MARKERS[k % len(MARKERS)],
            "ms": 4, "markevery": 0.1, "alpha": 0.9}


def _figure_legend(fig: plt.Figure, methods: list[str], controls: set[str]) -> None:
    """One legend for the whole figure, above the panels (controls marked)."""
    handles = [plt.Line2D([], [], **_style(m, k, controls)) for k, m in enumerate(methods)]
    labels = [f"{m} (control)" if m in controls else m for m in methods]
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(methods), 5),
               fontsize=9, frameon=False)


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the curves figure: mean curve per method over images, on shared x values.

    x: numbers, or names (e.g. the randomised layers) shown as tick labels.
    """

    metric: str
    x: list
    xlabel: str
    ylabel: str
    means: dict[str, np.ndarray]


def curves_figure(panels: list[CurvePanel], methods: list[str], controls: set[str]) -> str | None:
    """`curves_plot` as a data URI."""
    fig = curves_plot(panels, methods, controls)
    return None if fig is None else to_data_uri(fig)


def curves_plot(panels: list[CurvePanel], methods: list[str], controls: set[str]) -> plt.Figure | None:
    """One panel per curve metric (three per row, large enough to print), one line per method, one
    legend for the figure."""
    if not panels:
        return None
    fig, axes = _grid(len(panels), width=4.6, height=3.4, cols=3)
    for ax, panel in zip(axes.flat, panels):
        named = bool(panel.x) and isinstance(panel.x[0], str)
        xs = np.arange(len(panel.x)) if named else np.asarray(panel.x, dtype=float)
        for k, method in enumerate(methods):
            # a curve undefined everywhere (e.g. MPRT of a model that predicts one class) has nothing to draw
            if method in panel.means and np.isfinite(np.asarray(panel.means[method], dtype=float)).any():
                ax.plot(xs, panel.means[method], **_style(method, k, controls))
        if named:
            ax.set_xticks(xs, panel.x, rotation=45, ha="right", fontsize=7)
        ax.set_title(panel.metric, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    fig.tight_layout()
    _figure_legend(fig, methods, controls)
    return fig


def is_binary(scores: pd.Series) -> bool:
    """Whether every defined score is 0 or 1 (pointing game, increase in confidence, ...)."""
    values = scores.dropna().to_numpy(dtype=float)
    return values.size > 0 and bool(np.isin(values, (0.0, 1.0)).all())


def rate_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(rate, low, high): the Wilson score interval of a binomial rate (scipy)."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan, math.nan
    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return hits / n, float(ci.low), float(ci.high)


def distributions_figure(results: pd.DataFrame, controls: set[str]) -> str:
    """`distributions_plot` as a data URI."""
    return to_data_uri(distributions_plot(results, controls))


def distributions_plot(results: pd.DataFrame, controls: set[str]) -> plt.Figure:
    """Per metric: box plots of per-image scores by method, or, for binary scores, the rate of 1s
    with its 95 % Wilson interval."""
    metrics = list(dict.fromkeys(results["metric"]))
    methods = list(dict.fromkeys(results["method"]))
    fig, axes = _grid(len(metrics))
    labels = [f"{m} (control)" if m in controls else m for m in methods]
    for ax, metric in zip(axes.flat, metrics):
        sub = results[results["metric"] == metric]
        arrow = "higher is better" if bool(sub["higher_is_better"].iloc[0]) else "lower is better"
        data = [sub.loc[sub["method"] == m, "score"].dropna().to_numpy(dtype=float) for m in methods]
        if is_binary(sub["score"]):
            rates = np.array([rate_interval(int(d.sum()), d.size) for d in data])
            pos = np.arange(1, len(methods) + 1)
            err = np.abs(rates[:, 1:].T - rates[:, 0])
            colours = ["0.55" if m in controls else PALETTE[0] for m in methods]
            ax.bar(pos, rates[:, 0], color=colours, width=0.6)
            ax.errorbar(pos, rates[:, 0], yerr=np.nan_to_num(err), fmt="none", ecolor="k", capsize=3, lw=1)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("rate (95% Wilson CI)", fontsize=7)
            ax.set_title(f"{metric}: rate ({arrow})", fontsize=9)
        else:
            data = [d if d.size else np.array([np.nan]) for d in data]
            ax.boxplot(data, showfliers=False)
            ax.set_title(f"{metric} ({arrow})", fontsize=9)
        ax.set_xticks(range(1, len(methods) + 1), labels, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def agreement_figure(agreement: pd.DataFrame) -> str | None:
    """`agreement_plot` as a data URI."""
    fig = agreement_plot(agreement)
    return None if fig is None else to_data_uri(fig)


def agreement_plot(agreement: pd.DataFrame) -> plt.Figure | None:
    """Heat map of the metric x metric Kendall tau between method rankings, values written in each
    cell in the colour that contrasts with it, with a colour bar."""
    if agreement.empty:
        return None
    values = agreement.to_numpy(dtype=float)
    n = values.shape[0]
    cmap = plt.get_cmap(DIVERGING)
    fig, ax = plt.subplots(figsize=(2.0 + 0.6 * n, 1.2 + 0.55 * n))
    im = ax.imshow(values, vmin=-1, vmax=1, cmap=cmap)
    labels = [str(c) for c in agreement.columns]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), [str(i) for i in agreement.index], fontsize=8)
    size = 8 if n <= 12 else 7
    for i in range(n):
        for j in range(n):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size,
                        color=text_colour(cmap((values[i, j] + 1) / 2)))
    fig.colorbar(im, ax=ax, fraction=0.046, label="Kendall tau")
    fig.tight_layout()
    return fig


def _resized(rgb: np.ndarray, masks: list[torch.Tensor], cell: int) -> np.ndarray:
    """`rgb` [H, W, 3] scaled (nearest) to `cell` pixels high, with 1-pixel outlines of the masks
    (scaled the same way) in the colours of `OUTLINES`."""
    h, w = rgb.shape[:2]
    size = (max(1, round(cell * w / h)), cell)
    smooth = Image.LANCZOS if h > cell else Image.NEAREST  # photos shrink smoothly, small images stay crisp
    out = np.asarray(Image.fromarray(rgb).resize(size, smooth)).copy()
    for mask, colour in zip(masks, OUTLINES):
        big = Image.fromarray(mask.detach().cpu().numpy().astype(np.uint8) * 255).resize(size, Image.NEAREST)
        out[mask_outline(torch.from_numpy(np.asarray(big) > 0))] = colour
    return out


def _encode(picture: Image.Image) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


BAR = 8  # colour bar height under a map tile, pixels
OUTLINES = (OUTLINE, (0, 200, 255), (255, 0, 220))  # colours of the first, second and third mask's outline


def image_tile(image: torch.Tensor, masks: list[torch.Tensor], cell: int = 96) -> str:
    """The image [C, H, W] (uint8, or floats in [0, 1]) scaled (nearest) to `cell` pixels high, masks outlined."""
    return _encode(Image.fromarray(_resized(image_rgb(image), masks, cell)))


def map_tile(heatmap: torch.Tensor, size: tuple[int, int], masks: list[torch.Tensor],
             cell: int = 96, clip: float | None = None) -> tuple[str, float, float]:
    """A map coloured by `xaibench.plotting.map_colours` (masks outlined; `clip` as there) with its
    colour bar strip underneath; returns (data URI, vmin, vmax) for the bar's labels."""
    rgb, vmin, vmax, cmap = map_colours(heatmap, size, clip)
    picture = _resized(rgb, masks, cell)
    width = picture.shape[1]
    bar = (plt.get_cmap(cmap)(np.linspace(0, 1, width))[None, :, :3] * 255).round().astype(np.uint8)
    sheet = Image.new("RGB", (width, cell + 3 + BAR), "white")
    sheet.paste(Image.fromarray(picture), (0, 0))
    sheet.paste(Image.fromarray(np.repeat(bar, BAR, axis=0)), (0, cell + 3))
    return _encode(sheet), vmin, vmax


# --- experiment figures (the recipes' `Plot` blocks) ---------------------------------------------


def alignment_bars(summary: pd.DataFrame, *, mask: str = "mask") -> plt.Figure:
    """Two panels, EA_IoU and EA_PG: one group of bars per (model, test set) row of `summary`, one bar
    per human explanation (column `mask`), in the colour-blind-safe palette, with a legend."""
    keys = [k for k in ("model", "test_set") if k in summary.columns]
    groups = list(dict.fromkeys(summary[keys].itertuples(index=False, name=None)))
    masks = list(dict.fromkeys(summary[mask]))
    width = 0.8 / max(len(masks), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(groups) * 2), 3.4), squeeze=False)
    for ax, (column, title) in zip(axes[0], (("iou", "EA_IoU"), ("pg", "EA_PG"))):
        for j, m in enumerate(masks):
            rows = summary[summary[mask] == m].set_index(keys)
            values = [float(rows.loc[g, column]) if g in rows.index else np.nan for g in groups]
            ax.bar(np.arange(len(groups)) + (j - (len(masks) - 1) / 2) * width, values, width,
                   color=PALETTE[j % len(PALETTE)], label=str(m))
        ax.set_xticks(range(len(groups)), ["\n".join(map(str, g)) for g in groups], fontsize=7, rotation=30,
                      ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.25)
    axes[0, 1].legend(title="human explanation", fontsize=8, title_fontsize=8, frameon=False,
                      loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def scatter(summary: pd.DataFrame, x: str, y: str, *, size: str | None = None, label: str = "model",
            xlabel: str = "", ylabel: str = "") -> plt.Figure:
    """A scatter of `y` against `x` per model, marker area ~ sqrt(`size`) when given."""
    fig, ax = plt.subplots(figsize=(5, 4))
    sizes = None
    if size is not None:
        root = summary[size].astype(float).pow(0.5)
        sizes = 30 + 300 * root / max(float(root.max()), 1e-12)
    ax.scatter(summary[x], summary[y], s=sizes, alpha=0.7)
    middle = float(summary[x].astype(float).median()) if len(summary) else 0.0
    for _, row in summary.iterrows():  # labels on the inner side of their point, the margins keep them inside
        left = len(summary) > 1 and float(row[x]) > middle
        ax.annotate(str(row[label]), (row[x], row[y]), fontsize=8, xytext=(-6 if left else 6, 4),
                    textcoords="offset points", ha="right" if left else "left")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    fig.tight_layout()
    return fig


def bars(table: pd.DataFrame, *, ylabel: str = "") -> plt.Figure:
    """Grouped bars: one group per row of `table`, one bar per column (pandas' bar plot)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def alpha_heatmap(diffs: pd.DataFrame, group: str, setting_order: list[str], metric_order: list[str]) -> plt.Figure:
    """Settings x metrics heat map of the alpha difference to Baseline (x100): * an effect (significant after
    correction and beyond the spread between seeds), ° significant but not beyond the seed spread (or
    the spread unknown with one model per setting)."""
    sub = diffs[diffs.group == group]
    rows = [s for s in setting_order if s in set(sub.setting)]
    cols = [m for m in metric_order if m in set(sub.metric)]
    value = sub.pivot(index="setting", columns="metric", values="difference").reindex(index=rows, columns=cols)
    mark = sub.assign(mark=np.where(sub["effect"] == "effect", "*", np.where(sub["significant"], "°", ""))).pivot(
        index="setting", columns="metric", values="mark").reindex(index=rows, columns=cols).fillna("")
    limit = max(1.0, float(np.nanmax(np.abs(value.to_numpy())))) if value.size else 1.0
    fig, ax = plt.subplots(figsize=(2.0 + 0.8 * len(cols), 0.8 + 0.45 * len(rows)))
    cmap = plt.get_cmap("RdBu")
    im = ax.imshow(value.to_numpy(dtype=float), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = value.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.0f}{mark.iat[i, j]}", ha="center", va="center", fontsize=8,
                        fontweight="bold" if mark.iat[i, j] == "*" else "normal",
                        color=text_colour(cmap((v + limit) / (2 * limit))))
    fig.colorbar(im, ax=ax, fraction=0.046, label="alpha - alpha(Baseline), x100")
    ax.set_xticks(range(len(cols)), [c.upper().replace("_NC", "-nc") for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [r.upper() for r in rows], fontsize=8)
    ax.set_title(f"{group}: alpha - alpha(Baseline), x100", fontsize=9)
    fig.tight_layout()
    return fig


def consistency_intervals(ranking: pd.DataFrame) -> plt.Figure:
    """One row per (observer, model) of `ranking`: its consistency with the 95 % interval (low, high)."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(ranking)))
    labels = [f"{r.observer}: {r.model}" for r in ranking.itertuples()]
    y = np.arange(len(ranking))
    ax.errorbar(ranking["consistency"], y, xerr=[ranking["consistency"] - ranking["low"],
                                                  ranking["high"] - ranking["consistency"]], fmt="o")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("consistency with observer (noise-corrected)")
    return fig


def emi_consistency(shown: pd.DataFrame) -> plt.Figure:
    """Consistency against the % of pixels visible in the EMI, one line per method; dashed at 1 (the
    noise ceiling) when a value exceeds it."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for method, rows in shown.groupby("method"):
        rows = rows.sort_values("percentile")
        ax.plot(100 - rows["percentile"], rows["consistency"], marker="o", label=method)
    ax.set_xlabel("% of pixels visible in the EMI")
    ax.set_ylabel("I1 consistency")
    if (shown["consistency"] > 1).any():
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    return fig


def image_rows(rows: dict[str, torch.Tensor]) -> plt.Figure:
    """A grid of images: one row per entry of `rows` (title -> images [k, 3, H, W] in [0, 1])."""
    k = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), k, figsize=(1.6 * k, 1.7 * len(rows)), squeeze=False)
    for r, (title, batch) in enumerate(rows.items()):
        for c in range(k):
            axes[r, c].imshow(batch[c].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)
    return fig


EXPERIMENT_PLOTS: dict[str, Callable[..., plt.Figure]] = {"alignment_bars": alignment_bars, "scatter": scatter,
                                                          "bars": bars, "alpha_heatmap": alpha_heatmap,
                                                          "consistency_intervals": consistency_intervals,
                                                          "emi_consistency": emi_consistency, "image_rows": image_rows}
"""The drawers of an experiment report's `xaibench.experiments.Plot` blocks, by kind."""
