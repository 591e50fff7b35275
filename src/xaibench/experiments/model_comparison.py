"""Model comparison (Bang, Boggust & Satyanarayan 2024, ImageNet models).

Models of any kind (``torchvision:``, ``timm:``, ``builtin:``, ``file:`` specs) on one data set
with human masks or boxes: accuracy and explanation alignment per model (mean Shared Interest IoU,
ground-truth coverage, saliency coverage and pointing game of the predicted class), images with an
empty mask excluded from the alignment means and counted, and Shared Interest's eight cases per
model. The report plots alignment against accuracy with marker area ~ sqrt(parameters): models
of similar accuracy can differ widely in what they look at.

Built-in stand-in (the shipped config): ``builtin:digits`` with its ``digit`` masks and the two
built-in digit CNNs.
"""

from __future__ import annotations

import pandas as pd

from xaibench.config import section
from xaibench.experiments import alignment as al
from xaibench.experiments.base import REQUIRED, Block, ExperimentConfig, ExperimentDir, Plot, Table

DATA = {**al.DATA, "mask": ((str,), REQUIRED)}


def _runs(cfg: ExperimentConfig) -> list[al.Run]:
    data = section("[data].", cfg["data"], DATA)
    mask = data.pop("mask")
    return al.model_runs(cfg, data, [mask])


def _check(cfg: ExperimentConfig) -> None:
    al.check_models(cfg["models"])
    al.check_runs(_runs(cfg))


def _summary(exp: ExperimentDir, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"alignment": al.summarise(images, ["model"]).merge(al.shown(exp.table("model_sizes")), on="model")}


def _blocks(exp: ExperimentDir) -> list[Block]:
    summary = exp.table("alignment")
    columns = ["model", "parameters", "images", "accuracy", "iou", "gtc", "sc", "pg", "undefined"]
    return [
        Table(al.rounded(summary[columns]), "One row per model."),
        Table(al.rounded(al.correlations(summary, ("iou", "pg"), "accuracy")),
              "Does alignment go with accuracy across the models? Spearman with its 95 % bootstrap interval over "
              "the models and permutation p, n = models; below 5 models the verdict is 'too few models to "
              "conclude'."),
        *(Plot("scatter", summary, f"{name} against accuracy; marker area ~ sqrt(parameters).",
               {"x": score, "y": "accuracy", "size": "parameters", "xlabel": name, "ylabel": "accuracy"})
          for score, name in (("iou", "EA_IoU"), ("pg", "EA_PG"))),
        Table(al.shown(exp.table("cases")), "Shared Interest's eight recurring cases: images per case."),
    ]


RECIPE = al.AlignmentRecipe(
    name="model-comparison",
    summary="model comparison: accuracy and explanation alignment of many models on one data set with masks",
    example="experiment-model-comparison.toml",
    saliency="gradcam",
    sections={"models": ((dict,), REQUIRED), "data": ((dict,), REQUIRED)},
    check=_check,
    runs=lambda ctx: _runs(ctx.cfg),
    by=("model",),
    tables=_summary,
    intro="Accuracy and explanation alignment of each model on one data set: mean Shared Interest IoU, "
          "ground-truth coverage (gtc), saliency coverage (sc) of the binarised saliency and pointing-game hit "
          "rate (pg), for the predicted class. Images with an empty mask are excluded from the alignment means "
          "and counted (undefined).",
    blocks=_blocks,
).recipe()
