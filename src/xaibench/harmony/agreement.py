"""Metric-human agreement: does an explanation metric prefer the map the annotators prefer?

Per example a metric gives a **verdict** from its scores of the two maps as explained (the arrays
``original_map`` / ``finetuned_map`` of the study): ``finetuned`` when the fine-tuned map scores
better (higher or lower as the metric's ``MetricInfo.higher_is_better`` says), ``original`` when
the original one does, ``tie`` when the two scores are equal (``numpy.isclose``, rtol 1e-6, atol
1e-12) and ``undefined`` when either score is NaN (or the data it needs are missing).

The **human majority** of an example is the category (``finetuned`` / ``original`` / ``neither``)
with strictly the most labels; a tie between the top categories is ``none``.

The **agreement rate** counts the examples where both sides decided: the majority is ``finetuned``
or ``original`` and the verdict is ``finetuned`` or ``original``; it is the share of those where
the two are equal, with a Wilson interval and an exact binomial test against chance (0.5).
Examples whose majority is ``neither`` or ``none``, and metric ties or undefined scores, are left
out of the rate and counted in their own columns.

**Krippendorff's alpha** (nominal, three categories) is computed over the annotators alone and with
the metric as one more rater, whose rating is its verdict (a tie rates ``neither``, the metric
cannot tell the maps apart; an undefined score is a missing rating). Alpha rising when the metric
joins means it rates like one more annotator; falling means it disagrees with them.

``agreement(labels, scores)`` is pure pandas (no Django, no torch); ``score_maps`` computes a
registered metric's scores of arrays; ``study_scores`` reads the stored arrays, masks, images and
models of a loaded study.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaibench.errors import InputError
from xaibench.harmony.analysis import (
    CATEGORIES,
    CONDITION_KEYS,
    binomial_test,
    krippendorff_alpha_nominal,
    normalise,
    wilson_interval,
)

ITEM_KEYS = [*CONDITION_KEYS, "example"]
DECIDED = ("finetuned", "original")
VERDICTS = ("finetuned", "original", "tie", "undefined")
# vocabulary words a metric may need that a study carries (the image and the two models included)
SCORABLE = {"attributions", "masks", "targets", "labels", "inputs", "model"}
SCORE_COLUMNS = [*ITEM_KEYS, "scored", "original_score", "finetuned_score", "higher_is_better"]
BATCH = 256  # examples scored at once


def verdicts(original: np.ndarray, finetuned: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per example: which map the metric scores better (``finetuned`` / ``original`` / ``tie`` /
    ``undefined`` where a score is NaN)."""
    original = np.asarray(original, dtype=float)
    finetuned = np.asarray(finetuned, dtype=float)
    better = finetuned > original if higher_is_better else finetuned < original
    out = np.where(better, "finetuned", "original").astype(object)
    out[np.isclose(original, finetuned, rtol=1e-6, atol=1e-12)] = "tie"
    out[np.isnan(original) | np.isnan(finetuned)] = "undefined"
    return out


def human_majority(counts: np.ndarray) -> np.ndarray:
    """Per item (rows of an items x CATEGORIES count matrix): the category with strictly the most
    labels, ``none`` on a tie at the top (or no label)."""
    counts = np.asarray(counts)
    top = counts.max(axis=1, keepdims=True)
    unique = ((counts == top).sum(axis=1) == 1) & (top[:, 0] > 0)
    return np.where(unique, np.array(CATEGORIES, dtype=object)[counts.argmax(axis=1)], "none")


def _counts(labels: pd.DataFrame) -> pd.DataFrame:
    """Items (ITEM_KEYS as index) x CATEGORIES label counts."""
    return (
        labels.groupby(ITEM_KEYS + ["choice"]).size().unstack("choice")
        .reindex(columns=list(CATEGORIES), fill_value=0).fillna(0).astype(int)
    )


def _stats(group: pd.DataFrame, confidence: float) -> dict:
    """Agreement of one metric with the humans over the items of ``group`` (one row per item)."""
    majority, verdict = group["majority"].to_numpy(), group["verdict"].to_numpy()
    compared = np.isin(majority, DECIDED) & np.isin(verdict, DECIDED)
    n, k = int(compared.sum()), int((compared & (majority == verdict)).sum())
    low, high = wilson_interval(k, n, confidence)
    human = group[list(CATEGORIES)].to_numpy(dtype=float)
    rating = np.where(verdict == "tie", "neither", verdict)
    metric = np.stack([rating == c for c in CATEGORIES], axis=1).astype(float)
    out = {"examples": int(len(group))}
    out.update({f"human_{c}": int((majority == c).sum()) for c in (*CATEGORIES, "none")})
    out.update({f"metric_{v}": int((verdict == v).sum()) for v in VERDICTS})
    out.update(
        compared=n, agree=k, rate=k / n if n else float("nan"), ci_low=low, ci_high=high,
        p_value=binomial_test(k, n) if n else float("nan"),
        alpha_humans=krippendorff_alpha_nominal(human),
        alpha_with_metric=krippendorff_alpha_nominal(human + metric),
    )
    return out


def agreement(labels: pd.DataFrame, scores: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Agreement of each scored metric with the human majority, per condition and pooled per metric.

    ``labels``: as for ``analysis.analyze``. ``scores``: one row per (item, scored metric) with
    columns ``SCORE_COLUMNS`` (``scored`` the metric's registry name). Items without labels are
    left out. Returns ``{"conditions": [...], "pooled": [...], "ranking": [...], "ranking_verdict": str}``;
    ``ranking`` lists the pooled metrics by agreement rate, highest first (undefined rates last), and
    ``ranking_verdict`` (`ranking_sentence`) names a first metric only when its interval clears the runner-up's.
    """
    missing = sorted(set(SCORE_COLUMNS) - set(scores.columns))
    if missing:
        raise ValueError(f"scores lack column(s): {', '.join(missing)}")
    df = normalise(labels)
    df["example"] = df["example"].astype(str)
    counts = _counts(df)
    counts["majority"] = human_majority(counts[list(CATEGORIES)].to_numpy())
    scores = scores.copy()
    scores["example"] = scores["example"].astype(str)
    items = scores.join(counts, on=ITEM_KEYS, how="inner").reset_index(drop=True)
    parts = [pd.Series(verdicts(g["original_score"], g["finetuned_score"], bool(g["higher_is_better"].iloc[0])), index=g.index)
             for _, g in items.groupby("scored")]
    items["verdict"] = pd.concat(parts) if parts else pd.Series(dtype=object)
    result: dict = {"confidence": confidence, "conditions": [], "pooled": [], "ranking": []}
    for key, group in items.groupby([*CONDITION_KEYS, "scored"], sort=True):
        row = dict(zip([*CONDITION_KEYS, "scored"], key))
        row.update(_stats(group, confidence))
        result["conditions"].append(row)
    for scored, group in items.groupby("scored", sort=True):
        row = {"scored": scored, "conditions": int(group[list(CONDITION_KEYS)].drop_duplicates().shape[0])}
        row.update(_stats(group, confidence))
        result["pooled"].append(row)
    ranked = sorted(result["pooled"], key=lambda r: (np.isnan(r["rate"]), -np.nan_to_num(r["rate"]), r["scored"]))
    result["ranking"] = [r["scored"] for r in ranked]
    result["ranking_verdict"] = ranking_sentence(result)
    return result


def scorable_metric(name: str):
    """The registered metric ``name`` (close names suggested), refused when it needs an explainer
    (robustness and randomisation metrics re-explain; a study keeps maps, not explainers)."""
    from xaibench.metrics import METRICS

    metric = METRICS.get(name)
    needs = sorted(set(metric.info.requires) - SCORABLE)
    if needs:
        usable = sorted(n for n, m in METRICS.items() if set(m.info.requires) <= SCORABLE)
        raise InputError(
            f"metric {name!r} needs {', '.join(needs)}, which study examples do not carry; metrics "
            f"scored from the stored maps, masks, images and models: {', '.join(usable)}"
        )
    return metric


def score_maps(name: str, original: np.ndarray, finetuned: np.ndarray, masks: np.ndarray | None = None,
               targets: np.ndarray | None = None, inputs: np.ndarray | None = None,
               models: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores [B] of metric ``name`` on the original and the fine-tuned maps [B, H, W] (float32).

    What the metric needs besides the maps: object masks [B, H, W] bool, class indices [B] (the
    class the maps explain), images [B, 3, H, W] in [0, 1] and the (original, fine-tuned) models;
    each map is scored with its own model. NaN where an example lacks them (``masks`` rows of all
    False and ``targets`` of -1 count as missing) or where the metric leaves the score undefined."""
    import torch

    from xaibench.devices import model_device

    metric = scorable_metric(name)
    needs = set(metric.info.requires)
    n = len(original)
    missing = np.full(n, np.nan)
    if ("masks" in needs and masks is None) or (needs & {"targets", "labels"} and targets is None) or \
            ("inputs" in needs and inputs is None) or ("model" in needs and models is None):
        return missing, missing.copy()
    ok = np.ones(n, dtype=bool)
    if "masks" in needs:
        ok &= masks.reshape(n, -1).any(axis=1)
    if needs & {"targets", "labels"}:
        ok &= np.asarray(targets) >= 0
    device = model_device(models[0]) if "model" in needs else torch.device("cpu")
    kwargs: dict = {}
    if "masks" in needs:
        kwargs["masks"] = torch.from_numpy(np.ascontiguousarray(masks[ok])).to(device)
    for word in needs & {"targets", "labels"}:
        kwargs[word] = torch.from_numpy(np.asarray(targets)[ok].astype(np.int64)).to(device)
    if "inputs" in needs:
        kwargs["inputs"] = torch.from_numpy(np.ascontiguousarray(inputs[ok], dtype=np.float32)).to(device)
    out = []
    for side, maps in enumerate((original, finetuned)):
        scores = np.full(n, np.nan)
        if ok.any():
            if "model" in needs:
                kwargs["model"] = models[side]
            kwargs["attributions"] = torch.from_numpy(np.ascontiguousarray(maps[ok], dtype=np.float32)).to(device)
            scores[ok] = metric.score(kwargs).scores.double().cpu().numpy()
        out.append(scores)
    return out[0], out[1]


def _npy(name: str) -> np.ndarray:
    import io

    from django.core.files.storage import default_storage

    with default_storage.open(name, "rb") as fh:
        return np.load(io.BytesIO(fh.read()), allow_pickle=False)


def _mask(name: str, shape: tuple[int, ...]) -> np.ndarray:
    from django.core.files.storage import default_storage
    from PIL import Image

    if not name:
        return np.zeros(shape, dtype=bool)
    with default_storage.open(name, "rb") as fh, Image.open(fh) as im:
        return np.asarray(im.convert("L")) > 0  # grey values, nonzero = inside (as the folder reader)


def _image(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The stored image as float32 [3, H, W] in [0, 1] at the maps' size (nearest: make-study
    enlarges the model's input by nearest neighbour, so this gives its pixels back)."""
    import torch
    from django.core.files.storage import default_storage
    from PIL import Image

    with default_storage.open(name, "rb") as fh, Image.open(fh) as im:
        pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    if tuple(pixels.shape[1:]) != tuple(shape):
        pixels = torch.nn.functional.interpolate(pixels[None], size=tuple(shape), mode="nearest")[0]
    return pixels.numpy()


def _models(condition, device: str | None) -> tuple | None:
    """(original, fine-tuned) models of a condition, or None when the study names none."""
    if not (condition.original_model and condition.finetuned_model):
        return None
    from xaibench.models import load_model

    return tuple(load_model(spec, device=device).eval() for spec in (condition.original_model, condition.finetuned_model))


def study_scores(names: list[str], device: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Scores of the loaded study's examples that carry both maps as arrays: each metric of
    ``names`` and each condition's own metric (``metric_name``, where scorable). Metrics that need
    the model score each map with its own model (``original_model`` / ``finetuned_model``, loaded on
    ``device``, default: a GPU if there is one) on the stored image. Returns the scores
    (``SCORE_COLUMNS``) and counts: ``examples``, ``with_maps``, ``not_scorable`` (own metrics
    that need an explainer, by name), ``without_models`` (conditions a model metric could not score)."""
    from xaibench.harmony.models import Condition, Example
    from xaibench.metrics import METRICS

    rows: list[pd.DataFrame] = []
    info: dict = {"examples": Example.objects.count(), "with_maps": 0, "not_scorable": {}, "without_models": []}
    for condition in Condition.objects.all():
        examples = list(condition.examples.exclude(original_array="").exclude(finetuned_array=""))
        info["with_maps"] += len(examples)
        if not examples:
            continue
        wanted = list(names)
        if condition.metric_name and condition.metric_name not in wanted:
            try:
                scorable_metric(condition.metric_name)
                wanted.append(condition.metric_name)
            except InputError as err:
                info["not_scorable"][condition.metric_name] = str(err)
        need_model = any("model" in METRICS.get(n).info.requires for n in wanted)
        models = _models(condition, device) if need_model else None
        if need_model and models is None:
            info["without_models"].append(str(condition))
        for start in range(0, len(examples), BATCH):  # memory bounded by the batch
            by_shape: dict[tuple, list] = {}
            for ex in examples[start:start + BATCH]:
                original, finetuned = _npy(ex.original_array), _npy(ex.finetuned_array)
                by_shape.setdefault(original.shape, []).append((ex, original, finetuned))
            for shape, group in by_shape.items():
                data = {
                    "masks": np.stack([_mask(g[0].mask, shape) for g in group]),
                    "targets": np.array([-1 if g[0].label_index is None else g[0].label_index for g in group]),
                    "inputs": np.stack([_image(g[0].image, shape) for g in group]) if models else None,
                    "models": models,
                }
                original = np.stack([g[1] for g in group])
                finetuned = np.stack([g[2] for g in group])
                for name in wanted:
                    minfo = METRICS.get(name).info
                    so, sf = score_maps(name, original, finetuned, **data)
                    rows.append(pd.DataFrame({
                        "dataset": condition.dataset, "metric": condition.metric, "model": condition.model,
                        "method": condition.method, "example": [g[0].key for g in group], "scored": minfo.name,
                        "original_score": so, "finetuned_score": sf, "higher_is_better": minfo.higher_is_better,
                    }))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=SCORE_COLUMNS)
    return frame, info


def format_agreement(result: dict) -> str:
    """Plain-text tables of ``agreement``'s result (per condition, pooled per metric, ranking)."""
    from xaibench.harmony.analysis import format_value

    head = (f"{'examples':>8} {'human F/O/N/none':>16} {'metric F/O/tie/undef':>20} {'agree/n':>9} {'rate':>6} "
            f"{'CI':>13} {'p':>8} {'alpha':>6} {'+metric':>7}")

    def row(name: str, r: dict, width: int) -> str:
        human = "/".join(str(r[f"human_{c}"]) for c in (*CATEGORIES, "none"))
        metric = "/".join(str(r[f"metric_{v}"]) for v in VERDICTS)
        ci = f"{format_value(r['ci_low'], '.3f')}-{format_value(r['ci_high'], '.3f')}"
        return (f"{name:<{width}} {r['examples']:>8} {human:>16} {metric:>20} {str(r['agree']) + '/' + str(r['compared']):>9} "
                f"{format_value(r['rate'], '6.3f')} {ci:>13} {format_value(r['p_value'], '8.2g')} {format_value(r['alpha_humans'], '6.3f')} "
                f"{format_value(r['alpha_with_metric'], '7.3f')}")

    lines = ["Metric-human agreement: the metric's verdict (which map it scores better) vs the annotators' "
             "majority; rate over examples where both decided (F fine-tuned, O original, N neither, none: no majority"
             f"); {round(100 * result['confidence'])}% Wilson CI; alpha of the annotators alone and with the metric"]
    if not result["pooled"]:
        return "\n".join(lines + ["no labelled example has scores"])
    names = [" / ".join(str(c[k]) for k in (*CONDITION_KEYS, "scored") if c[k] != "") for c in result["conditions"]]
    width = max(len(n) for n in names)
    lines += ["", f"{'condition / scored metric':<{width}} {head}"] + [row(n, c, width) for n, c in zip(names, result["conditions"])]
    width = max(len(p["scored"]) for p in result["pooled"])
    lines += ["", f"{'pooled':<{width}} {head}"] + [row(p["scored"], p, width) for p in result["pooled"]]
    lines += ["", result["ranking_verdict"]]
    return "\n".join(lines)


def ranking_sentence(result: dict) -> str:
    """The pooled ranking as a claim with its numbers: each metric's rate, Wilson interval and n; the
    first is named only when its interval lies above the runner-up's, else the sentence says the
    data do not separate them."""
    pooled = {r["scored"]: r for r in result["pooled"]}
    ranked = [pooled[m] for m in result["ranking"]]
    shown = ", ".join(f"{r['scored']} {r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n = {r['compared']})"
                      if r["compared"] else f"{r['scored']} undefined (n = 0)" for r in ranked)
    level = round(100 * result["confidence"])
    decided = [r for r in ranked if r["compared"]]
    if len(decided) < 2:
        return f"Agreement rate ({level}% Wilson CI, n = examples where both decided): {shown}."
    first, second = decided[0], decided[1]
    if first["ci_low"] > second["ci_high"]:
        claim = f"humans agree most with {first['scored']}"
    else:
        claim = (f"no metric is clearly first: the intervals of {first['scored']} and {second['scored']} "
                 "overlap")
    return f"Agreement rate ({level}% Wilson CI, n = examples where both decided): {shown}; {claim}."
