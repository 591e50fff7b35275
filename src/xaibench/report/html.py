"""`build_report(DIR)` -> DIR/report.html: one self-contained page (inline CSS, base64 PNG plots,
no scripts, no external requests) that opens offline."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaibench.report import plots
from xaibench.store import load_curves, load_images, load_manifest, load_maps, load_results

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232a;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.2rem;margin:36px 0 8px;border-bottom:1px solid #d6dbe1;padding-bottom:4px}
h3{font-size:1rem;margin:20px 0 6px} p.note{color:#4a5561;font-size:.9rem;margin:4px 0 10px}
table{border-collapse:collapse;font-size:.82rem;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #d6dbe1;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f4} td:first-child,th:first-child{text-align:left}
.best{font-weight:700;background:#e3f4e6} .bad{color:#a3222b} .good{color:#1f7a35}
img.plot{max-width:100%;display:block;margin:6px 0 14px;background:#fff;border:1px solid #e3e7eb}
nav a{margin-right:12px;font-size:.85rem} pre{background:#fff;border:1px solid #d6dbe1;padding:8px;font-size:.75rem;overflow-x:auto}
.scroll{overflow-x:auto} details{margin:4px 0 12px} summary{cursor:pointer;font-size:.9rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "NaN"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
    return str(x)


def _table(df: pd.DataFrame, cls: dict[tuple[int, str], str] | None = None, table_id: str | None = None) -> str:
    """An HTML table of `df` (escaped); `cls` maps (row position, column) to a CSS class."""
    cls = cls or {}
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = "".join(
            f'<td class="{cls[(i, c)]}">{_e(_fmt(v))}</td>' if (i, c) in cls else f"<td>{_e(_fmt(v))}</td>"
            for c, v in zip(df.columns, row)
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _img(uri: str | None, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="{uri}">' if uri else f'<p class="note">No {_e(alt)}.</p>'


def ranking_table(means: pd.DataFrame, results: pd.DataFrame) -> str:
    """Methods x metrics: mean [CI low, high] and rank (1 = best); the best method per metric is bold."""
    metrics = list(dict.fromkeys(results["metric"]))
    methods = list(dict.fromkeys(results["method"]))
    direction = results.groupby("metric", sort=False)["higher_is_better"].first()
    cells: dict[tuple[str, str], str] = {}
    best: dict[tuple[int, str], str] = {}
    for r in means.itertuples(index=False):
        cells[(r.method, r.metric)] = f"{_fmt(r.mean)} [{_fmt(r.low)}, {_fmt(r.high)}] #{int(r.rank)}"
    rows = []
    for i, method in enumerate(methods):
        row = {"method": method}
        for metric in metrics:
            col = f"{metric} {'↑' if direction[metric] else '↓'}"
            row[col] = cells.get((method, metric), "NaN")
            hit = means[(means["method"] == method) & (means["metric"] == metric)]
            if not hit.empty and int(hit["rank"].iloc[0]) == 1:
                best[(i, col)] = "best"
        rows.append(row)
    return _table(pd.DataFrame(rows), best, table_id="ranking-table")


def _alpha_table(alpha: pd.DataFrame) -> str:
    df = alpha[["metric", "alpha", "low", "high", "interpretation", "n_images"]].copy()
    flags = {}
    for i, a in enumerate(df["alpha"]):
        if np.isfinite(a):
            flags[(i, "alpha")] = "good" if a >= 0.667 else "bad"
    return _table(df.rename(columns={"low": "alpha low", "high": "alpha high"}), flags, table_id="alpha-table")


def _category_summary(results: pd.DataFrame, category: str) -> pd.DataFrame:
    """Mean score per method for the metrics of one category (columns: metric, with mask if any)."""
    sub = results[results["category"] == category]
    if sub.empty:
        return sub
    key = sub["metric"].where(sub["mask"].isna(), sub["metric"] + " [" + sub["mask"].astype(str) + "]")
    table = sub.assign(column=key).pivot_table(index="method", columns="column", values="score", aggfunc="mean", sort=False)
    return table.reset_index()


def _gallery(out: Path, results: pd.DataFrame, images: dict[str, Any], k: int) -> tuple[str, str]:
    """Best and worst images per method on the gallery metric (first faithfulness metric, else the first)."""
    metrics = results.drop_duplicates("metric")
    faith = metrics[metrics["category"] == "faithfulness"]
    chosen = (faith if not faith.empty else metrics).iloc[0]
    metric, hib = chosen["metric"], bool(chosen["higher_is_better"])
    index = {image_id: i for i, image_id in enumerate(images["ids"])}
    parts = []
    for method in dict.fromkeys(results["method"]):
        sub = results[(results["method"] == method) & (results["metric"] == metric)].dropna(subset=["score"])
        sub = sub[sub["image_id"].isin(index)].sort_values("score", ascending=not hib, kind="stable")
        if sub.empty:
            continue
        maps = load_maps(out, method)
        for title, picked in (("best", sub.head(k)), ("worst", sub.tail(k).iloc[::-1])):
            pos = [index[i] for i in picked["image_id"]]
            uri = plots.gallery_figure(images["images"][pos], maps[pos])
            caption = ", ".join(f"{i} ({s:.3g})" for i, s in zip(picked["image_id"], picked["score"]))
            parts.append(
                f"<h3>{_e(method)}: {title} {k} by {_e(metric)}</h3>{_img(uri, f'{method} {title} gallery')}"
                f'<p class="note">Left to right, image id ({_e(metric)}): {_e(caption)}</p>'
            )
    return metric, "".join(parts)


def build_report(out: str | Path, *, gallery_size: int = 4) -> Path:
    """Write DIR/report.html for the run in `out` and return its path."""
    from xaibench.reliability import summarize

    out = Path(out)
    manifest = load_manifest(out)
    results = load_results(out)
    curves = load_curves(out)
    rel = summarize(results)
    cfg = manifest["config"]
    done = int(results["shard"].nunique())
    title = cfg.get("name") or out.name
    sections: list[tuple[str, str, str]] = []

    status = (
        f"{results['image_id'].nunique()} images, {results['method'].nunique()} methods, "
        f"{results['metric'].nunique()} metrics, {len(results)} scores; "
        f"{done} of {manifest['n_shards']} shards finished."
    )
    sections.append(
        (
            "ranking",
            "Ranking",
            '<p class="note">Mean score per method with its confidence interval and rank (#1 = best, '
            "respecting each metric's direction ↑/↓); the best method per metric is highlighted.</p>"
            + ranking_table(rel.means, results),
        )
    )
    sections.append(
        (
            "reliability",
            "Reliability of each metric (Krippendorff's alpha)",
            '<p class="note">Inter-rater reliability of the method ranking across images: images are the '
            "raters, methods the units. Alpha &ge; 0.8 is reliable, &ge; 0.667 tentative, lower is not "
            "enough to rank methods by this metric.</p>" + _alpha_table(rel.alpha),
        )
    )
    significant = rel.pairwise[rel.pairwise["significant"].astype(bool)]
    per_metric = (
        rel.pairwise.assign(significant=rel.pairwise["significant"].astype(bool))
        .groupby("metric", sort=False)["significant"]
        .agg(significant="sum", pairs="size")
        .reset_index()
    )
    sections.append(
        (
            "pairwise",
            "Significant differences between methods",
            f'<p class="note">{len(significant)} of {len(rel.pairwise)} method pairs differ significantly '
            "after multiple-comparison correction (p_adj), per metric:</p>"
            + (_table(per_metric) if len(per_metric) else "")
            + (
                f"<details><summary>All {len(significant)} significant pairs</summary>"
                + _table(significant[["metric", "method_a", "method_b", "diff", "p", "p_adj"]])
                + "</details>"
                if len(significant)
                else ""
            ),
        )
    )
    sections.append(
        (
            "agreement",
            "Agreement between metrics",
            '<p class="note">Kendall tau between the method rankings of each pair of metrics '
            "(1: same order, -1: reversed).</p>" + _img(plots.agreement_figure(rel.agreement), "agreement plot"),
        )
    )
    size = rel.benchmark_size.copy()
    if "first_place_probs" in size:
        size["first_place_probs"] = size["first_place_probs"].map(
            lambda d: ", ".join(f"{k}: {v:.2f}" for k, v in dict(d).items()) if isinstance(d, dict) else _fmt(d)
        )
    sections.append(
        (
            "size",
            "Minimum benchmark size",
            '<p class="note">Images needed for the top method to stay first with high probability, and the '
            "probability of each method ranking first under resampling of images.</p>" + _table(size),
        )
    )
    randomisation = set(results.loc[results["category"] == "randomisation", "metric"])
    curve_axes = {m: ("fraction of layers randomised", "similarity to the original map") for m in randomisation}
    sections.append(
        (
            "curves",
            "Curves",
            '<p class="note">Faithfulness metrics: mean model score over images after each perturbation '
            "step. Randomisation checks: mean similarity of the maps to the original ones after each "
            "randomised layer.</p>" + _img(plots.curves_figure(curves, curve_axes), "curves plot"),
        )
    )
    sections.append(("distributions", "Score distributions", _img(plots.distributions_figure(results), "distributions plot")))
    sanity = _category_summary(results, "randomisation")
    sections.append(
        (
            "sanity",
            "Sanity checks (randomisation)",
            '<p class="note">Similarity between maps before and after randomising the model or the labels: '
            "a method whose maps barely change does not depend on what the model learned.</p>"
            + (_table(sanity) if not sanity.empty else '<p class="note">No randomisation metric in this run.</p>'),
        )
    )
    alignment = _category_summary(results, "localisation")
    sections.append(
        (
            "alignment",
            "Human alignment (localisation)",
            '<p class="note">Mean localisation score of each method against the human mask named in brackets (higher: better aligned).</p>'
            + (_table(alignment) if not alignment.empty else '<p class="note">No localisation metric in this run.</p>'),
        )
    )
    images = load_images(out)
    gallery_metric, gallery = _gallery(out, results, images, gallery_size)
    sections.append(
        (
            "gallery",
            "Heatmap galleries",
            f'<p class="note">Best and worst images per method by {_e(gallery_metric)}: image (top) and map '
            "overlay (bottom).</p>" + gallery,
        )
    )
    nan = results[results["score"].isna()]
    nan_table = (
        nan.groupby(["method", "metric", "nan_reason"], dropna=False).size().reset_index(name="images")
        if not nan.empty
        else pd.DataFrame()
    )
    sections.append(
        (
            "nan",
            "Undefined scores",
            _table(nan_table) if not nan_table.empty else '<p class="note">Every score is defined.</p>',
        )
    )
    prov_cols = [
        "config_hash", "seed", "model_spec", "model_hash", "dataset_spec", "dataset_split",
        "xaibench_version", "torch_version", "captum_version", "python_version",
    ]
    prov = results[[c for c in prov_cols if c in results]].drop_duplicates()
    prov_long = pd.DataFrame({"field": prov.columns, "value": [", ".join(map(str, prov[c].unique())) for c in prov.columns]})
    sections.append(
        (
            "provenance",
            "Provenance",
            _table(prov_long, table_id="provenance-table")
            + f"<p class=\"note\">Started {_e(manifest.get('started', '?'))}; report written "
            f"{_e(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}. Config:</p>"
            f"<pre>{_e(json.dumps(cfg, indent=1, sort_keys=True))}</pre>",
        )
    )

    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>' for sid, name, content in sections)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>xaibench report: {_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>xaibench report: {_e(title)}</h1><p class=\"note\">{_e(status)} Config hash "
        f"<code>{_e(manifest['config_hash'][:16])}</code>.</p><nav>{nav}</nav>{body}</main></body></html>"
    )
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["build_report", "ranking_table"]
