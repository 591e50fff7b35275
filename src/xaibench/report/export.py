"""Paper-ready copies of a report (`xaibench report DIR --export DEST`): every table as CSV and as a
LaTeX table (booktabs: ``\\toprule``, ``\\midrule``, ``\\bottomrule``; needs ``\\usepackage{booktabs}``),
every figure as SVG and PDF at print size (at most `PRINT_WIDTH` inches wide).

Intervals are kept: a LaTeX cell reads ``0.412 [0.380, 0.441]`` where the CSV has the estimate and its
bounds in three columns. An undefined value is ``--`` in LaTeX with its reason in a ``reason`` column,
never a literal NaN. Attribution maps use the report's colour scale (clipped at the
`MAP_CLIP` percentile of |map|, as the caption file says).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaibench.report import plots

PRINT_WIDTH = 6.75  # inches: the text width of a two-column paper (a one-column figure is 3.3)
LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.1e}"
    return latex_escape(str(value))


def with_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.412 [0.380, 0.441]``; the bare estimate when the interval is undefined; ``--`` when both are."""
    if isinstance(value, float) and math.isnan(value):
        return "--"
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return _cell(value, digits)
    return f"{_cell(value, digits)} [{_cell(low, digits)}, {_cell(high, digits)}]"


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table of `frame` (cells escaped; text columns left, numbers right aligned)."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool else "l"
                    for c in frame.columns)
    head = " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\"
    rows = [" & ".join(_cell(v) if not isinstance(v, str) else latex_escape(v) for v in row) + r" \\"
            for row in frame.itertuples(index=False)]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(caption)}}}",
                      f"\\label{{tab:{label}}}", f"\\begin{{tabular}}{{{align}}}", r"\toprule", head, r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def write_table(frame: pd.DataFrame, dest: Path, name: str, caption: str,
                latex: pd.DataFrame | None = None) -> list[Path]:
    """DEST/name.csv (the frame as it is) and DEST/name.tex (`latex`, default the frame)."""
    dest.mkdir(parents=True, exist_ok=True)
    csv, tex = dest / f"{name}.csv", dest / f"{name}.tex"
    frame.to_csv(csv, index=False)
    tex.write_text(latex_table(frame if latex is None else latex, caption, name))
    return [csv, tex]


def write_figure(fig: plt.Figure, dest: Path, name: str, caption: str = "") -> list[Path]:
    """DEST/name.svg and DEST/name.pdf, scaled down to `PRINT_WIDTH` inches when wider (text stays
    vector), and DEST/name.txt with the caption; the figure is closed."""
    dest.mkdir(parents=True, exist_ok=True)
    width, height = fig.get_size_inches()
    if width > PRINT_WIDTH:
        fig.set_size_inches(PRINT_WIDTH, height * PRINT_WIDTH / width)
    paths = [dest / f"{name}.svg", dest / f"{name}.pdf"]
    try:
        for path in paths:
            fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    if caption:
        paths.append(dest / f"{name}.txt")
        paths[-1].write_text(caption + "\n")
    return paths


# --- a benchmark run ----------------------------------------------------------------------------


def _run_tables(rel: Any, results: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame, str]]:
    """(name, CSV frame, LaTeX frame, caption) of every table of a run report."""
    level = f"{rel.level:.0%}"
    means = rel.means.copy()
    ranking = pd.DataFrame({"metric": means["metric"], "method": means["method"], "rank": means["rank"],
                            f"mean [{level} CI]": [with_interval(m, lo, hi) for m, lo, hi in
                                                   zip(means["mean"], means["low"], means["high"])],
                            "images": means["n"]})
    alpha = rel.alpha
    alpha_tex = pd.DataFrame({"metric": alpha["metric"],
                              f"alpha [{level} CI]": [with_interval(a, lo, hi) for a, lo, hi in
                                                      zip(alpha["alpha"], alpha["low"], alpha["high"])],
                              "interpretation": alpha["interpretation"], "images": alpha["n_images"],
                              "methods": alpha["n_methods"], "reason": alpha["reason"].fillna("")})
    pairs = rel.pairwise[rel.pairwise["significant"].astype(bool)]
    size = rel.benchmark_size.drop(columns=["first_place_probs"], errors="ignore")
    size_tex = size.assign(reason=size["reason"].fillna("")) if "reason" in size else size
    agreement = rel.agreement.reset_index(names="metric")
    nan = results[results["score"].isna()]
    undefined = (nan.groupby(["method", "metric", "nan_reason"], dropna=False).size().reset_index(name="images")
                 if not nan.empty else pd.DataFrame(columns=["method", "metric", "nan_reason", "images"]))
    return [
        ("ranking", means, ranking, f"Mean score per method and metric with its {level} bootstrap interval and rank "
                                    "(1 = best in the metric's direction)."),
        ("reliability", alpha, alpha_tex, f"Krippendorff's alpha of the per-image method rankings with its {level} "
                                          "BCa interval (>= 0.8 reliable, >= 0.667 tentative)."),
        ("significant_pairs", pairs, pairs[["metric", "method_a", "method_b", "diff", "p", "p_adj"]],
         "Method pairs that differ significantly (paired Wilcoxon, Holm-corrected within each metric)."),
        ("benchmark_size", size, size_tex, "Minimum benchmark size: images needed for the top method (ranked first "
                                           "on the most images) to stay first with probability 0.95."),
        ("agreement", agreement, agreement, "Kendall tau between the method rankings of each pair of metrics."),
        ("undefined_scores", undefined, undefined.rename(columns={"nan_reason": "reason"}),
         "Scores that are undefined, with the reason, per method and metric."),
    ]


def _gallery(run: Path, results: pd.DataFrame, dest: Path, k: int = 6) -> list[Path]:
    from xaibench.errors import XaibenchError
    from xaibench.plotting import save_gallery
    from xaibench.report.html import gallery_choice
    from xaibench.store import load_images, load_maps

    images = load_images(run)
    if not len(images["ids"]):
        return []
    chosen = gallery_choice(images, k)
    maps = {}
    for method in dict.fromkeys(results["method"]):
        try:
            maps[method] = load_maps(run, method)[chosen].float()
        except XaibenchError:  # maps not cached for this method
            continue
    titles = [str(images["ids"][i]) for i in chosen]
    paths = [save_gallery(images["images"][chosen], maps, dest / f"gallery.{ext}", titles=titles, clip=plots.MAP_CLIP)
             for ext in ("svg", "pdf")]
    caption = dest / "gallery.txt"
    caption.write_text(f"Every method's map on the same {len(chosen)} images; each map has its own colour bar, "
                        f"which ends at the {plots.MAP_CLIP:g}th percentile of |map| (larger values take the end "
                        "colour). Signed maps: diverging colour map centred at 0; non-negative maps: sequential.\n")
    return [*paths, caption]


def export_run(run: str | Path, dest: str | Path) -> list[Path]:
    """Every table and figure of the report of the benchmark run in `run`, into `dest`."""
    from xaibench.reliability import summarize
    from xaibench.report.curves import curve_panels
    from xaibench.report.summary import control_methods, effective_params
    from xaibench.store import load_curves, load_manifest, load_results

    run, dest = Path(run), Path(dest)
    manifest = load_manifest(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an unfinished run is exported as it stands
        results = load_results(run)
    rel = summarize(results)
    controls = control_methods(results)
    methods = list(dict.fromkeys(results["method"]))
    written: list[Path] = []
    for name, frame, latex, caption in _run_tables(rel, results):
        written += write_table(frame, dest, name, caption, latex)
    written += write_figure(plots.distributions_plot(results, controls), dest, "distributions",
                            "Per-image scores per method: box plots (median, quartiles, whiskers at 1.5 IQR); binary "
                            "scores as the rate of hits with its 95% Wilson interval. Controls in grey.")
    params = effective_params(results, manifest["config"])
    curves = plots.curves_plot(curve_panels(load_curves(run), results, params), methods, controls)
    if curves is not None:
        written += write_figure(curves, dest, "curves", "Mean curve over images per method; controls in grey with "
                                                        "their own dash pattern.")
    agreement = plots.agreement_plot(rel.agreement)
    if agreement is not None:
        written += write_figure(agreement, dest, "agreement", "Kendall tau between the method rankings of each pair "
                                                              "of metrics (1: same order, -1: reversed).")
    return written + _gallery(run, results, dest)


# --- an experiment --------------------------------------------------------------------------------


def export_experiment(out: str | Path, dest: str | Path) -> list[Path]:
    """Every table (CSV + LaTeX) and figure (SVG + PDF) of the report section of the experiment in `out`."""
    from xaibench.experiments import ExperimentDir, Plot, Table, recipes
    from xaibench.report.experiment import PROVENANCE, draw

    exp, dest = ExperimentDir(out), Path(dest)
    blocks = recipes().get(exp.manifest["recipe"]).report(exp)
    written: list[Path] = []
    for k, block in enumerate(blocks, start=1):
        if isinstance(block, Table):
            frame = block.frame.drop(columns=[c for c in PROVENANCE if c in block.frame.columns])
            written += write_table(frame, dest, f"table{k:02d}", block.caption or f"Table {k}.")
        elif isinstance(block, Plot):
            written += write_figure(draw(block), dest, f"figure{k:02d}", block.caption)
    return written


def export(src: str | Path, dest: str | Path) -> list[Path]:
    """`export_run` or `export_experiment`, whichever `src` is."""
    from xaibench.errors import InputError
    from xaibench.experiments.base import MANIFEST as EXPERIMENT
    from xaibench.runner.layout import MANIFEST

    src = Path(src)
    if (src / MANIFEST).exists():
        return export_run(src, dest)
    if (src / EXPERIMENT).exists():
        return export_experiment(src, dest)
    raise InputError(f"{src} holds no run ({MANIFEST}) and no experiment ({EXPERIMENT}); nothing to export")
