"""Transfer (Bang, Boggust & Satyanarayan 2024, ImageNet models -> CIFAR-100 1-shot).

Does explanation alignment on a source data set predict how well a model transfers? For each model:
its alignment on the source (mean Shared Interest IoU and pointing game of the predicted class
against the source's masks, through the runner) and its n-shot accuracy on a target data set: the
model's outputs (logits) of `shots` images per target class (drawn with the seed) train a
scikit-learn logistic regression (``max_iter=1000``), scored on every other target image, as the
paper's CIFAR-100 experiment. The report plots 1-shot accuracy against alignment (marker area ~
sqrt(parameters)) and gives the rank correlation over the models with its interval, permutation p
and n (`xaibench.reliability.correlation_verdict`: too few models to conclude below 5).

Models are specs (``[models.<label>] spec = ...``) or trained by the project's trainer
(``[models.<label>.train]``: a trainer config, into ``DIR/models/<label>``, resumable).

Built-in stand-in (the shipped config): source ``builtin:digits-low`` (digits 0-4, mask ``digit``),
target ``builtin:digits-high`` (digits 5-9), three digit CNNs trained on the source: fully, for one
epoch, and on permuted labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xaibench.config import section
from xaibench.errors import InputError
from xaibench.experiments import alignment as al
from xaibench.experiments.base import REQUIRED, Block, ExperimentConfig, ExperimentDir, Plot, Step, StepContext, Table

SOURCE = {**al.DATA, "mask": ((str,), REQUIRED)}
TARGET = {
    "spec": ((str,), REQUIRED),
    "split": ((str,), "test"),
    "shots": ((int,), 1),
    "image_size": ((int,), None),
}


def _trained(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """label -> trainer config of the models the recipe trains."""
    return {label: {"seed": cfg.seed, "device": cfg.device, **m["train"]}
            for label, m in cfg["models"].items() if "train" in m}


def _model(cfg: ExperimentConfig, label: str, root: Any) -> dict[str, Any]:
    """The runner's [model] table of model `label` (a trained model: its file)."""
    table = dict(cfg["models"][label])
    if "train" in table:
        return {"spec": f"file:{Path(root).resolve() / 'models' / label / 'model.pt'}"}
    return table


def _check(cfg: ExperimentConfig) -> None:
    from xaibench.training import parse_train_config

    source = section("[source].", cfg["source"], SOURCE)
    target = section("[target].", cfg["target"], TARGET)
    if target["shots"] < 1:
        raise InputError(f"config [target].shots: must be >= 1, got {target['shots']}")
    models = cfg["models"]
    if not models:
        raise InputError("config [models]: at least one model is required")
    for label, table in models.items():
        if isinstance(table, dict) and "train" in table:
            if set(table) != {"train"}:
                raise InputError(f"config [models.{label}]: give either spec = \"...\" or a "
                                 f"[models.{label}.train] table")
            parse_train_config(_trained(cfg)[label])
        else:
            al.check_models({label: table})
    if len(models) < 2:
        raise InputError("config [models]: at least two models are needed to relate alignment and transfer")
    data = {k: source[k] for k in ("spec", "split", "n", "image_size")}
    al.validate_benchmark(al.benchmark_config({"spec": "builtin:digits-cnn"}, data, [source["mask"]], cfg["saliency"]))


def train_models(ctx: StepContext) -> None:
    from xaibench.training import train

    rows = []
    for label, config in _trained(ctx.cfg).items():
        ctx.log(f"training {label}")
        result = train(config, Path(ctx.root).resolve() / "models" / label, resume=True, progress=False)
        rows.append({"model": label, "model_path": str(result.model_path), "best_epoch": result.best_epoch,
                     "train_config_hash": result.config_hash})
    ctx.write_table("trained_models", pd.DataFrame(rows, columns=["model", "model_path", "best_epoch",
                                                                  "train_config_hash"]))


def _runs(ctx: StepContext) -> list[al.Run]:
    """One benchmark per model on the source."""
    source = section("[source].", ctx.cfg["source"], SOURCE)
    mask = source.pop("mask")
    return [al.Run(label, {"model": label},
                   al.benchmark_config(_model(ctx.cfg, label, ctx.root), source, [mask], ctx.cfg["saliency"],
                                       batch=ctx.cfg["batch"], name=label))
            for label in ctx.cfg["models"]]


@torch.no_grad()
def outputs(model: torch.nn.Module, dataset: Any, batch: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs [N, K] (on the CPU) and labels [N] of every image of `dataset`."""
    from xaibench.data import collate

    parts, labels = [], []
    for start in range(0, len(dataset), batch):
        b = collate([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
        parts.append(model(b.images.to(device)).float().cpu())
        labels.append(b.labels)
    return torch.cat(parts), torch.cat(labels)


def few_shot_split(labels: torch.Tensor, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) positions: `shots` images per class drawn with `seed`, every other image to test."""
    gen = torch.Generator().manual_seed(seed)
    train = []
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().flatten()
        if len(where) <= shots:
            raise InputError(f"target class {c} has {len(where)} images; {shots} shots leave none to test")
        train.append(where[torch.randperm(len(where), generator=gen)[:shots]])
    chosen = torch.cat(train)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[chosen] = False
    return chosen.sort().values, rest.nonzero().flatten()


def few_shot_accuracy(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> float:
    """Accuracy on `test` of a logistic regression (scikit-learn, ``max_iter=1000``) fitted on `train`."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(features[train].numpy(), labels[train].numpy())
    return float(classifier.score(features[test].numpy(), labels[test].numpy()))


def transfer(ctx: StepContext) -> None:
    from xaibench.models import load_model
    from xaibench.data import load_dataset

    target = section("[target].", ctx.cfg["target"], TARGET)
    kwargs = {"image_size": target["image_size"]} if target["image_size"] is not None else {}
    dataset = load_dataset(target["spec"], split=target["split"], **kwargs)
    device = torch.device(ctx.cfg.device)
    rows = []
    for label in ctx.cfg["models"]:
        m = _model(ctx.cfg, label, ctx.root)
        model = load_model(m["spec"], num_classes=m.get("num_classes"), weights=m.get("weights"), device=device)
        features, labels = outputs(model, dataset, ctx.cfg["batch"], device)
        train, test = few_shot_split(labels, target["shots"], ctx.seed("shots"))  # the same images for every model
        rows.append({"model": label, "shots": target["shots"], "train_images": len(train), "test_images": len(test),
                     "transfer_accuracy": few_shot_accuracy(features, labels, train, test)})
    ctx.write_table("transfer", pd.DataFrame(rows))


def _tables(exp: ExperimentDir, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    summary = al.summarise(images, ["model"])
    summary = summary.merge(al.shown(exp.table("model_sizes")), on="model")
    summary = summary.merge(al.shown(exp.table("transfer")), on="model")
    return {"alignment": summary, "correlation": al.correlations(summary, ("iou", "pg"), "transfer_accuracy")}


def _blocks(exp: ExperimentDir) -> list[Block]:
    summary = exp.table("alignment")
    columns = ["model", "parameters", "accuracy", "iou", "pg", "transfer_accuracy", "shots", "images", "undefined"]
    return [
        Table(al.rounded(summary[columns]), "accuracy, iou, pg: on the source; transfer_accuracy: on the target."),
        Table(al.rounded(al.shown(exp.table("correlation"))), "Correlation over the models of source alignment and "
              "transfer accuracy: Spearman with its 95 % bootstrap interval over the models and permutation p, "
              "n = models; below 5 models the verdict is 'too few models to conclude' (no association could reach "
              "p < 0.05)."),
        *(Plot("scatter", summary, f"Transfer accuracy against {name}; marker area ~ sqrt(parameters).",
               {"x": score, "y": "transfer_accuracy", "size": "parameters", "xlabel": f"{name} on the source",
                "ylabel": "few-shot accuracy on the target"})
          for score, name in (("iou", "EA_IoU"), ("pg", "EA_PG"))),
        Table(al.shown(exp.table("cases")), "Shared Interest's eight recurring cases on the source."),
    ]


RECIPE = al.AlignmentRecipe(
    name="transfer",
    summary="transfer: does explanation alignment on a source data set predict few-shot accuracy on a target?",
    example="experiment-transfer.toml",
    saliency="gradcam",
    sections={"models": ((dict,), REQUIRED), "source": ((dict,), REQUIRED), "target": ((dict,), REQUIRED)},
    check=_check,
    runs=_runs,
    by=("model",),
    tables=_tables,
    intro="Explanation alignment of each model on the source data set (IoU of the binarised saliency and pointing "
          "game with the source masks, predicted class) against its few-shot accuracy on the target data set "
          "(logistic regression on the model's outputs of the shot images per class).",
    blocks=_blocks,
    before=(Step("train", train_models),),
    beside=(Step("transfer", transfer, needs=("train",)),),
).recipe()
