"""Analysis of HARMONY labels: a pure function over a pandas DataFrame (no Django needed).

Input: one row per label with columns ``annotator``, ``example``, ``choice`` (``finetuned`` /
``original`` / ``neither``; the legacy ``learn`` is read as ``finetuned``), ``metric``, ``model``,
``method`` and optionally ``dataset`` and ``response_ms``. An item (the thing annotators agree on)
is one example of one condition.

Definitions (docs/harmony.md):
- percentages of fine-tuned / original / neither over all labels;
- preference = fine-tuned / (fine-tuned + original), the decided answers, with an exact two-sided
  binomial test against 0.5 and a Wilson score interval;
- Fleiss' kappa (nominal, three categories) over the items with the modal number of ratings;
- Krippendorff's alpha (nominal) over all items with at least two ratings;
- per condition, Holm-adjusted p-values over the conditions and the achieved power: the exact power
  of the binomial test at the observed preference and number of decided answers, at
  ``alpha / conditions`` (``xaibench.harmony.power``).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

CATEGORIES = ("finetuned", "original", "neither")
ALIASES = {"learn": "finetuned", "fine-tuned": "finetuned", "fine_tuned": "finetuned"}
CONDITION_KEYS = ("dataset", "metric", "model", "method")


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an items x categories matrix of rating counts (same number of raters per item)."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0:
        return float("nan")
    n = counts.sum(axis=1)
    if not np.allclose(n, n[0]) or n[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    n = n[0]
    p_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_item.mean()
    p_cat = counts.sum(axis=0) / counts.sum()
    p_e = float((p_cat**2).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha_nominal(counts: np.ndarray) -> float:
    """Krippendorff's alpha (nominal) from an items x categories matrix of rating counts.

    Items with fewer than two ratings are not pairable and are ignored."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2:
        raise ValueError("expected an items x categories matrix")
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if counts.shape[0] == 0:
        return float("nan")
    w = 1.0 / (m - 1)
    coincidence = np.einsum("u,uc,uk->ck", w, counts, counts) - np.diag((w[:, None] * counts).sum(axis=0))
    n_c = coincidence.sum(axis=1)
    total = n_c.sum()
    disagree_observed = coincidence.sum() - np.trace(coincidence)
    disagree_expected = (n_c.sum() ** 2 - (n_c**2).sum()) / (total - 1)
    if disagree_expected <= 0:
        return float("nan")
    return float(1.0 - disagree_observed / disagree_expected)


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test (minimum-likelihood method, as scipy.stats.binomtest)."""
    if n == 0:
        return float("nan")
    if not 0 <= k <= n:
        raise ValueError("need 0 <= k <= n")
    if p in (0.0, 1.0):
        return 1.0 if k == p * n else 0.0
    i = np.arange(n + 1)
    logpmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(x + 1) + math.lgamma(n - x + 1) for x in i])
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    pmf = np.exp(logpmf)
    if k == p * n:
        return 1.0
    d = pmf[k] * (1 + 1e-7)
    return float(min(1.0, pmf[pmf <= d].sum()))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (no continuity correction)."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def normalise(labels: pd.DataFrame) -> pd.DataFrame:
    required = {"annotator", "example", "choice", "metric", "model", "method"}
    missing = sorted(required - set(labels.columns))
    if missing:
        raise ValueError(f"labels lack column(s): {', '.join(missing)}")
    df = labels.copy()
    df["choice"] = df["choice"].astype(str).str.strip().str.lower().replace(ALIASES)
    bad = sorted(set(df["choice"]) - set(CATEGORIES))
    if bad:
        raise ValueError(f"unknown choice(s): {', '.join(bad)}")
    if "dataset" not in df.columns:
        df["dataset"] = ""
    return df


def _counts_stats(choices: pd.Series, confidence: float) -> dict:
    counts = {c: int((choices == c).sum()) for c in CATEGORIES}
    n = int(len(choices))
    decided = counts["finetuned"] + counts["original"]
    low, high = wilson_interval(counts["finetuned"], decided, confidence)
    out: dict = {"n": n}
    for c in CATEGORIES:
        out[c] = counts[c]
    for c in CATEGORIES:
        out[f"pct_{c}"] = 100.0 * counts[c] / n if n else float("nan")
    out.update(
        decided=decided,
        preference=counts["finetuned"] / decided if decided else float("nan"),
        p_value=binomial_test(counts["finetuned"], decided) if decided else float("nan"),
        ci_low=low,
        ci_high=high,
    )
    return out


def _agreement(group: pd.DataFrame) -> dict:
    table = (
        group.groupby(["dataset", "metric", "model", "method", "example", "choice"]).size()
        .unstack("choice").reindex(columns=list(CATEGORIES), fill_value=0).fillna(0).to_numpy()
    )
    ratings = table.sum(axis=1)
    pairable = table[ratings >= 2]
    kappa, n_kappa, raters = float("nan"), 0, 0
    if len(pairable):
        values, freq = np.unique(pairable.sum(axis=1), return_counts=True)
        raters = int(values[freq == freq.max()].max())  # modal number of ratings; ties: the larger
        subset = pairable[pairable.sum(axis=1) == raters]
        n_kappa = int(len(subset))
        kappa = fleiss_kappa(subset)
    return {
        "items": int(len(table)),
        "fleiss_kappa": kappa,
        "fleiss_items": n_kappa,
        "fleiss_raters": raters,
        "krippendorff_alpha": krippendorff_alpha_nominal(table),
        "alpha_items": int(len(pairable)),
    }


def _majority_agreement(df: pd.DataFrame) -> pd.Series:
    """Per annotator: share of their labels equal to the strict majority of the other annotators."""
    keys = ["dataset", "metric", "model", "method", "example"]
    counts = df.groupby(keys + ["choice"]).size().unstack("choice").reindex(columns=list(CATEGORIES), fill_value=0).fillna(0)
    merged = df.join(counts, on=keys)
    others = np.array(merged[list(CATEGORIES)].to_numpy(dtype=float), copy=True)
    own = np.array([CATEGORIES.index(c) for c in merged["choice"]])
    others[np.arange(len(own)), own] -= 1
    total = others.sum(axis=1)
    top = others.max(axis=1)
    unique_top = (others == top[:, None]).sum(axis=1) == 1
    valid = (total > 0) & unique_top
    agree = others[np.arange(len(own)), own] == top
    frame = pd.DataFrame({"annotator": merged["annotator"].to_numpy(), "valid": valid, "agree": agree & valid})
    g = frame.groupby("annotator")
    return (g["agree"].sum() / g["valid"].sum().replace(0, np.nan)).astype(float)


def analyze(labels: pd.DataFrame, confidence: float = 0.95, alpha: float = 0.05) -> dict:
    """Statistics per condition, pooled per metric, per annotator, and overall; ``alpha`` is the
    family-wise level of the conditions' tests (Holm-adjusted p-values, achieved power)."""
    from xaibench.harmony.power import binomial_power, holm

    df = normalise(labels)
    result: dict = {
        "n_labels": int(len(df)),
        "n_annotators": int(df["annotator"].nunique()),
        "confidence": confidence,
        "conditions": [],
        "metrics": [],
        "annotators": [],
    }
    if df.empty:
        result["overall"] = {}
        return result
    for key, group in df.groupby(list(CONDITION_KEYS), sort=True):
        row = dict(zip(CONDITION_KEYS, key))
        row.update(_counts_stats(group["choice"], confidence))
        row.update(_agreement(group))
        result["conditions"].append(row)
    tested = [c for c in result["conditions"] if c["decided"]]
    for c, p_holm in zip(tested, holm([c["p_value"] for c in tested])):
        c["p_holm"] = float(p_holm)
        c["power"] = binomial_power(c["decided"], c["preference"], alpha / len(tested))
    for c in result["conditions"]:
        c.setdefault("p_holm", float("nan"))
        c.setdefault("power", float("nan"))
    for metric, group in df.groupby("metric", sort=True):
        row = {"metric": metric, "conditions": int(group[list(CONDITION_KEYS)].drop_duplicates().shape[0])}
        row.update(_counts_stats(group["choice"], confidence))
        row.update(_agreement(group))
        result["metrics"].append(row)
    majority = _majority_agreement(df)
    for annotator, group in df.groupby("annotator", sort=True):
        row = {"annotator": str(annotator)}
        row.update(_counts_stats(group["choice"], confidence))
        rt = pd.to_numeric(group["response_ms"], errors="coerce").dropna() if "response_ms" in group else pd.Series([], dtype=float)
        row["median_response_ms"] = float(rt.median()) if len(rt) else float("nan")
        row["majority_agreement"] = float(majority.get(annotator, float("nan")))
        result["annotators"].append(row)
    overall = _counts_stats(df["choice"], confidence)
    overall.update(_agreement(df))
    result["overall"] = overall
    return result


def format_value(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width) if width else 1)
    return format(value, spec)


def format_report(result: dict) -> str:
    """A plain-text table of ``analyze``'s result."""
    lines = [f"{result['n_labels']} labels by {result['n_annotators']} annotators"]
    head = f"{'fine-tuned':>10} {'original':>9} {'neither':>8} {'n':>6} {'pref':>6} {'95% CI':>13} {'p':>9} {'kappa':>6} {'alpha':>6}"

    def row(name: str, r: dict, width: int) -> str:
        ci = f"{format_value(r['ci_low'], '.3f')}-{format_value(r['ci_high'], '.3f')}"
        return (
            f"{name:<{width}} {format_value(r['pct_finetuned'], '9.1f')}% {format_value(r['pct_original'], '8.1f')}% "
            f"{format_value(r['pct_neither'], '7.1f')}% {r['n']:>6} {format_value(r['preference'], '6.3f')} {ci:>13} "
            f"{format_value(r['p_value'], '9.2g')} {format_value(r.get('fleiss_kappa'), '6.3f')} {format_value(r.get('krippendorff_alpha'), '6.3f')}"
        )

    if result["conditions"]:
        names = [" / ".join(str(c[k]) for k in CONDITION_KEYS if c[k] != "") for c in result["conditions"]]
        width = max(len(n) for n in names)
        lines += ["", "Per condition (p Holm: adjusted over the conditions; power: exact, achieved at the observed "
                      "preference, alpha / conditions)", f"{'condition':<{width}} {head} {'p Holm':>9} {'power':>6}"]
        lines += [f"{row(n, c, width)} {format_value(c['p_holm'], '9.2g')} {format_value(c['power'], '6.3f')}"
                  for n, c in zip(names, result["conditions"])]
        width = max(len(str(m["metric"])) for m in result["metrics"])
        lines += ["", "Pooled per metric", f"{'metric':<{width}} {head}"]
        lines += [row(str(m["metric"]), m, width) for m in result["metrics"]]
        width = max(len(a["annotator"]) for a in result["annotators"])
        lines += ["", "Per annotator (kappa/alpha: -; majority = agreement with the other annotators' majority)"]
        lines += [f"{'annotator':<{width}} {head} {'majority':>8} {'median ms':>9}"]
        for a in result["annotators"]:
            lines.append(f"{row(a['annotator'], a, width)} {format_value(a['majority_agreement'], '8.3f')} {format_value(a['median_response_ms'], '9.0f')}")
        lines += ["", row("overall", result["overall"], 8)]
    return "\n".join(lines)


def to_jsonable(obj):
    """Replace NaN by None (JSON has no NaN) and numpy scalars by Python numbers."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _html_table(rows: list[dict]) -> str:
    from html import escape

    if not rows:
        return "<p>none</p>"
    columns = list(rows[0])

    def cell(v) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return escape(str(v))

    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def format_html(result: dict) -> str:
    """``analyze``'s result (with ``agreement``, ``mask_agreement`` or ``notes`` where present) as one
    self-contained HTML page: a table per section, no scripts."""
    from html import escape

    sections = [("Per condition", result.get("conditions", [])), ("Pooled per metric", result.get("metrics", [])),
                ("Per annotator", result.get("annotators", [])), ("Overall", [result["overall"]] if result.get("overall") else [])]
    agreement = result.get("agreement")
    if agreement:
        sections += [("Metric-human agreement per condition", agreement["conditions"]),
                     ("Metric-human agreement pooled per metric", agreement["pooled"]),
                     ("Metrics humans agree with most", [{"rank": i + 1, "metric": r["scored"], "rate": r["rate"],
                                                          "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["compared"]}
                                                         for i, r in enumerate(sorted(agreement["pooled"], key=lambda r: agreement["ranking"].index(r["scored"])))]),
                     ("Verdict", [{"claim": agreement.get("ranking_verdict", "")}])]
    if result.get("mask_agreement"):
        masks = result["mask_agreement"]
        sections += [("Mask agreement between annotators (mean pairwise IoU)", [{k: v for k, v in masks.items() if k != "per_image"}]),
                     ("Mask agreement per image", masks["per_image"])]
    notes = "".join(f"<p class=note>{escape(n)}</p>" for n in result.get("notes", []))
    body = "".join(f"<h2>{escape(t)}</h2>{_html_table(rows)}" for t, rows in sections)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}.note{color:#a40}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>HARMONY analysis</title><style>{style}</style></head>"
            f"<body><h1>HARMONY analysis</h1><p>{result['n_labels']} labels by {result['n_annotators']} annotators</p>"
            f"{notes}{body}</body></html>")
