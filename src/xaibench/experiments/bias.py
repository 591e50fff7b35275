"""Bias detection (Bang, Boggust & Satyanarayan 2024, CelebA smiling vs hair colour).

A task (smiling) is confounded with a group attribute (black vs blond hair) in a *biased* training
set: each group comes almost always with one label (black hair & smiling, blond hair & not
smiling: ``major`` images per such group, ``minor`` per other group), while a *balanced* set has
the same number of images in each of the four (group, label) cells. One model is trained on each
with the project's trainer, then both are scored on a biased and a balanced test set: accuracy
and explanation alignment (Grad-CAM binarised at 0.5, pointing game on the raw map) with the
region the task should use (the mouth box) and, where the data set has one, the bias region,
overall and per (group, label). A biased model keeps its accuracy on biased data, loses it on the
minority groups, and its saliency leaves the task region.

Steps: ``sample`` (seeded subsets, written as ``subset:`` data sets, drawn independently for the
biased and the balanced sets), ``train`` (two models into ``DIR/models/<setting>``, resumable),
``evaluate`` (four runner benchmarks), ``summarise``.

Built-in stand-in (the shipped config): ``builtin:digits-tint`` (label: digit 5-9 vs 0-4; group:
a warm or cool frame; task region ``digit``, bias region ``frame``) with the built-in digit CNN.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from xaibench.config import section
from xaibench.errors import InputError
from xaibench.experiments import alignment as al
from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Plot,
    Step,
    StepContext,
    Table,
    located_path,
    stored_path,
)

DATA = {
    "spec": ((str,), REQUIRED),
    "train_split": ((str,), "train"),
    "test_split": ((str,), "test"),
    "groups": ((list,), REQUIRED),
    "majority": ((dict,), REQUIRED),
    "masks": ((list,), REQUIRED),
    "image_size": ((int,), None),
}
SIZES = {"major": ((int,), REQUIRED), "minor": ((int,), REQUIRED), "balanced": ((int,), REQUIRED)}
SETTINGS = ("biased", "balanced")
BY = ("model", "test_set")
SUBSETS = "subsets.json"


def _data(cfg: ExperimentConfig) -> dict[str, Any]:
    return section("[data].", cfg["data"], DATA)


def _sizes(cfg: ExperimentConfig, part: str) -> dict[str, int]:
    return section(f"[sizes.{part}].", cfg["sizes"].get(part, {}), SIZES)


def _train_config(cfg: ExperimentConfig, subsets: str, setting: str) -> dict[str, Any]:
    data = _data(cfg)
    train = dict(cfg["train"])
    table = {"spec": f"subset:{subsets}", "split": f"train-{setting}", "image_size": data["image_size"],
             **train.pop("data", {})}
    return {"seed": cfg.seed, "device": cfg.device, **train, "data": table}


def _check(cfg: ExperimentConfig) -> None:
    from xaibench.training import parse_train_config

    data = _data(cfg)
    al.check_names(data["groups"], "[data].groups")
    al.check_names(data["masks"], "[data].masks")
    if sorted(data["majority"]) != sorted(data["groups"]) or not all(v in (0, 1) for v in data["majority"].values()):
        raise InputError(f"config [data].majority: one label (0 or 1) per group of {data['groups']}, "
                         f"got {data['majority']!r}")
    for part in ("train", "test"):
        sizes = _sizes(cfg, part)
        if min(sizes.values()) < 1:
            raise InputError(f"config [sizes.{part}]: every count must be >= 1, got {sizes}")
    unknown = sorted(set(cfg["sizes"]) - {"train", "test"})
    if unknown:
        raise InputError(f"config [sizes]: unknown table {unknown[0]!r}; allowed: train, test")
    if "split" in cfg["train"].get("data", {}) or "spec" in cfg["train"].get("data", {}):
        raise InputError("config [train.data]: spec and split are set by the recipe (the sampled subsets)")
    parse_train_config(_train_config(cfg, "subsets.json", "biased"))
    model = {"spec": "builtin:digits-cnn"}
    al.validate_benchmark(al.benchmark_config(model, {"spec": "builtin:digits", "split": "test"}, data["masks"],
                                              cfg["saliency"]))


def _pool(cfg: ExperimentConfig, split: str) -> pd.DataFrame:
    """id, label and group of every image of `split` that belongs to exactly one group."""
    from xaibench.data import load_dataset

    data = _data(cfg)
    dataset = load_dataset(data["spec"], split=split)
    if not hasattr(dataset, "attributes"):
        raise InputError(f"data set {data['spec']!r} has no per-image attributes to group by (CelebA and "
                         "builtin:digits-tint have)")
    table = dataset.attributes()
    missing = [g for g in data["groups"] if g not in table.columns]
    if missing:
        raise InputError(f"config [data].groups: {data['spec']!r} has no attribute {missing[0]!r}; "
                         f"known: {', '.join(c for c in table.columns if c != 'id')}")
    member = table[data["groups"]].to_numpy() > 0
    labels = getattr(dataset, "labels", None)
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else [s.label for s in dataset]
    pool = pd.DataFrame({"index": range(len(table)), "id": table["id"], "label": labels})
    pool["group"] = [data["groups"][row.argmax()] if row.sum() == 1 else None for row in member]
    return pool.dropna(subset=["group"])


def _draw(pool: pd.DataFrame, counts: dict[tuple[str, int], int], seed: int, where: str) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for (group, label), n in counts.items():
        cell = pool[(pool["group"] == group) & (pool["label"] == label)]["index"].tolist()
        if len(cell) < n:
            raise InputError(f"{where}: {n} images wanted with {group} and label {label}, the split has {len(cell)}; "
                             "lower [sizes]")
        chosen += [cell[i] for i in torch.randperm(len(cell), generator=gen)[:n].tolist()]
    return chosen


def sample(ctx: StepContext) -> None:
    from xaibench.data.subset import write_subsets

    data = _data(ctx.cfg)
    splits, rows = {}, []
    for part, split in (("train", data["train_split"]), ("test", data["test_split"])):
        pool, sizes = _pool(ctx.cfg, split), _sizes(ctx.cfg, part)
        cells = [(g, label) for g in data["groups"] for label in (0, 1)]
        biased = {(g, y): sizes["major" if data["majority"][g] == y else "minor"] for g, y in cells}
        balanced = {cell: sizes["balanced"] for cell in cells}
        for setting, counts in (("biased", biased), ("balanced", balanced)):
            name = f"{part}-{setting}"
            splits[name] = (split, _draw(pool, counts, ctx.seed("sample", name), f"[sizes.{part}] {setting}"))
            rows += [{"subset": name, "group": g, "label": y, "images": n} for (g, y), n in counts.items()]
    write_subsets(ctx.folder / SUBSETS, data["spec"], splits)
    ctx.write_table("subsets", pd.DataFrame(rows))


def train_models(ctx: StepContext) -> None:
    from xaibench.training import train

    subsets = (ctx.experiment.folder("sample") / SUBSETS).resolve()
    rows = []
    for setting in SETTINGS:
        ctx.log(f"training on the {setting} set")
        result = train(_train_config(ctx.cfg, str(subsets), setting), ctx.root.resolve() / "models" / setting,
                       resume=True, progress=False)
        rows.append({"setting": setting, "model_path": stored_path(ctx.root, result.model_path), "best_epoch": result.best_epoch,
                     "train_config_hash": result.config_hash})
    ctx.write_table("models", pd.DataFrame(rows))


def _runs(ctx: StepContext) -> list[al.Run]:
    """One benchmark per model x test set: the trained models on the sampled test subsets."""
    data = _data(ctx.cfg)
    subsets = (ctx.experiment.folder("sample") / SUBSETS).resolve()
    models = ctx.experiment.table("models").set_index("setting")["model_path"]
    runs = []
    for model in SETTINGS:
        for test in SETTINGS:
            run_data = {"spec": f"subset:{subsets}", "split": f"test-{test}", "image_size": data["image_size"]}
            model_table = {"spec": f"file:{located_path(ctx.root, models[model])}"}
            config = al.benchmark_config(model_table, run_data, data["masks"], ctx.cfg["saliency"],
                                         batch=ctx.cfg["batch"], name=f"{model} model, {test} test")
            runs.append(al.Run(f"{model}-model-{test}-test", {"model": model, "test_set": test}, config))
    return runs


def _with_groups(ctx: StepContext, images: pd.DataFrame) -> pd.DataFrame:
    """The per-image rows with each image's group."""
    groups = _pool(ctx.cfg, _data(ctx.cfg)["test_split"]).set_index("id")["group"]
    images.insert(2, "group", images["image_id"].map(groups))
    return images


def _tables(exp: ExperimentDir, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"alignment": al.summarise(images, BY), "alignment_groups": al.summarise(images, [*BY, "group", "label"])}


def _blocks(exp: ExperimentDir) -> list[Block]:
    columns = ["model", "test_set", "mask", "accuracy", "iou", "pg", "gtc", "sc", "images", "undefined"]
    groups = exp.table("alignment_groups")
    groups = groups[groups["mask"] == exp.config["data"]["masks"][0]]
    return [
        Table(al.rounded(exp.table("alignment")[columns]), "Overall, per model x test set x mask."),
        Plot("alignment_bars", exp.table("alignment"), "Explanation alignment per model and test set, one bar per "
             "region (task and bias)."),
        Table(al.rounded(groups[["model", "test_set", "group", "label", "images", "accuracy", "iou", "pg"]]),
              "Per (group, label) with the task region: minority cells expose the biased model."),
        Table(al.shown(exp.table("cases")), "Shared Interest's eight recurring cases: images per case."),
    ]


RECIPE = al.AlignmentRecipe(
    name="bias",
    summary="bias detection: group-wise accuracy and alignment with the task region of a model trained on "
            "biased data and one trained on balanced data",
    example="experiment-bias.toml",
    saliency="gradcam",
    sections={"data": ((dict,), REQUIRED), "sizes": ((dict,), REQUIRED), "train": ((dict,), REQUIRED)},
    check=_check,
    runs=_runs,
    annotate=_with_groups,
    by=BY,
    tables=_tables,
    intro="A model trained where the group attribute predicts the label (biased) and one trained on balanced "
          "data, each scored on a biased and a balanced test set: accuracy and explanation alignment (IoU of the "
          "binarised saliency, pointing game) with the task region and the bias region, for the predicted class.",
    blocks=_blocks,
    before=(Step("sample", sample), Step("train", train_models, needs=("sample",))),
).recipe()
