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


from xaibench.config import section
from xaibench.experiments import alignment as al
from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Figure,
    Recipe,
    Step,
    StepContext,
    Table,
    Text,
)

DATA = {**al.DATA, "mask": ((str,), REQUIRED)}


def _runs(cfg: ExperimentConfig) -> list[al.Run]:
    data = section("[data].", cfg["data"], DATA)
    mask = data.pop("mask")
    return al.model_runs(cfg, data, [mask])


def validate(cfg: ExperimentConfig) -> None:
    al.check_saliency(cfg["saliency"])
    al.check_models(cfg["models"])
    for run in _runs(cfg):
        al.validate_benchmark(run.config)


def evaluate(ctx: StepContext) -> None:
    ctx.write_table("alignment_images", al.run_all(ctx, _runs(ctx.cfg)))


def summarise(ctx: StepContext) -> None:
    images = ctx.experiment.table("alignment_images")
    sizes = al.shown(ctx.experiment.table("model_sizes"))
    summary = al.summarise(images, ["model"]).merge(sizes, on="model")
    ctx.write_table("alignment", summary)
    ctx.write_table("cases", al.case_counts(images, ["model"]))


def plan(cfg: ExperimentConfig) -> list[Step]:
    return al.evaluate_then_summarise(evaluate, summarise)


def report(exp: ExperimentDir) -> list[Block]:
    blocks: list[Block] = [Text(
        "Accuracy and explanation alignment of each model on one data set: mean Shared Interest IoU, "
        "ground-truth coverage (gtc), saliency coverage (sc) of the binarised saliency and pointing-game hit "
        "rate (pg), for the predicted class. Images with an empty mask are excluded from the alignment means "
        "and counted (undefined)."
    )]
    if not exp.has_table("alignment"):
        return blocks + [Text("No results yet.")]
    summary = exp.table("alignment")
    columns = ["model", "parameters", "images", "accuracy", "iou", "gtc", "sc", "pg", "undefined"]
    blocks.append(Table(al.rounded(summary[columns]), "One row per model."))
    blocks.append(Table(al.rounded(al.correlations(summary, ("iou", "pg"), "accuracy")),
                        "Does alignment go with accuracy across the models? Spearman with its 95 % bootstrap "
                        "interval over the models and permutation p, n = models; below 5 models the verdict is "
                        "'too few models to conclude'."))
    for score, name in (("iou", "EA_IoU"), ("pg", "EA_PG")):
        fig = al.scatter(summary, score, "accuracy", size="parameters", xlabel=name, ylabel="accuracy")
        blocks.append(Figure(fig, f"{name} against accuracy; marker area ~ sqrt(parameters)."))
    blocks.append(Table(al.shown(exp.table("cases")), "Shared Interest's eight recurring cases: images per case."))
    return blocks


RECIPE = Recipe(
    name="model-comparison",
    summary="model comparison: accuracy and explanation alignment of many models on one data set with masks",
    schema=al.schema("gradcam", models=((dict,), REQUIRED), data=((dict,), REQUIRED)),
    plan=plan,
    report=report,
    example="experiment-model-comparison.toml",
    validate=validate,
)
