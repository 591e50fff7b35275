"""Feature ranking (Bang, Boggust & Satyanarayan 2024, CelebAMask-HQ regions).

Which human-defined regions does a model rely on? Each model's saliency (Grad-CAM binarised at 0.5
by default) is scored against every region mask of the same images (CelebAMask-HQ: hair, eye,
mouth, neck, nose, skin, cloth, the paper's unions of the annotated parts), and the regions are
ranked per model by explanation alignment: mean IoU and pointing-game hit rate (rank 1 = the
region the model relies on most). Images where a region is absent (empty mask) are excluded from
that region's means and counted. Shared Interest's eight cases are counted per model and region.

Built-in stand-in (the shipped config): ``builtin:digits-regions`` (square colour = label; regions
upper strokes, lower strokes, square, background) with the two built-in digit CNNs: the normal
model ranks the strokes first, the shortcut model the square.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

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

DATA = {**al.DATA, "regions": ((list,), REQUIRED)}


def _runs(cfg: ExperimentConfig) -> list[al.Run]:
    data = section("[data].", cfg["data"], DATA)
    regions = data.pop("regions")
    return al.model_runs(cfg, data, regions)


def validate(cfg: ExperimentConfig) -> None:
    al.check_saliency(cfg["saliency"])
    al.check_models(cfg["models"])
    regions = section("[data].", cfg["data"], DATA)["regions"]
    al.check_names(regions, "[data].regions")
    for run in _runs(cfg):
        al.validate_benchmark(run.config)


def evaluate(ctx: StepContext) -> None:
    ctx.write_table("alignment_images", al.run_all(ctx, _runs(ctx.cfg)))


def summarise(ctx: StepContext) -> None:
    images = ctx.experiment.table("alignment_images")
    summary = al.summarise(images, ["model"]).rename(columns={"mask": "region"})
    for score in ("iou", "pg"):
        summary[f"rank_{score}"] = (
            summary.groupby("model")[score].rank(ascending=False, method="min").astype("Int64")
        )
    ctx.write_table("ranking", summary.sort_values(["model", "rank_iou"], kind="stable"))
    ctx.write_table("cases", al.case_counts(images, ["model"]))


def plan(cfg: ExperimentConfig) -> list[Step]:
    return al.evaluate_then_summarise(evaluate, summarise)


def report(exp: ExperimentDir) -> list[Block]:
    blocks: list[Block] = [Text(
        "The human-defined regions each model relies on, ranked by explanation alignment: mean Shared Interest "
        "IoU of the binarised saliency with the region (rank_iou) and pointing-game hit rate (rank_pg), for the "
        "predicted class. Images where a region is absent are excluded from its means (undefined)."
    )]
    if not exp.has_table("ranking"):
        return blocks + [Text("No results yet.")]
    ranking = exp.table("ranking")
    columns = ["model", "region", "rank_iou", "iou", "rank_pg", "pg", "gtc", "sc", "accuracy", "images", "undefined"]
    blocks.append(Table(al.rounded(ranking[columns]), "Regions per model, most relied on first (by IoU)."))
    blocks.append(Figure(_bars(ranking), "Explanation alignment (IoU) per region and model."))
    blocks.append(Table(al.shown(exp.table("cases")).rename(columns={"mask": "region"}),
                        "Shared Interest's eight recurring cases per model and region: images per case."))
    return blocks


def _bars(ranking: pd.DataFrame) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ranking.pivot(index="region", columns="model", values="iou")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("EA_IoU")
    fig.tight_layout()
    return fig


RECIPE = Recipe(
    name="feature-ranking",
    summary="feature ranking: which human-defined regions each model relies on, by IoU and pointing game",
    schema=al.schema("gradcam", models=((dict,), REQUIRED), data=((dict,), REQUIRED)),
    plan=plan,
    report=report,
    example="experiment-feature-ranking.toml",
    validate=validate,
)
