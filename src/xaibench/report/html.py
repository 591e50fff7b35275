"""`build_report(DIR)` -> DIR/report.html: one self-contained page (inline CSS, base64 PNG plots,
no scripts, no external requests) that opens offline.

The page opens with a summary (what was run, the verdicts, the best method per reliable metric);
then the ranking (methods x metrics, first column fixed while scrolling), reliability, tests,
agreement, minimum benchmark size, curves, score distributions, sanity checks, human alignment, a
gallery of every method on the same images, undefined scores and provenance. Verdicts are computed
in `xaibench.report.summary`; a partial run is announced in a banner above everything.
"""

from __future__ import annotations

import html
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.files import write_text
from xaibench.report import plots
from xaibench.report.curves import curve_panels
from xaibench.reliability import CORRECTION_NAMES, MIN_IMAGES, alpha_verdicts
from xaibench.report.summary import (
    alignment_finding,
    best_per_metric,
    control_methods,
    effective_params,
    model_sanity,
    sanity_verdicts,
    twins,
)
from xaibench.store import load_curves, load_images, load_manifest, load_maps, load_results

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232a;background:#fafbfc}
main{max-width:1320px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.2rem;margin:36px 0 8px;border-bottom:1px solid #d6dbe1;padding-bottom:4px}
h3{font-size:1rem;margin:18px 0 6px} p.note{color:#4a5561;font-size:.9rem;margin:4px 0 10px}
table{border-collapse:separate;border-spacing:0;font-size:.82rem;margin:6px 0 12px;background:#fff}
th,td{border-right:1px solid #d6dbe1;border-bottom:1px solid #d6dbe1;padding:3px 7px;text-align:right;white-space:nowrap;vertical-align:top}
tr>:first-child{border-left:1px solid #d6dbe1} thead th{border-top:1px solid #d6dbe1}
th{background:#eef1f4} td:first-child,th:first-child,td.txt{text-align:left}
.sticky th:first-child,.sticky td:first-child{position:sticky;left:0;z-index:1;background:#fff;box-shadow:2px 0 3px rgba(0,0,0,.08)}
.sticky thead th:first-child{background:#eef1f4;z-index:2}
.wrap{white-space:normal;min-width:16em;max-width:48em;text-align:left}
th.metric{white-space:normal;min-width:6.5em;max-width:9em;text-align:center}
td small,th small{color:#5b6672;font-weight:400}
.best{font-weight:700;background:#e3f4e6!important} .ctrl-win{background:#fff1d6!important;outline:2px solid #e0a526;outline-offset:-2px}
.control td,.control th{color:#6b7580;font-style:italic} .tag{white-space:nowrap;font-size:.7rem;font-style:normal;background:#e6e9ed;border-radius:3px;padding:0 4px;margin-left:4px;color:#4a5561}
.bad{color:#a3222b} .good{color:#1f7a35} .warn{color:#8a5a00}
#ranking-table td{white-space:normal;min-width:4em;max-width:5em}
#ranking-table th.metric{min-width:4em;max-width:5em;overflow-wrap:anywhere} #ranking-table tbody th{white-space:normal;max-width:8em}
#alignment-table th{white-space:normal}
img.plot{max-width:100%;box-sizing:border-box;display:block;margin:6px 0 14px;background:#fff;border:1px solid #e3e7eb}
nav{position:sticky;top:0;background:#fafbfc;padding:6px 0;border-bottom:1px solid #e3e7eb;z-index:5;display:flex;flex-wrap:wrap;gap:2px 14px}
nav a{font-size:.85rem;white-space:nowrap} pre{background:#fff;border:1px solid #d6dbe1;padding:8px;font-size:.75rem;overflow-x:auto}
.scroll{overflow-x:auto;max-width:100%} details{margin:4px 0 12px} summary{cursor:pointer;font-size:.9rem}
.banner{background:#fdecea;border:2px solid #c0392b;color:#7b1d14;padding:12px 16px;margin:12px 0;border-radius:4px;font-size:1rem}
.banner b{font-size:1.1rem}
.summary{background:#fff;border:1px solid #d6dbe1;border-radius:4px;padding:10px 18px;margin:14px 0}
.summary h3{margin-top:12px} .summary ul{margin:4px 0 8px;padding-left:20px} .summary li{margin:3px 0}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0 8px;font-size:.9rem} dl.run dt{color:#4a5561}
dl.run dd{margin:0}
figure.tile{margin:0;display:inline-block} figure.tile img{display:block;image-rendering:pixelated}
.bar{display:flex;justify-content:space-between;font-size:.68rem;color:#4a5561;font-variant-numeric:tabular-nums}
.gallery td{text-align:center;padding:4px} .gallery th{white-space:normal;overflow-wrap:anywhere;max-width:128px} .gallery td:first-child{font-size:.75rem;line-height:1.3}
.wrong{color:#a3222b;font-weight:600}
@page{size:A4 landscape;margin:10mm}
@media print{nav{display:none} main{max-width:none;padding:0} body{background:#fff}
.scroll{overflow:visible} table{font-size:6.5pt;break-inside:auto} th,td{padding:1px 2px;white-space:normal}
td small{font-size:6pt}
th.metric{min-width:0} .wrap{min-width:0}
.sticky th:first-child,.sticky td:first-child{position:static;box-shadow:none}
.gallery figure.tile img{width:56px} .gallery th{max-width:64px} img.plot{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)):
        return "–"  # undefined: the table's reason column, or the undefined-scores section, says why
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
    return str(x)


def html_table(df: pd.DataFrame, cls: dict[tuple[int, str], str] | None = None, table_id: str | None = None, *,
           sticky: bool = False, raw: tuple[str, ...] = (), wrap: tuple[str, ...] = (),
           row_cls: dict[int, str] | None = None) -> str:
    """An HTML table of `df`; cells escaped except the `raw` columns (already HTML). `cls` maps
    (row position, column) to a CSS class, `row_cls` a row position to one; `sticky` fixes the first
    column while the table scrolls sideways; `wrap` columns wrap their text."""
    cls, row_cls = cls or {}, row_cls or {}
    head = "".join(f'<th class="wrap">{_e(c)}</th>' if c in wrap else f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for c, v in zip(df.columns, row):
            classes = " ".join(x for x in (cls.get((i, c)), "wrap" if c in wrap else None) if x)
            text = v if c in raw else _e(_fmt(v))
            if isinstance(v, str) and c not in raw:
                classes = f"{classes} txt".strip()
            cells.append(f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>")
        rc = f' class="{row_cls[i]}"' if i in row_cls else ""
        body.append(f"<tr{rc}>{''.join(cells)}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    table_cls = ' class="sticky"' if sticky else ""
    return (f'<div class="scroll"><table{ident}{table_cls}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _img(uri: str | None, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="{uri}">' if uri else f'<p class="note">No {_e(alt)}.</p>'


def _method_label(method: str, controls: set[str]) -> str:
    return f'{_e(method)}<span class="tag">control</span>' if method in controls else _e(method)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()) or "defaults"


def ranking_table(means: pd.DataFrame, results: pd.DataFrame, alpha: pd.DataFrame | None = None,
                  controls: set[str] | None = None, highlight: set[str] | None = None) -> str:
    """Methods x metrics: mean, rank (#1 = best) and CI per cell; the first column stays put when the
    table scrolls. The best non-control method is highlighted for the metrics in `highlight` (those
    whose best-method claim holds; default none); a control ranked above it is flagged. Column headers
    show the metric's direction and Krippendorff's alpha (green: the metric's reliability verdict lets
    it rank methods)."""
    controls, highlight = controls or set(), highlight or set()
    same = twins(results)
    metrics = list(dict.fromkeys(results["metric"]))
    methods = list(dict.fromkeys(results["method"]))
    direction = results.groupby("metric", sort=False)["higher_is_better"].first()
    alphas = alpha.set_index("metric")["alpha"] if alpha is not None else pd.Series(dtype=float)
    rankable = (alpha_verdicts(alpha).set_index("metric")["rankable"] if alpha is not None
                else pd.Series(dtype=bool))
    by_key = {(r.method, r.metric): r for r in means.itertuples(index=False)}
    best_rank = {}
    for metric in metrics:
        ranks = [by_key[(m, metric)].rank for m in methods if (m, metric) in by_key and m not in controls]
        best_rank[metric] = min(ranks) if ranks else None
    head = ['<th>method</th>']
    for metric in metrics:
        a = alphas.get(metric, np.nan)
        flag = "good" if bool(rankable.get(metric, False)) else "bad"
        head.append(f'<th class="metric">{_e(metric).replace("_", "_<wbr>")} {"↑" if direction[metric] else "↓"}<br>'
                    f'<small class="{flag}">α {_fmt(a, 2)}</small></th>')
    body = []
    for method in methods:
        row_cls = ' class="control"' if method in controls else ""
        twin = f' <small title="identical maps on this model">= {_e(same[method])}</small>' if method in same else ""
        cells = [f"<th>{_method_label(method, controls).replace('_', '_<wbr>')}{twin}</th>"]
        for metric in metrics:
            r = by_key.get((method, metric))
            if r is None:
                cells.append('<td title="not computed">–</td>')
                continue
            other = same.get(method) or next((a for a, b in same.items() if b == method), None)
            if other is not None and (other, metric) in by_key:  # one method here: one rank
                r = r._replace(rank=min(r.rank, by_key[(other, metric)].rank))
            mark = ""
            if method not in controls and r.rank == best_rank[metric] and metric in highlight:
                mark = ' class="best"'
            elif method in controls and best_rank[metric] is not None and r.rank < best_rank[metric]:
                mark = ' class="ctrl-win" title="a control scores better than every method"'
            cells.append(f"<td{mark}>{_fmt(r.mean)} <small>#{int(r.rank)}</small><br>"
                         f"<small>[{_fmt(r.low)}, {_fmt(r.high)}]</small></td>")
        body.append(f"<tr{row_cls}>{''.join(cells)}</tr>")
    return ('<div class="scroll"><table id="ranking-table" class="sticky"><thead><tr>' + "".join(head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def _alpha_table(alpha: pd.DataFrame, level: float) -> str:
    verdicts = alpha_verdicts(alpha, level)
    df = alpha[["metric", "alpha", "low", "high", "n_images"]].copy()
    df["verdict"] = verdicts["reason"].to_numpy()
    flags = {}
    for i, v in enumerate(verdicts["verdict"]):
        flags[(i, "alpha")] = "good" if v in ("reliable", "tentative") else "warn" if v == "inconclusive" else "bad"
    return html_table(df.rename(columns={"low": "alpha low", "high": "alpha high"}), flags, table_id="alpha-table",
                  sticky=True, wrap=("verdict",))


def _category_summary(results: pd.DataFrame, category: str) -> pd.DataFrame:
    """Mean score per method for the metrics of one category (columns: metric, with mask if any)."""
    sub = results[results["category"] == category]
    if sub.empty:
        return sub
    key = sub["metric"].where(sub["mask"].isna(), sub["metric"] + " [" + sub["mask"].astype(str) + "]")
    table = sub.assign(column=key).pivot_table(index="method", columns="column", values="score", aggfunc="mean", sort=False)
    table.columns.name = None
    return table.reset_index()


def _partial_banner(manifest: dict[str, Any], results: pd.DataFrame, out: Path) -> str:
    """A banner naming the missing shards and images of an unfinished run ('' when finished)."""
    n_shards = int(manifest["n_shards"])
    done = sorted(int(s) for s in results["shard"].unique())
    if len(done) >= n_shards:
        return ""
    size = int(manifest["config"].get("shard_size", 0) or 0)
    positions = list(manifest.get("positions", []))
    missing = [k for k in range(n_shards) if k not in done]
    spans = []
    for k in missing:
        chunk = positions[k * size:(k + 1) * size] if size else []
        shown = ", ".join(map(str, chunk[:8])) + (", …" if len(chunk) > 8 else "")
        spans.append(f"shard {k} ({len(chunk)} images at data set positions {shown})" if chunk else f"shard {k}")
    n_done = results["image_id"].nunique()
    return (f'<div class="banner" id="partial"><b>Partial run: {len(done)} of {n_shards} shards finished</b> '
            f"({n_done} of {manifest.get('n_images', len(positions))} images). Every number, plot and verdict below "
            f"covers the finished shards only. Missing: {_e('; '.join(spans))}. Finish it with "
            f"<code>xaibench run CONFIG --out {_e(out)} --resume</code> and write the report again.</div>")


def _chance_banner(check: Any, origin: str) -> str:
    """The banner of a model whose explanations cannot be judged: at or near chance, or random weights."""
    head = "Model at or near chance" if check.near_chance else "Model with random weights"
    return (f'<div class="banner" id="chance"><b>{head}: sanity checks and rankings are not meaningful.</b> '
            f"The model's {_e(check.text)}; weights: {_e(origin)}. An explanation of a model that has learned "
            "nothing has nothing to be faithful to; the verdicts below are labelled <i>not meaningful</i>.</div>")


def _best_rows(best: pd.DataFrame, first: pd.DataFrame, same: dict[str, str], meaningful: bool
               ) -> tuple[pd.DataFrame, dict[tuple[int, str], str]]:
    """The summary's best-method table: every metric whose verdict lets it rank, the best method with
    its interval and the runner-up's; the claim is stated only where it holds, else the note says why."""
    rows, flags = [], {}
    for i, r in enumerate(best[best["reliable"]].itertuples()):
        note = []
        if not meaningful:
            note.append("not meaningful: the model is at or near chance, or untrained (see the banner)")
            flags[(i, "claim")] = "bad"
        if r.beaten_by and first.at[r.metric, "category"] == "randomisation":
            note.append(f"control {', '.join(r.beaten_by)} scores better, as expected: maps that ignore the model "
                        "change completely, the floor of this check")
        elif r.beaten_by:
            note.append(f"control {', '.join(r.beaten_by)} scores better: this metric does not separate the "
                        "methods from a model-independent baseline here")
            flags[(i, "note")] = "warn"
        if not r.clear:
            note.append("not significantly better than every other (non-control) method (paired Wilcoxon tests, "
                        "Holm-corrected; see the significant differences below)")
        best_name = r.best or "none"
        twin = same.get(r.best) or next((a for a, b in same.items() if b == r.best), None)
        if twin:
            best_name = f"{best_name} = {twin}"
        holds = meaningful and r.clear and r.best is not None
        rows.append({"metric": r.metric, "claim": "best" if holds else "not meaningful" if not meaningful else "no clear best",
                     "best method": best_name, "mean [CI]": f"{_fmt(r.mean)} [{_fmt(r.low)}, {_fmt(r.high)}]",
                     "runner-up [CI]": (f"{r.runner_up} {_fmt(r.runner_mean)} [{_fmt(r.runner_low)}, {_fmt(r.runner_high)}]"
                                        if r.runner_up else "none"),
                     "reliability": r.verdict, "note": "; ".join(note)})
        if holds:
            flags[(i, "best method")] = "best"
    return pd.DataFrame(rows), flags


def _summary(manifest: dict[str, Any], results: pd.DataFrame, params: dict[str, dict[str, Any]],
             controls: set[str], best: pd.DataFrame, sanity: pd.DataFrame, finding: list[str],
             sanity_model: tuple[Any, str, bool], correction: str) -> str:
    check, origin, meaningful = sanity_model
    cfg = manifest["config"]
    methods = list(dict.fromkeys(results["method"]))
    method_cfg = cfg.get("methods", {})
    method_items = []
    for m in methods:
        p = {k: v for k, v in method_cfg.get(m, {}).items() if k != "method"}
        name = method_cfg.get(m, {}).get("method", m)
        alias = f" ({_e(name)})" if name != m else ""
        method_items.append(f"{_method_label(m, controls)}{alias}" + (f" <small>{_e(_params_text(p))}</small>" if p else ""))
    n_images = results["image_id"].nunique()
    planned = int(manifest.get("n_images", n_images))
    target = cfg.get("target", "predicted")
    data = cfg.get("data", {})
    run = (
        '<dl class="run">'
        f"<dt>model</dt><dd><code>{_e(cfg.get('model', {}).get('spec', '?'))}</code>; weights: {_e(origin)}</dd>"
        f"<dt>accuracy</dt><dd class=\"{'bad' if not meaningful else ''}\">{_e(check.text)}</dd>"
        f"<dt>data</dt><dd><code>{_e(data.get('spec', '?'))}</code>, split {_e(data.get('split', 'test'))}"
        + (f", image size {_e(data['image_size'])}" if data.get("image_size") else "")
        + f"; <b>n = {n_images}</b> images" + (f" of {planned} planned (partial run)" if planned > n_images else "")
        + f" (seed {_e(cfg.get('seed', 0))})</dd>"
        f"<dt>explained class</dt><dd>{'the model’s prediction' if target == 'predicted' else 'the true label'}</dd>"
        f"<dt>methods ({len(methods)})</dt><dd>{', '.join(method_items)}</dd>"
        f"<dt>metrics ({len(params)})</dt><dd>{', '.join(map(_e, params))} "
        '<small>(parameters as run: <a href="#metrics-table">below</a>)</small></dd></dl>'
    )
    first = results.drop_duplicates("metric").set_index("metric")
    # seconds: each row's per-image share of its (shard, method, metric) call
    timing = results.groupby("metric", sort=False)["seconds"].sum() if "seconds" in results else None
    metric_rows = []
    for metric, p in params.items():
        name = first.at[metric, "metric_name"] if "metric_name" in first else metric
        mask = first.at[metric, "mask"]
        row = {"metric": _e(metric) + (f"<br><small>{_e(name)}</small>" if name != metric else ""),
               "category": first.at[metric, "category"],
               "direction": "higher is better" if bool(first.at[metric, "higher_is_better"]) else "lower is better",
               "mask": mask if isinstance(mask, str) else ""}
        if timing is not None:
            row["wall time (s)"] = float(timing.get(metric, np.nan))
        row["parameters as run"] = _params_text(p)
        metric_rows.append(row)
    metric_table = html_table(pd.DataFrame(metric_rows), table_id="metrics-table", sticky=True, raw=("metric",),
                          wrap=("parameters as run",))
    if timing is not None:
        metric_table += ('<p class="note">Wall time: the metric\'s calls on every shard and method (explanations '
                         "it makes included, the methods' maps not).</p>")

    reliable = best[best["reliable"]]
    tag = "" if meaningful else ' <span class="bad">(not meaningful: model at or near chance)</span>'
    verdicts = []
    if len(reliable):
        verdicts.append("<li><b>Reliable enough to rank by</b> (the lower bound of α's interval clears Krippendorff's "
                        f"0.667, with at least {MIN_IMAGES} images){tag}: "
                        + ", ".join(f"{_e(r.metric)} ({_e(r.verdict)})" for r in reliable.itertuples()) + ".</li>")
    else:
        verdicts.append('<li class="bad"><b>No metric is reliable enough to rank methods by</b> (no lower bound of '
                        f"α's interval clears 0.667 with at least {MIN_IMAGES} images); the rankings below can change "
                        "with other images.</li>")
    others = best[~best["reliable"]]
    if len(others):
        verdicts.append("<li><b>Not reliable here</b>: <ul>" + "".join(
            f"<li>{_e(r.metric)}: {_e(r.verdict)}</li>" for r in others.itertuples()) + "</ul></li>")
    if not sanity.empty:
        groups = {w: [m for m, v in zip(sanity["method"], sanity["verdict"]) if v == w and m not in controls]
                  for w in ("passes", "fails", "unclear")}
        parts = [f'<span class="{c}">{w}: {", ".join(map(_e, groups[w]))}</span>'
                 for w, c in (("passes", "good"), ("fails", "bad"), ("unclear", "warn")) if groups[w]]
        verdicts.append('<li><b>Sanity checks</b> (maps must change when the model or labels are randomised; '
                        f'<a href="#sanity">details</a>){tag}: ' + "; ".join(parts) + ".</li>")
    same = twins(results)
    if same:
        verdicts.append('<li class="warn"><b>Identical methods</b>: ' + "; ".join(
            f"{_e(a)} gives the same maps as {_e(b)} on this model (it has no nn.ReLU modules for its rule to change)"
            for a, b in same.items()) + ". They are one method here, ranked together.</li>")
    if finding:
        verdicts.append('<li><b>Human alignment</b> (<a href="#alignment">details</a>): ' + _e(finding[0]) + "<br><small>"
                        + "; ".join(map(_e, finding[1:])) + "</small></li>")
    table, flags = _best_rows(best, first, same, meaningful)
    best_html = (html_table(table, flags, table_id="best-table", wrap=("note", "reliability")) if len(table) else
                 '<p class="note">No metric is reliable enough to rank by, so no best method is named.</p>')
    return (
        '<div class="summary" id="summary-box"><h3>What was run</h3>' + run
        + "<h3>Verdicts</h3><ul>" + "".join(verdicts) + "</ul>"
        + "<h3>Best method per reliable metric</h3>"
        + '<p class="note">A method is named <i>best</i> only when the metric is reliable enough to rank by, the '
        "model is above chance and the method is significantly better than every other non-control method "
        f"(paired Wilcoxon tests over images, {_e(CORRECTION_NAMES[correction])}-corrected within the metric); "
        "otherwise the row says why. Controls (model-independent baselines: "
        + (", ".join(map(_e, sorted(controls))) or "none in this run")
        + ") are never named best; a control that scores better than every method is flagged.</p>"
        + best_html + "<h3>Metrics as run</h3>" + metric_table + "</div>"
    )


def _size_table(rel: Any) -> str:
    size = rel.benchmark_size
    mean_top = rel.means[rel.means["rank"] == 1].groupby("metric", sort=False)["method"].agg(", ".join)
    rows, flags = [], {}
    for i, r in enumerate(size.itertuples(index=False)):
        probs = dict(r.first_place_probs) if isinstance(r.first_place_probs, dict) else {}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1]) if v > 0)
        by_mean = mean_top.get(r.metric, "")
        differs = r.top_method is not None and r.top_method not in by_mean.split(", ")
        if differs:
            flags[(i, "mean-score #1")] = "warn"
        rows.append({"metric": r.metric, "top method (most first places)": r.top_method or "undefined",
                     "mean-score #1": by_mean, "min n": r.min_n, "of n": r.max_n,
                     "reducible": bool(r.reducible), "first-place rates": shown or (r.reason or "")})
    return html_table(pd.DataFrame(rows), flags, table_id="size-table", sticky=True, wrap=("first-place rates",))


def gallery_choice(images: dict[str, Any], k: int) -> list[int]:
    """Up to `k` image positions (into the stored images), one per true class in turn, in run order."""
    labels = [int(v) for v in images["labels"].tolist()]
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    chosen: list[int] = []
    queues = [list(v) for v in by_class.values()]
    while len(chosen) < min(k, len(labels)):
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop(0))
    return chosen


def _gallery_masks(cfg: dict[str, Any], positions: list[int], ids: list[str],
                   names: list[str]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """The human masks `names` of the gallery images, read again from the data set (the run stores
    none), and its class names; ({}, [], reason) when the data set cannot be read or has changed
    (an image at a position has another id than in the run)."""
    from xaibench.data import load_dataset
    from xaibench.errors import XaibenchError

    data = cfg.get("data", {})
    try:
        ds = load_dataset(data["spec"], split=data.get("split", "test"), image_size=data.get("image_size"),
                          on_error=data.get("on_error", "raise"))
        samples = [ds[p] for p in positions]
    except (XaibenchError, OSError, KeyError, IndexError) as err:
        return {}, [], f"Masks not shown: the data set could not be read ({err})."
    if [str(s.id) for s in samples] != [str(i) for i in ids]:
        return {}, [], "Masks not shown: the data set has changed since the run (other images at its positions)."
    masks = {n: torch.stack([s.masks[n] for s in samples]) for n in names if all(n in s.masks for s in samples)}
    return masks, list(getattr(ds, "classes", [])), ""


def _gallery(out: Path, cfg: dict[str, Any], results: pd.DataFrame, images: dict[str, Any], k: int,
             controls: set[str]) -> str:
    """Images x methods on the same images: the image with its class names and mask outline, then
    every method's map with its own colour bar."""
    if not len(images["ids"]):
        return '<p class="note">No stored images.</p>'
    chosen = gallery_choice(images, k)
    ids = [images["ids"][i] for i in chosen]
    mask_names = [m for m in dict.fromkeys(results["mask"].dropna())]
    masks, classes, problem = _gallery_masks(cfg, [images["positions"][i] for i in chosen], ids, mask_names[:3])
    per_image = results.drop_duplicates("image_id").set_index("image_id")

    def name(row: pd.Series, column: str, index_column: str) -> str:
        if column in row and isinstance(row[column], str):
            return row[column]
        index = int(row[index_column])
        return classes[index] if 0 <= index < len(classes) else str(index)

    from xaibench.errors import XaibenchError

    methods = list(dict.fromkeys(results["method"]))
    maps = {}
    for method in methods:
        try:
            maps[method] = load_maps(out, method)
        except XaibenchError:  # a method whose maps were not cached is shown as missing
            maps[method] = None
    size = tuple(images["images"].shape[-2:])
    cell = 96 if max(size) <= 64 else 128  # small images scaled up crisply; photos a little larger
    head = "<th>image</th>" + "".join(f"<th>{_method_label(m, controls).replace('_', '_<wbr>')}</th>" for m in methods)
    body = []
    for row_i, (i, image_id) in enumerate(zip(chosen, ids)):
        mask = [m[row_i] for m in masks.values()]
        info = per_image.loc[image_id]
        true, pred = name(info, "label_name", "label"), name(info, "prediction_name", "prediction")
        wrong = int(info["label"]) != int(info["prediction"])
        explained = ("" if int(info["target"]) == int(info["prediction"])
                     else f"<br>explained: {_e(name(info, 'target_name', 'target'))}")
        cells = [f'<td><figure class="tile"><img alt="image {_e(image_id)}" src="{plots.image_tile(images["images"][i], mask, cell)}">'
                 f"</figure><br>{_e(image_id)}<br>true: {_e(true)}<br>"
                 f'<span class="{"wrong" if wrong else ""}">predicted: {_e(pred)}</span>{explained}</td>']
        for method in methods:
            if maps[method] is None or i >= maps[method].shape[0]:
                cells.append("<td>no map</td>")
                continue
            uri, vmin, vmax = plots.map_tile(maps[method][i], size, mask, cell, clip=plots.MAP_CLIP)
            mid = "0" if vmin < 0 else _fmt((vmin + vmax) / 2, 2)
            cells.append(f'<td><figure class="tile"><img alt="{_e(method)} map of {_e(image_id)} with colour bar" '
                         f'src="{uri}"><div class="bar"><span>{_fmt(vmin, 2)}</span><span>{mid}</span>'
                         f"<span>{_fmt(vmax, 2)}</span></div></figure></td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    colours = ("green", "cyan", "magenta")
    legend = ("Outlines: " + ", ".join(f"mask '{_e(n)}' {c}" for n, c in zip(masks, colours)) + "." if masks else "")
    return (
        f'<p class="note">The same {len(chosen)} images (one per true class in turn) for every method. Each map is '
        "scaled on its own, with its own colour bar: signed maps use a diverging colour map centred at 0 (blue "
        "negative, white 0, red positive), non-negative maps a sequential one (black 0 to yellow max). "
        f"The scale ends at the {plots.MAP_CLIP:g}th percentile of |map| (not its maximum), so that a few extreme "
        "pixels do not blank out the rest; larger values take the end colour. "
        f"{legend} {_e(problem)}</p>"
        f'<div class="scroll"><table id="gallery-table" class="sticky gallery"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _criteria_section(results: pd.DataFrame) -> str:
    """Per criterion, the median rank of each method over that criterion's metrics with its bootstrap
    interval, and the metric pairs whose method rankings disagree (`reliability.aggregate_criteria`)."""
    from xaibench.reliability import aggregate_criteria

    agg = aggregate_criteria(results)
    note = ('<p class="note">One metric\'s ranking is not enough (metrics of one criterion often disagree): per '
            "criterion, each method's median over the criterion's metrics of its rank by mean score (1 = best) "
            f"and its {agg.level:.0%} bootstrap interval over images. Randomisation metrics are sanity checks, "
            "not aggregated.</p>")
    if agg.rankings.empty:
        return note + '<p class="note">No criterion has 2 methods and 2 images scored by all its metrics.</p>'
    cell = agg.rankings.assign(value=[f"{m:.1f} [{lo:.1f}, {hi:.1f}]" for m, lo, hi
                                      in agg.rankings[["median_rank", "low", "high"]].itertuples(index=False)])
    table = cell.pivot(index="method", columns="criterion", values="value")
    table = table.reindex(index=list(dict.fromkeys(agg.rankings["method"])),
                          columns=list(dict.fromkeys(agg.rankings["criterion"]))).fillna("")
    counts = agg.rankings.groupby("criterion", sort=False)[["n_metrics", "n_images"]].first()
    sizes = "; ".join(f"{c}: {r.n_metrics} metric{'' if r.n_metrics == 1 else 's'}, {r.n_images} images" for c, r in counts.iterrows())
    disagree = (html_table(agg.disagreements) if not agg.disagreements.empty
                else '<p class="note">No pair of metrics orders the methods more often reversed than alike.</p>')
    return (note + html_table(table.reset_index(), sticky=True, table_id="criteria-table")
            + f'<p class="note">{_e(sizes)}.</p><h3>Metrics that disagree (Kendall tau &lt; 0)</h3>' + disagree
            + "<details><summary>Each metric against its criterion's median ranking (Kendall tau)</summary>"
            + html_table(agg.consensus) + "</details>")


def build_report(out: str | Path, *, gallery_size: int = 6) -> Path:
    """Write DIR/report.html for the run in `out` and return its path (`gallery_size` images, at most 12)."""
    from xaibench.reliability import summarize

    out = Path(out)
    manifest = load_manifest(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an unfinished run: the banner says so
        results = load_results(out)
    curves = load_curves(out)
    rel = summarize(results)
    cfg = manifest["config"]
    title = cfg.get("name") or out.name
    controls = control_methods(results)
    params = effective_params(results, cfg)
    best = best_per_metric(rel, controls)
    sanity = sanity_verdicts(rel, results, params)
    alignment, finding = alignment_finding(results, controls)
    sanity_model = model_sanity(results, manifest, rel.level)
    meaningful = sanity_model[2]
    highlight = set(best.loc[best["reliable"] & best["clear"], "metric"]) if meaningful else set()
    not_meaningful = ('<p class="banner">Not meaningful: the model is at or near chance, or untrained (see the banner at '
                      "the top), so these results say nothing about the methods.</p>" if not meaningful else "")
    sections: list[tuple[str, str, str]] = []

    sections.append(("summary", "Summary", _summary(manifest, results, params, controls, best, sanity, finding,
                                                    sanity_model, "holm")))
    control_note = (
        " Rows marked <i>control</i> are model-independent baselines: they are never highlighted as best; an "
        "orange cell is a control that scores better than every method, so the metric does not separate "
        "explanations from a baseline there." if controls else "")
    sections.append(("ranking", "Ranking",
                     '<p class="note">Mean score per method, its rank (#1 = best, respecting each metric\'s direction '
                     "↑/↓) and confidence interval; under each metric its Krippendorff's α (green: reliable enough to "
                     "rank by). The best method is highlighted only where the claim holds (reliable metric, model "
                     f"above chance, significantly better than every other method).{control_note} Binary metrics "
                     "(pointing game, increase in confidence) are rates.</p>" + not_meaningful
                     + ranking_table(rel.means, results, rel.alpha, controls, highlight)))
    sections.append(("reliability", "Reliability of each metric (Krippendorff's alpha)",
                     '<p class="note">Inter-rater reliability of the method ranking across images: images are the '
                     "raters, methods the units. The verdict reads the interval, not the point estimate: "
                     "<i>reliable</i> when its lower bound is &ge; 0.8, <i>tentative</i> when it is &ge; 0.667 "
                     "(Krippendorff's thresholds), <i>unreliable</i> when its upper bound is below 0.667, and "
                     f"<i>inconclusive</i> otherwise or with fewer than {MIN_IMAGES} images ({rel.level:.0%} BCa "
                     "bootstrap intervals over images).</p>" + _alpha_table(rel.alpha, rel.level)))
    significant = rel.pairwise[rel.pairwise["significant"].astype(bool)]
    per_metric = (rel.pairwise.assign(significant=rel.pairwise["significant"].astype(bool))
                  .groupby("metric", sort=False)["significant"].agg(significant="sum", pairs="size").reset_index())
    sections.append(("pairwise", "Significant differences between methods",
                     f'<p class="note">{len(significant)} of {len(rel.pairwise)} method pairs differ significantly '
                     "after multiple-comparison correction (p_adj), per metric:</p>"
                     + (html_table(per_metric) if len(per_metric) else "")
                     + (f"<details><summary>All {len(significant)} significant pairs</summary>"
                        + html_table(significant[["metric", "method_a", "method_b", "diff", "p", "p_adj"]]) + "</details>"
                        if len(significant) else "")))
    sections.append(("agreement", "Agreement between metrics",
                     '<p class="note">Kendall tau between the method rankings of each pair of metrics '
                     "(1: same order, -1: reversed).</p>" + _img(plots.agreement_figure(rel.agreement), "agreement plot")))
    sections.append(("criteria", "Ranking per criterion (all its metrics)", _criteria_section(results)))
    sections.append(("size", "Minimum benchmark size",
                     '<p class="note">The <i>top method</i> here is the method ranked first on the most images '
                     "(its first-place rate), not the one with the best mean score: a method that wins often by a "
                     "little and loses badly elsewhere can lead here and not in the ranking (such rows are marked "
                     "in the mean-score column). <i>min n</i>: images needed for the top method to stay first with "
                     "probability 0.95.</p>" + _size_table(rel)))
    methods = list(dict.fromkeys(results["method"]))
    sections.append(("curves", "Curves",
                     '<p class="note">Mean over images of each method\'s curve. Deletion and insertion scores '
                     "normalised by the unperturbed image's class score (autotimm's convention) are plotted "
                     "normalised the same way; controls are dashed.</p>"
                     + _img(plots.curves_figure(curve_panels(curves, results, params), methods, controls), "curves plot")))
    sections.append(("distributions", "Score distributions",
                     '<p class="note">Per-image scores: box plots (median, quartiles, whiskers at 1.5 IQR); '
                     "binary scores as the rate of hits with its 95% Wilson interval.</p>"
                     + _img(plots.distributions_figure(results, controls), "distributions plot")))
    sections.append(("sanity", "Sanity checks (randomisation)",
                     '<p class="note">Similarity between maps before and after randomising the model or the labels '
                     "(mean in brackets): a method passes where the upper confidence bound is below the metric's "
                     "threshold (0.5 unless set), fails where the lower bound is above it. A method whose maps "
                     "barely change does not depend on what the model learned; the controls show the two extremes "
                     "(random maps always change, edge maps never do).</p>" + not_meaningful
                     + (html_table(sanity, table_id="sanity-table", sticky=True) if not sanity.empty
                        else '<p class="note">No randomisation metric in this run.</p>')))
    per_method = _category_summary(results, "localisation")
    sections.append(("alignment", "Human alignment (localisation)",
                     '<p class="note">Mean localisation score of each method against the human mask named in '
                     "brackets (higher: better aligned). Compare masks only with metrics that account for the "
                     "mask's size.</p>"
                     + ("".join(f'<p class="note">{_e(s)}</p>' for s in finding))
                     + (html_table(alignment, table_id="alignment-finding") if not alignment.empty else "")
                     + (html_table(per_method, sticky=True, table_id="alignment-table") if not per_method.empty
                        else '<p class="note">No localisation metric in this run.</p>')))
    sections.append(("gallery", "Gallery: every method on the same images",
                     _gallery(out, cfg, results, load_images(out), min(gallery_size, 12), controls)))
    nan = results[results["score"].isna()]
    nan_table = (nan.fillna({"nan_reason": "no reason recorded"}).groupby(["method", "metric", "nan_reason"])
                 .size().reset_index(name="images") if not nan.empty else pd.DataFrame())
    sections.append(("nan", "Undefined scores",
                     html_table(nan_table, wrap=("nan_reason",)) if not nan_table.empty
                     else '<p class="note">Every score is defined.</p>'))
    prov_cols = ["config_hash", "seed", "model_spec", "model_hash", "dataset_spec", "dataset_split",
                 "xaibench_version", "torch_version", "captum_version", "python_version"]
    prov = results[[c for c in prov_cols if c in results]].drop_duplicates()
    prov_long = pd.DataFrame({"field": prov.columns, "value": [", ".join(map(str, prov[c].unique())) for c in prov.columns]})
    sections.append(("provenance", "Provenance",
                     html_table(prov_long, table_id="provenance-table")
                     + f"<p class=\"note\">Started {_e(manifest.get('started', '?'))}; report written "
                     f"{_e(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}.</p>"
                     f"<details><summary>The config as run (JSON)</summary>"
                     f"<pre>{_e(json.dumps(cfg, indent=1, sort_keys=True))}</pre></details>"))

    done = int(results["shard"].nunique())
    status = (f"{results['image_id'].nunique()} images, {len(methods)} methods, {results['metric'].nunique()} "
              f"metrics, {len(results)} scores; {done} of {manifest['n_shards']} shards finished.")
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>' for sid, name, content in sections)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>xaibench report: {_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>xaibench report: {_e(title)}</h1>{_partial_banner(manifest, results, out)}"
        f"{'' if meaningful else _chance_banner(*sanity_model[:2])}"
        f"<p class=\"note\">{_e(status)} Config hash <code>{_e(manifest['config_hash'][:16])}</code>.</p>"
        f"<nav>{nav}</nav>{body}</main></body></html>"
    )
    path = out / "report.html"
    write_text(path, page)
    return path


__all__ = ["build_report", "ranking_table"]
