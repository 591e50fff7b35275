"""Spurious correlation (Bang, Boggust & Satyanarayan 2024, coloured-square MNIST).

A normal model and a shortcut model (trained where a coloured square gives the class away) are
scored on a test set where the square's colour matches the label (``correlated``) and one where it
is random (``uncorrelated``), against two human explanations: the digit strokes and the square.
The paper's table has one row per model x test set x ground truth (8 rows) with accuracy,
explanation alignment by IoU (vanilla gradients binarised at mean + 1 std) and by pointing game
(raw gradient map). Its pattern: the normal model aligns with the digit and not the square, the
shortcut model the reverse, and the shortcut model's accuracy falls on uncorrelated data.

Built-in stand-in (the shipped config): ``builtin:digits-spurious`` (scikit-learn's digits with a
coloured 6x6 square) with ``builtin:digits-cnn`` and ``builtin:digits-spurious-cnn``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from xaibench.errors import InputError
from xaibench.experiments import _alignment as al
from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Recipe,
    Step,
    StepContext,
    Table,
    Text,
)
from xaibench.runner.config import _section

DATA = {
    "spec": ((str,), REQUIRED),
    "masks": ((list,), ["digit", "square"]),
    "n": ((int,), None),
    "image_size": ((int,), None),
}


def _data(cfg: ExperimentConfig) -> dict[str, Any]:
    return _section("[data].", cfg["data"], DATA)


def _runs(cfg: ExperimentConfig) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(run label, model label, test set label, runner config) of every model x test set."""
    data = _data(cfg)
    out = []
    for model_label, model in cfg["models"].items():
        for test_label, split in cfg["test_sets"].items():
            run_data = {"spec": data["spec"], "split": split, "n": data["n"], "image_size": data["image_size"]}
            config = al.benchmark_config(model, run_data, data["masks"], cfg["saliency"], batch=cfg["batch"],
                                         name=f"{model_label} on {test_label}")
            out.append((f"{model_label}-{test_label}", model_label, test_label, config))
    return out


def validate(cfg: ExperimentConfig) -> None:
    al.check_saliency(cfg["saliency"])
    al.check_models(cfg["models"])
    if not cfg["test_sets"] or not all(isinstance(v, str) for v in cfg["test_sets"].values()):
        raise InputError("config [test_sets]: label = \"split\" entries are required, e.g. correlated = \"correlated\"")
    masks = _data(cfg)["masks"]
    if not masks or not all(isinstance(m, str) for m in masks):
        raise InputError(f"config [data].masks: a list of mask names is required, got {masks!r}")
    for _, _, _, config in _runs(cfg):
        al.validate_benchmark(config)


def evaluate(ctx: StepContext) -> None:
    frames = []
    for label, model_label, test_label, config in _runs(ctx.cfg):
        ctx.log(f"{label}: {config['model']['spec']} on split {config['data']['split']!r}")
        frame = al.per_image(ctx.run_benchmark(label, config))
        frame.insert(0, "test_set", test_label)
        frame.insert(0, "model", model_label)
        frames.append(frame)
    ctx.write_table("alignment_images", pd.concat(frames, ignore_index=True))


def summarise(ctx: StepContext) -> None:
    images = ctx.experiment.table("alignment_images")
    ctx.write_table("alignment", al.summarise(images, ["model", "test_set"]))
    ctx.write_table("cases", al.case_counts(images, ["model", "test_set"]))


def plan(cfg: ExperimentConfig) -> list[Step]:
    return al.evaluate_then_summarise(evaluate, summarise)


def report(exp: ExperimentDir) -> list[Block]:
    blocks: list[Block] = [Text(
        "Explanation alignment of each model with each human explanation on each test set: accuracy, mean "
        "Shared Interest IoU of the binarised saliency (EA_IoU) and pointing-game hit rate (EA_PG), for the "
        "predicted class. A model that uses the shortcut aligns with the square, not the digit, and loses its "
        "accuracy where the square's colour is random."
    )]
    if not exp.has_table("alignment"):
        return blocks + [Text("No results yet.")]
    summary = exp.table("alignment")
    table = summary[["model", "test_set", "mask", "accuracy", "iou", "pg", "gtc", "sc", "images", "undefined"]]
    table = al.rounded(table.rename(columns={"mask": "ground truth", "iou": "EA_IoU", "pg": "EA_PG"}))
    blocks.append(Table(table, "One row per model x test set x ground truth (the paper's table); gtc / sc: "
                        "mean ground-truth / saliency coverage; undefined: images excluded (empty mask or constant map)."))
    cases = al.shown(exp.table("cases"))
    blocks.append(Table(cases, "Shared Interest's eight recurring cases: images per case (coverages >= 0.5 count as high)."))
    return blocks


RECIPE = Recipe(
    name="spurious",
    summary="spurious correlation: alignment of a normal and a shortcut model with the digit and the square, "
            "on correlated and uncorrelated test sets",
    schema={
        "saliency": ((str,), "vanilla_gradient"),
        "batch": ((int,), 64),
        "models": ((dict,), REQUIRED),
        "test_sets": ((dict,), {"correlated": "correlated", "uncorrelated": "uncorrelated"}),
        "data": ((dict,), REQUIRED),
    },
    plan=plan,
    report=report,
    example="experiment-spurious.toml",
    validate=validate,
)
