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

import pandas as pd

from xaibench.config import section
from xaibench.experiments import alignment as al
from xaibench.experiments.base import REQUIRED, Block, ExperimentConfig, ExperimentDir, Plot, Table

DATA = {**al.DATA, "regions": ((list,), REQUIRED)}


def _runs(cfg: ExperimentConfig) -> list[al.Run]:
    data = section("[data].", cfg["data"], DATA)
    regions = data.pop("regions")
    return al.model_runs(cfg, data, regions)


def _check(cfg: ExperimentConfig) -> None:
    al.check_models(cfg["models"])
    al.check_names(section("[data].", cfg["data"], DATA)["regions"], "[data].regions")
    al.check_runs(_runs(cfg))


def _ranking(exp: ExperimentDir, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    summary = al.summarise(images, ["model"]).rename(columns={"mask": "region"})
    for score in ("iou", "pg"):
        summary[f"rank_{score}"] = (
            summary.groupby("model")[score].rank(ascending=False, method="min").astype("Int64")
        )
    return {"ranking": summary.sort_values(["model", "rank_iou"], kind="stable")}


def _blocks(exp: ExperimentDir) -> list[Block]:
    ranking = exp.table("ranking")
    columns = ["model", "region", "rank_iou", "iou", "rank_pg", "pg", "gtc", "sc", "accuracy", "images", "undefined"]
    return [
        Table(al.rounded(ranking[columns]), "Regions per model, most relied on first (by IoU)."),
        Plot("bars", ranking.pivot(index="region", columns="model", values="iou"),
             "Explanation alignment (IoU) per region and model.", {"ylabel": "EA_IoU"}),
        Table(al.shown(exp.table("cases")).rename(columns={"mask": "region"}),
              "Shared Interest's eight recurring cases per model and region: images per case."),
    ]


RECIPE = al.AlignmentRecipe(
    name="feature-ranking",
    summary="feature ranking: which human-defined regions each model relies on, by IoU and pointing game",
    example="experiment-feature-ranking.toml",
    saliency="gradcam",
    sections={"models": ((dict,), REQUIRED), "data": ((dict,), REQUIRED)},
    check=_check,
    runs=lambda ctx: _runs(ctx.cfg),
    by=("model",),
    tables=_ranking,
    intro="The human-defined regions each model relies on, ranked by explanation alignment: mean Shared Interest "
          "IoU of the binarised saliency with the region (rank_iou) and pointing-game hit rate (rank_pg), for the "
          "predicted class. Images where a region is absent are excluded from its means (undefined).",
    blocks=_blocks,
    results="ranking",
).recipe()
