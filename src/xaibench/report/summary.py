"""The report's verdicts, computed from the results table and its reliability summary (pandas in, pandas out).

- `effective_params`: each metric's parameters as run (the ``params`` column where the run stored
  it, else the metric's defaults overridden by the config).
- `best_per_metric`: the best non-control method per metric, whether the metric is reliable enough
  to rank by (Krippendorff's alpha >= `RELIABLE_ALPHA`), whether the win is significant, and which
  control methods score better than it.
- `sanity_verdicts`: per method and randomisation metric, passes / fails / unclear against the
  metric's similarity threshold.
- `alignment_finding`: where a localisation metric is scored against several masks, which mask the
  maps fall on.

Controls are model-independent baseline methods (`CONTROLS`: random noise, the image's edges):
they are shown everywhere but never called "best"; when one scores better than every real method
the metric does not separate explanations from a baseline on this run.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pandas as pd

CONTROLS = ("random", "sobel")  # registry names of the model-independent baseline methods
RELIABLE_ALPHA = 0.667  # Krippendorff's "tentative" threshold: below it a metric cannot rank methods
SANITY_THRESHOLD = 0.5  # similarity below which a map counts as changed (MPRT's default threshold)


def is_control(method_name: str) -> bool:
    """Whether a registered method is a control: its registry entry's ``control`` flag where the
    registry has one, else membership of `CONTROLS`."""
    from xaibench.explainers import METHODS

    info = METHODS.get(method_name) if method_name in METHODS else None
    flag = getattr(info, "control", None)
    return bool(flag) if flag is not None else (info.name if info else method_name) in CONTROLS


def control_methods(results: pd.DataFrame) -> set[str]:
    """The method labels of `results` whose registry method is a control."""
    names = results.drop_duplicates("method")
    column = "method_name" if "method_name" in names else "method"
    return {label for label, name in zip(names["method"], names[column]) if is_control(str(name))}


def effective_params(results: pd.DataFrame, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Metric label -> parameters as run. From the ``params`` column (JSON) where present; else the
    metric function's defaults updated by the config (the runner's ``max_batch`` included; a seed
    the config does not set is derived per shard from the run seed)."""
    from xaibench.metrics import METRICS
    from xaibench.metrics.base import VOCABULARY

    out: dict[str, dict[str, Any]] = {}
    first = results.drop_duplicates("metric")
    stored = first.set_index("metric")["params"] if "params" in first else pd.Series(dtype=object)
    for label, name in zip(first["metric"], first.get("metric_name", first["metric"])):
        raw = stored.get(label)
        table = dict(config.get("metrics", {}).get(label, {}))
        if isinstance(raw, str) and raw:
            out[label] = json.loads(raw)
            if "seed" in out[label] and "seed" not in table:
                out[label]["seed"] = "derived from the run seed"  # differs per shard and method
            continue
        table.pop("metric", None)
        table.pop("mask", None)
        params: dict[str, Any] = {}
        if name in METRICS:
            sig = inspect.signature(METRICS.get(name).fn).parameters
            params = {k: p.default for k, p in sig.items() if k not in VOCABULARY and p.default is not inspect.Parameter.empty}
            if "max_batch" in params and "max_batch" not in table:
                params["max_batch"] = config.get("max_batch", params["max_batch"])
            if "seed" in params and "seed" not in table:
                params["seed"] = "derived from the run seed"
        params.update(table)
        out[label] = params
    return out


def twins(results: pd.DataFrame) -> dict[str, str]:
    """method -> the method of the run whose maps it equals on this model (the runner's ``same_as``
    column, e.g. guided backprop = saliency on a model without nn.ReLU); empty for older runs."""
    if "same_as" not in results:
        return {}
    pairs = results[["method", "same_as"]].dropna().drop_duplicates()
    return dict(zip(pairs["method"], pairs["same_as"]))


def best_per_metric(rel: Any, controls: set[str]) -> pd.DataFrame:
    """One row per metric: alpha, interpretation, reliable, best (non-control, rank order), mean,
    low, high, clear (significantly better than every other non-control method), beaten_by
    (controls with a better mean than the best method)."""
    alpha = rel.alpha.set_index("metric")
    rows = []
    for metric, group in rel.means.groupby("metric", sort=False):
        ordered = group.sort_values("rank", kind="stable")
        real = ordered[~ordered["method"].isin(controls)]
        a = float(alpha.at[metric, "alpha"]) if metric in alpha.index else math.nan
        row = {"metric": metric, "alpha": a,
               "interpretation": alpha.at[metric, "interpretation"] if metric in alpha.index else "",
               "reliable": bool(math.isfinite(a) and a >= RELIABLE_ALPHA), "best": None, "mean": math.nan,
               "low": math.nan, "high": math.nan, "clear": False, "beaten_by": []}
        if not real.empty:
            top = real.iloc[0]
            others = set(real["method"]) - {top["method"]}
            pairs = rel.pairwise[rel.pairwise["metric"] == metric]
            involved = pairs[(pairs["method_a"] == top["method"]) & pairs["method_b"].isin(others)
                             | (pairs["method_b"] == top["method"]) & pairs["method_a"].isin(others)]
            row.update(best=top["method"], mean=float(top["mean"]), low=float(top["low"]), high=float(top["high"]),
                       clear=bool(others) and len(involved) == len(others) and bool(involved["significant"].all()),
                       beaten_by=list(ordered.loc[ordered["method"].isin(controls) & (ordered["rank"] < top["rank"]), "method"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", "alpha", "interpretation", "reliable", "best", "mean", "low", "high",
                                       "clear", "beaten_by"])


def sanity_verdicts(rel: Any, results: pd.DataFrame, params: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Methods x randomisation metrics: ``passes`` where the upper confidence bound of the mean
    similarity is below the metric's threshold (its ``threshold`` parameter, else
    `SANITY_THRESHOLD`), ``fails`` where the lower bound is at or above it, else ``unclear``;
    column ``verdict``: passes only if every check passes, fails if any fails."""
    metrics = list(dict.fromkeys(results.loc[results["category"] == "randomisation", "metric"]))
    if not metrics:
        return pd.DataFrame()
    means = rel.means[rel.means["metric"].isin(metrics)]
    table = {}
    for r in means.itertuples(index=False):
        limit = float(params.get(r.metric, {}).get("threshold", SANITY_THRESHOLD))
        high = r.high if math.isfinite(r.high) else r.mean
        low = r.low if math.isfinite(r.low) else r.mean
        word = "passes" if high < limit else "fails" if low >= limit else "unclear"
        table.setdefault(r.method, {})[r.metric] = f"{word} ({r.mean:.2f})"
    frame = pd.DataFrame.from_dict(table, orient="index").reindex(columns=metrics)
    words = frame.apply(lambda col: col.str.split(" ").str[0])

    def overall(row: pd.Series) -> str:
        values = set(row.dropna())
        return "fails" if "fails" in values else "passes" if values == {"passes"} else "unclear"

    frame.insert(0, "verdict", words.apply(overall, axis=1))
    frame.index.name = "method"
    return frame.reset_index()


def alignment_finding(results: pd.DataFrame, controls: set[str]) -> tuple[pd.DataFrame, list[str]]:
    """Mean localisation score over the non-control methods per (metric, mask) and, for metrics
    scored on two or more masks, a sentence naming the mask the maps fall on most."""
    loc = results[(results["category"] == "localisation") & results["mask"].notna() & ~results["method"].isin(controls)]
    if loc.empty:
        return pd.DataFrame(), []
    key = "metric_name" if "metric_name" in loc else "metric"
    table = loc.pivot_table(index=key, columns="mask", values="score", aggfunc="mean", sort=False)
    table.columns.name = None
    sentences, favoured = [], []
    for metric, row in table.iterrows():
        row = row.dropna()
        if len(row) < 2:
            continue
        ordered = row.sort_values(ascending=False)
        favoured.append(ordered.index[0])
        sentences.append(f"{metric}: {ordered.index[0]} {ordered.iloc[0]:.3f} vs "
                         + ", ".join(f"{m} {v:.3f}" for m, v in ordered.iloc[1:].items()))
    if favoured:
        if len(set(favoured)) == 1:
            head = (f"The maps fall most on the '{favoured[0]}' mask by every localisation metric scored on "
                    "several masks (mean over the non-control methods).")
        else:
            head = "The localisation metrics disagree on which mask the maps fall on most."
        sentences.insert(0, head)
    return table.reset_index().rename(columns={key: "metric"}), sentences
