"""The report's verdicts, computed from the results table and its reliability summary (pandas in, pandas out).

- `effective_params`: each metric's parameters as run (the ``params`` column where the run stored
  it, else the metric's defaults overridden by the config).
- `model_sanity`: the model's accuracy on the evaluated images (Wilson interval), where its weights
  come from, and whether it is at or near chance (then sanity checks and rankings are not meaningful).
- `best_per_metric`: the best non-control method per metric with its interval and runner-up, the
  metric's reliability verdict (`xaibench.reliability.reliability_verdict`: the lower bound of alpha's
  interval must clear 0.667 with enough images), whether the win is significant, and which control
  methods score better than it.
- `sanity_verdicts`: per method and randomisation metric, passes / fails / unclear against the
  metric's similarity threshold.
- `alignment_finding`: where a localisation metric is scored against several masks, which mask the
  maps fall on.

Controls are model-independent baseline methods (`CONTROLS`: random noise, the image's edges). They
are treated the same way everywhere: they are methods like any other in the per-metric statistics
(alpha, ranks, tests), but never called "best" and never part of a mean over methods (the alignment
finding, the demo's summary); when one scores better than every real method the metric does not
separate explanations from a baseline on this run.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pandas as pd

from xaibench.errors import XaibenchError
from xaibench.modelspec import ModelSpec
from xaibench.reliability import AccuracyCheck, accuracy_check, alpha_verdicts

CONTROLS = ("random", "sobel")  # registry names of the model-independent baseline methods
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
    """One row per metric: alpha, interpretation, verdict (the reliability verdict's sentence),
    reliable (the metric may rank methods: `Verdict.rankable`), best (non-control, rank order), mean,
    low, high, runner_up (the next non-control method) with runner_mean, runner_low, runner_high, clear
    (significantly better than every other non-control method), beaten_by (controls with a better
    mean than the best method)."""
    verdicts = alpha_verdicts(rel.alpha, getattr(rel, "level", 0.95)).set_index("metric")
    alpha = rel.alpha.set_index("metric")
    rows = []
    for metric, group in rel.means.groupby("metric", sort=False):
        ordered = group.sort_values("rank", kind="stable")
        real = ordered[~ordered["method"].isin(controls)]
        a = float(alpha.at[metric, "alpha"]) if metric in alpha.index else math.nan
        known = metric in verdicts.index
        row = {"metric": metric, "alpha": a,
               "interpretation": alpha.at[metric, "interpretation"] if metric in alpha.index else "",
               "verdict": verdicts.at[metric, "reason"] if known else "undefined: no alpha",
               "reliable": bool(verdicts.at[metric, "rankable"]) if known else False, "best": None,
               "mean": math.nan, "low": math.nan, "high": math.nan, "runner_up": None, "runner_mean": math.nan,
               "runner_low": math.nan,
               "runner_high": math.nan, "clear": False, "beaten_by": []}
        if not real.empty:
            top = real.iloc[0]
            others = set(real["method"]) - {top["method"]}
            pairs = rel.pairwise[rel.pairwise["metric"] == metric]
            involved = pairs[(pairs["method_a"] == top["method"]) & pairs["method_b"].isin(others)
                             | (pairs["method_b"] == top["method"]) & pairs["method_a"].isin(others)]
            row.update(best=top["method"], mean=float(top["mean"]), low=float(top["low"]), high=float(top["high"]),
                       clear=bool(others) and len(involved) == len(others) and bool(involved["significant"].all()),
                       beaten_by=list(ordered.loc[ordered["method"].isin(controls) & (ordered["rank"] < top["rank"]), "method"]))
            if len(real) > 1:
                second = real.iloc[1]
                row.update(runner_up=second["method"], runner_mean=float(second["mean"]), runner_low=float(second["low"]),
                           runner_high=float(second["high"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", "alpha", "interpretation", "verdict", "reliable", "best", "mean", "low",
                                       "high", "runner_up", "runner_mean", "runner_low", "runner_high", "clear",
                                       "beaten_by"])


def weights_origin(model: dict[str, Any], seed: int) -> tuple[str, bool]:
    """(where the weights of the run's model come from, whether they are a random initialisation),
    from the run config's [model] table (spec, weights) and the run seed that initialises it."""
    from xaibench.models import PRETRAINED_NAMES

    spec, weights = str(model.get("spec", "?")), model.get("weights")
    try:
        parsed = ModelSpec.parse(spec)
    except XaibenchError:
        return f"unknown (model spec {spec!r})", False
    scheme, name = parsed.kind, parsed.name
    if scheme == "builtin":
        return f"trained by xaibench: the built-in recipe of {name} (cached model file)", False
    if scheme == "file":
        return f"model file {name} (written by save_model, e.g. by xaibench train)", False
    if weights is None:
        return f"random initialisation (seed {seed}): no trained weights", True
    if str(weights).lower() in PRETRAINED_NAMES or str(weights).isupper():
        return f"pretrained weights ({weights}) from the local cache", False
    return f"weights file {weights}", False


def model_sanity(results: pd.DataFrame, manifest: dict[str, Any], level: float = 0.95) -> tuple[AccuracyCheck, str, bool]:
    """(accuracy check, weights origin, meaningful) of a run's model. Accuracy: predicted class =
    label on the evaluated images that have a label (label >= 0), against chance 1 / the data set's
    number of classes (the manifest's ``classes``, else the labels seen); meaningful is False when
    the model is at or near chance (`xaibench.reliability.accuracy_check`) or randomly initialised."""
    cfg = manifest.get("config", {})
    origin, random_init = weights_origin(cfg.get("model", {}), int(cfg.get("seed", 0)))
    images = results.drop_duplicates("image_id")
    labelled = images[images["label"] >= 0] if "label" in images else images.iloc[:0]
    n_classes = len(manifest.get("classes") or []) or max(int(labelled["label"].nunique()) if len(labelled) else 1, 1)
    correct = (labelled["label"] == labelled["prediction"]).to_numpy() if len(labelled) else []
    check = accuracy_check(correct, n_classes, level=level)
    return check, origin, not (random_init or bool(check.near_chance))


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


def alignment_by_method(results: pd.DataFrame, controls: set[str]) -> pd.DataFrame:
    """Mean localisation score per (metric name, method) and mask, controls left out: columns metric,
    method, then one per mask. The one table behind every alignment number (report, demo)."""
    loc = results[(results["category"] == "localisation") & results["mask"].notna() & ~results["method"].isin(controls)]
    key = "metric_name" if "metric_name" in loc else "metric"
    if loc.empty:
        return pd.DataFrame(columns=["metric", "method"])
    table = loc.pivot_table(index=[key, "method"], columns="mask", values="score", aggfunc="mean", sort=False)
    table.columns.name = None
    return table.reset_index().rename(columns={key: "metric"})


def alignment_finding(results: pd.DataFrame, controls: set[str]) -> tuple[pd.DataFrame, list[str]]:
    """Mean over the non-control methods of each method's mean localisation score per (metric, mask)
    (`alignment_by_method`) and, for metrics scored on two or more masks, a sentence naming the mask
    the maps fall on most."""
    per_method = alignment_by_method(results, controls)
    if per_method.empty:
        return pd.DataFrame(), []
    table = per_method.drop(columns="method").groupby("metric", sort=False).mean()
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
    return table.reset_index(), sentences
