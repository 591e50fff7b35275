"""Explanation alignment, shared by the recipes of Bang, Boggust & Satyanarayan (2024).

Explanation alignment reports agreement of saliency with a human explanation like accuracy: the
mean over a test set of a per-image score, for the predicted class. Scores per image and mask:

- ``iou``, ``gtc``, ``sc``: Shared Interest IoU, ground-truth coverage and saliency coverage of the
  binarised map (`xaibench.metrics.shared_interest`);
- ``pg``: pointing game on the raw map (a hit when the map's maximum lies in the mask);
- ``case``: the image's Shared Interest case (the eight recurring patterns, `CASES`).

Saliency settings (`SALIENCY`), as in the paper's code:

- ``vanilla_gradient``: |d logit_c / d x| summed over the colour channels (Captum's ``Saliency``
  with ``abs=True``, channels summed as Shared Interest's ``flatten``), binarised at mean + 1 std of
  the per-image min-max normalised map;
- ``gradcam``: Grad-CAM at the model's default layer, upsampled to the input, binarised at 0.5 of
  the min-max normalised map.

Images whose mask is empty (or whose map is constant) have undefined scores: they are excluded from
the means and counted (``undefined``), never scored 0. Benchmarks go through the runner
(`benchmark_config` -> ``ctx.run_benchmark``); `per_image` turns a run into one row per (image,
mask), with the case computed from the run's cached maps by `shared_interest_cases`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xaibench.errors import InputError
from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Recipe,
    Schema,
    Step,
    StepContext,
    Text,
)
from xaibench.metrics.shared_interest import CASES, shared_interest_cases

SALIENCY: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "vanilla_gradient": ({"method": "saliency", "reduce": "abs_sum"}, {"binarize": "mean_std", "k": 1.0}),
    "gradcam": ({"method": "gradcam"}, {"binarize": "threshold", "t": 0.5}),
}
DATA: dict[str, tuple[tuple[type, ...], Any]] = {  # the data keys every alignment recipe shares
    "spec": ((str,), REQUIRED),
    "split": ((str,), "test"),
    "n": ((int,), None),
    "image_size": ((int,), None),
}
SCORES = {"iou": "iou_coverage", "gtc": "ground_truth_coverage", "sc": "saliency_coverage"}
KINDS = (*SCORES, "pg")
NO_CASE = "none"
MODEL_KEYS = ("spec", "weights", "num_classes")
PROVENANCE = ("experiment", "config_hash", "seed", "xaibench_version", "torch_version", "python_version", "step")


def check_saliency(name: str) -> None:
    if name not in SALIENCY:
        raise InputError(f"config saliency: must be one of {', '.join(SALIENCY)}, got {name!r}")


def check_names(names: Any, where: str) -> None:
    """A non-empty list of distinct strings (mask or region names)."""
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise InputError(f"config {where}: a list of distinct names is required, got {names!r}")


def check_models(models: Mapping[str, Any], where: str = "models") -> None:
    """Every ``[models.<label>]`` table needs a spec; only the runner's model keys are allowed."""
    if not models:
        raise InputError(f"config [{where}]: at least one model is required")
    for label, table in models.items():
        if not isinstance(table, Mapping) or "spec" not in table:
            raise InputError(f"config [{where}.{label}]: a table with spec = \"...\" is required")
        unknown = sorted(set(table) - set(MODEL_KEYS))
        if unknown:
            raise InputError(f"config [{where}.{label}]: unknown key {unknown[0]!r}; allowed: {', '.join(MODEL_KEYS)}")


def benchmark_config(model: Mapping[str, Any], data: Mapping[str, Any], masks: Sequence[str], saliency: str, *,
                     name: str = "", batch: int = 64) -> dict[str, Any]:
    """A runner config scoring `saliency` maps of the predicted class against each of `masks`."""
    check_saliency(saliency)
    method, binarize = SALIENCY[saliency]
    metrics: dict[str, Any] = {}
    for mask in masks:
        for short, score in SCORES.items():
            metrics[f"{short}_{mask}"] = {"metric": "shared_interest", "mask": mask, "score": score, **binarize}
        metrics[f"pg_{mask}"] = {"metric": "pointing_game", "mask": mask}
    return {
        "name": name,
        "target": "predicted",
        "shard_size": batch,
        "explain_batch": batch,
        "model": dict(model),
        "data": {k: v for k, v in data.items() if v is not None},
        "methods": {saliency: method},
        "metrics": metrics,
    }


@dataclass(frozen=True)
class Run:
    """One benchmark of a recipe: its label (``DIR/runs/<label>``), the columns naming it in the
    tables (e.g. ``{"model": "normal", "test_set": "correlated"}``) and its runner config."""

    label: str
    keys: dict[str, str]
    config: dict[str, Any]


def model_runs(cfg: Any, data: Mapping[str, Any], masks: Sequence[str]) -> list[Run]:
    """One benchmark per ``[models.<label>]`` of `cfg` on `data`, scoring `masks`."""
    return [Run(label, {"model": label}, benchmark_config(model, data, masks, cfg["saliency"], batch=cfg["batch"],
                                                          name=label))
            for label, model in cfg["models"].items()]


def schema(saliency: str, **sections: tuple[tuple[type, ...], Any]) -> dict[str, tuple[tuple[type, ...], Any]]:
    """A recipe's config schema: the saliency setting (default `saliency`), the batch size, `sections`."""
    return {"saliency": ((str,), saliency), "batch": ((int,), 64), **sections}


def run_all(ctx: StepContext, runs: Sequence[Run]) -> pd.DataFrame:
    """Run each benchmark through the runner and write the table ``model_sizes`` (parameters of each
    run's model); returns the `per_image` rows of all runs with the runs' keys in front."""
    from xaibench.runner import parse_config
    from xaibench.runner.shard import get_context

    frames, sizes = [], []
    for run in runs:
        ctx.log(f"{run.label}: {run.config['model']['spec']} on {run.config['data']['spec']} "
                f"({run.config['data']['split']})")
        frame = per_image(ctx.run_benchmark(run.label, run.config), run.config["data"])
        for i, (key, value) in enumerate(run.keys.items()):
            frame.insert(i, key, value)
        frames.append(frame)
        raw = {"seed": ctx.seed(run.label), "device": ctx.cfg.device, **run.config}  # as run_benchmark: cached
        model = get_context(parse_config(raw)).model
        sizes.append({**run.keys, "parameters": sum(p.numel() for p in model.parameters())})
    ctx.write_table("model_sizes", pd.DataFrame(sizes))
    return pd.concat(frames, ignore_index=True)


def validate_benchmark(config: Mapping[str, Any]) -> None:
    """Check a runner config built by `benchmark_config` (names, parameters) before anything runs."""
    from xaibench.runner import parse_config

    parse_config(config)


def per_image(run_dir: str | Path, data: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per (image, mask) of a run made from `benchmark_config`; `data`: its [data] table as
    the data set is found now (default: as the run recorded it; a moved experiment's paths differ).

    Columns: image_id, image_index, label, prediction, correct, mask, iou, gtc, sc, pg, case,
    nan_reason, model_spec, model_hash, dataset_spec, dataset_split.
    """
    from xaibench.runner import layout
    from xaibench.store import load_manifest, load_results

    rows = load_results(run_dir)
    rows[["kind", "mask"]] = rows["metric"].str.split("_", n=1, expand=True)
    keys = ["image_id", "image_index", "label", "prediction", "correct", "mask"]
    wide = rows.pivot(index=keys, columns="kind", values="score").reset_index()
    iou = rows[rows["kind"] == "iou"]
    reasons = iou.set_index(["image_id", "mask"])["nan_reason"]
    wide["nan_reason"] = [reasons.get((i, m)) for i, m in zip(wide["image_id"], wide["mask"])]
    for column in ("model_spec", "model_hash", "dataset_spec", "dataset_split"):
        wide[column] = rows[column].iloc[0]

    # Cases from the maps the run cached per shard, with the same images' masks (one shard at a time).
    config = load_manifest(run_dir)["config"]
    saliency = next(iter(config["methods"]))
    dataset = _dataset(config["data"] if data is None else data)
    case: dict[tuple[str, str], str] = {}
    for shard, part in iou.groupby("shard"):
        path = layout.maps_path(run_dir, saliency, int(shard))
        maps = torch.load(path, map_location="cpu", weights_only=True)["maps"]
        images = part[part["mask"] == part["mask"].iloc[0]]  # one row per image, in the shard's order
        samples = [dataset[i] for i in images["image_index"]]
        correct = torch.tensor(images["correct"].to_numpy(dtype=bool))
        for mask in part["mask"].unique():
            masks = torch.stack([s.masks[mask] for s in samples])
            found = shared_interest_cases(maps, masks, correct, **SALIENCY[saliency][1]).labels()
            case.update({(i, mask): c or NO_CASE for i, c in zip(images["image_id"], found)})
    wide["case"] = [case[(i, m)] for i, m in zip(wide["image_id"], wide["mask"])]
    return wide


def _dataset(data: Mapping[str, Any]) -> Any:
    from xaibench.data import load_dataset

    kwargs = {"image_size": data["image_size"]} if data.get("image_size") is not None else {}
    return load_dataset(data["spec"], split=data["split"], **kwargs)


def summarise(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Explanation alignment per group of `by` (plus mask): images, accuracy, mean scores, undefined.

    Means are over the images whose score is defined; ``undefined`` counts the others (empty
    masks, constant maps), which are excluded, not scored 0. Accuracy is over all images.
    """
    out = []
    for key, part in frame.groupby([*by, "mask"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        defined = part["iou"].notna()
        row = dict(zip([*by, "mask"], key))
        row.update(images=len(part), accuracy=float(part["correct"].mean()))
        for kind in KINDS:
            values = part[kind].dropna()
            row[kind] = float(values.mean()) if len(values) else math.nan
        row["undefined"] = int((~defined).sum())
        out.append(row)
    return pd.DataFrame(out)


def correlations(summary: pd.DataFrame, scores: Sequence[str], against: str) -> pd.DataFrame:
    """Spearman correlation over the models (rows of `summary`) of each alignment score with `against`:
    columns alignment, spearman, low, high (95 % bootstrap over models), p (exact permutation test up
    to 8 models), pearson, models, verdict ("too few models to conclude" below
    `xaibench.reliability.MIN_UNITS`; see `xaibench.reliability.correlation_verdict`)."""
    from xaibench.reliability import correlation_verdict

    rows = []
    for score in scores:
        c = correlation_verdict(summary[score].to_numpy(float), summary[against].to_numpy(float), unit="models")
        rows.append({"alignment": score, "spearman": c.estimate, "low": c.low, "high": c.high, "p": c.p,
                     "pearson": summary[score].corr(summary[against]), "models": c.n, "verdict": c.text})
    return pd.DataFrame(rows)


def case_counts(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """How many images of each group (`by` plus mask) fall in each of the eight cases (and none)."""
    counts = (
        frame.groupby([*by, "mask"], sort=False)["case"].value_counts().unstack(fill_value=0)
        .reindex(columns=[*CASES, NO_CASE], fill_value=0).reset_index()
    )
    counts.columns.name = None
    return counts


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A stored table without its provenance columns (for the report)."""
    return frame.drop(columns=[c for c in PROVENANCE if c in frame.columns])


def rounded(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`frame` with float columns rounded for the report."""
    return frame.round({c: digits for c in frame.columns if frame[c].dtype.kind == "f"})


@dataclass(frozen=True)
class AlignmentRecipe:
    """One alignment recipe, declared: `recipe()` makes it a registered `Recipe`.

    - `saliency`: the default saliency setting; `sections`: the config sections beside ``saliency``
      and ``batch``; `check`: checks beyond the schema (config errors before anything runs; the
      saliency setting is checked first for every recipe);
    - `runs`: the benchmarks of the ``evaluate`` step; `annotate`: extra columns of its per-image
      rows (default none);
    - `by`: the grouping of the summary; `tables`: the summary tables from the per-image rows, by
      name (``cases``, Shared Interest's cases per `by` and mask, is written after them);
    - `intro`: the report's first paragraph; `results`: the table the report waits for; `blocks`:
      the rest of the report section (tables, and figures as data the report layer draws);
    - `before`: steps before ``evaluate`` (it needs them all); `beside`: steps after them that
      ``summarise`` also needs.
    """

    name: str
    summary: str
    example: str
    saliency: str
    sections: Schema
    check: Callable[[ExperimentConfig], None]
    runs: Callable[[StepContext], list[Run]]
    by: tuple[str, ...]
    tables: Callable[[ExperimentDir, pd.DataFrame], dict[str, pd.DataFrame]]
    intro: str
    blocks: Callable[[ExperimentDir], list[Block]]
    results: str = "alignment"
    annotate: Callable[[StepContext, pd.DataFrame], pd.DataFrame] | None = None
    before: tuple[Step, ...] = ()
    beside: tuple[Step, ...] = ()

    def validate(self, cfg: ExperimentConfig) -> None:
        check_saliency(cfg["saliency"])
        self.check(cfg)

    def evaluate(self, ctx: StepContext) -> None:
        images = run_all(ctx, self.runs(ctx))
        ctx.write_table("alignment_images", images if self.annotate is None else self.annotate(ctx, images))

    def summarise(self, ctx: StepContext) -> None:
        images = ctx.experiment.table("alignment_images")
        for name, table in self.tables(ctx.experiment, images).items():
            ctx.write_table(name, table)
        ctx.write_table("cases", case_counts(images, self.by))

    def plan(self, cfg: ExperimentConfig) -> list[Step]:
        return [*self.before, Step("evaluate", self.evaluate, needs=tuple(s.name for s in self.before)),
                *self.beside, Step("summarise", self.summarise, needs=("evaluate", *(s.name for s in self.beside)))]

    def report(self, exp: ExperimentDir) -> list[Block]:
        if not exp.has_table(self.results):
            return [Text(self.intro), Text("No results yet.")]
        return [Text(self.intro), *self.blocks(exp)]

    def recipe(self) -> Recipe:
        return Recipe(name=self.name, summary=self.summary, schema=schema(self.saliency, **self.sections),
                      plan=self.plan, report=self.report, example=self.example, validate=self.validate)


def check_runs(runs: Sequence[Run]) -> None:
    """`validate_benchmark` of every run."""
    for run in runs:
        validate_benchmark(run.config)
