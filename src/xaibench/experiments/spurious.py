"""Spurious correlation (Bang, Boggust & Satyanarayan 2024, coloured-square MNIST).

A normal model and a shortcut model (trained where a coloured square gives the class away) are
scored on a test set where the square's colour matches the label (``correlated``) and the paper's
``uncorrelated`` one, where every class has another class's colour (one shuffled palette; the
per-image random colour is the split ``random_colour``), against two human explanations: the
digit strokes and the square.
The paper's table has one row per model x test set x ground truth (8 rows) with accuracy,
explanation alignment by IoU (vanilla gradients binarised at mean + 1 std) and by pointing game
(raw gradient map). Its pattern: the normal model aligns with the digit and not the square, the
shortcut model the reverse, and the shortcut model's accuracy falls on uncorrelated data.

Built-in stand-in (the shipped config): ``builtin:digits-spurious`` (scikit-learn's digits with a
coloured 6x6 square) with ``builtin:digits-cnn`` and ``builtin:digits-spurious-cnn``.
"""

from __future__ import annotations

from typing import Any

from xaibench.config import section
from xaibench.errors import InputError
from xaibench.experiments import alignment as al
from xaibench.experiments.base import REQUIRED, Block, ExperimentConfig, ExperimentDir, Plot, Table

DATA = {**{k: v for k, v in al.DATA.items() if k != "split"}, "masks": ((list,), ["digit", "square"])}
BY = ("model", "test_set")


def _data(cfg: ExperimentConfig) -> dict[str, Any]:
    return section("[data].", cfg["data"], DATA)


def _runs(cfg: ExperimentConfig) -> list[al.Run]:
    """One benchmark per model x test set."""
    data = _data(cfg)
    masks = data.pop("masks")
    out = []
    for model_label, model in cfg["models"].items():
        for test_label, split in cfg["test_sets"].items():
            config = al.benchmark_config(model, {**data, "split": split}, masks, cfg["saliency"], batch=cfg["batch"],
                                         name=f"{model_label} on {test_label}")
            out.append(al.Run(f"{model_label}-{test_label}", {"model": model_label, "test_set": test_label}, config))
    return out


def _check(cfg: ExperimentConfig) -> None:
    al.check_models(cfg["models"])
    if not cfg["test_sets"] or not all(isinstance(v, str) for v in cfg["test_sets"].values()):
        raise InputError("config [test_sets]: label = \"split\" entries are required, e.g. correlated = \"correlated\"")
    al.check_names(_data(cfg)["masks"], "[data].masks")
    al.check_runs(_runs(cfg))


def _blocks(exp: ExperimentDir) -> list[Block]:
    summary = exp.table("alignment")
    table = summary[["model", "test_set", "mask", "accuracy", "iou", "pg", "gtc", "sc", "images", "undefined"]]
    table = al.rounded(table.rename(columns={"mask": "ground truth", "iou": "EA_IoU", "pg": "EA_PG"}))
    return [
        Table(table, "One row per model x test set x ground truth (the paper's table); gtc / sc: mean ground-truth / "
              "saliency coverage; undefined: images excluded (empty mask or constant map)."),
        Plot("alignment_bars", summary, "Explanation alignment per model and test set, one bar per human explanation."),
        Table(al.shown(exp.table("cases")), "Shared Interest's eight recurring cases: images per case (coverages >= "
              "0.5 count as high)."),
    ]


RECIPE = al.AlignmentRecipe(
    name="spurious",
    summary="spurious correlation: alignment of a normal and a shortcut model with the digit and the square, "
            "on correlated and uncorrelated test sets",
    example="experiment-spurious.toml",
    saliency="vanilla_gradient",
    sections={"models": ((dict,), REQUIRED), "data": ((dict,), REQUIRED),
              "test_sets": ((dict,), {"correlated": "correlated", "uncorrelated": "uncorrelated"})},
    check=_check,
    runs=lambda ctx: _runs(ctx.cfg),
    by=BY,
    tables=lambda exp, images: {"alignment": al.summarise(images, BY)},
    intro="Explanation alignment of each model with each human explanation on each test set: accuracy, mean "
          "Shared Interest IoU of the binarised saliency (EA_IoU) and pointing-game hit rate (EA_PG), for the "
          "predicted class. A model that uses the shortcut aligns with the square, not the digit, and loses its "
          "accuracy where the square's colour is random.",
    blocks=_blocks,
).recipe()
