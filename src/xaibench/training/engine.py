"""The training engine: a Lightning module with the Gomez & Mouchère losses, and `train`.

`train(config, out_dir)` trains the model of a `TrainConfig` and writes to `out_dir`:

- ``train.toml``: the validated config; ``log.csv``: one row per epoch (`LOG_COLUMNS`);
- ``model.pt``: the selected epoch's weights as a `save_model` file (``load_model("file:DIR/model.pt")``);
- ``checkpoints/``: ``last.ckpt`` (Lightning's full state: weights, optimiser, schedule, loops,
  early stopping and the log so far) and the weights of the epochs the selection may still pick.

Loss per batch (x, y), with the criterion CE or, in the FL settings, the adaptive focal loss:
``w_clean * L(x') + w_masked * L(fp(x))`` where x' is x, or its PGD images in the AP settings,
and the FP term only in the FP settings; (w_clean, w_masked) = (2 - 0.1 i, 0.1 i), i = 10 by
default (the paper's L(clean) + L(masked)); without FP the loss is L(x').

Reproducibility: the initial weights come from the seed; the batch order of epoch e is
``DistributedSampler(seed).set_epoch(e)``; the FP draws of batch j in epoch e come from a
generator seeded by (seed, e, j), and the global RNG (dropout) is reseeded from the same key
before every batch. So a run resumed from ``last.ckpt`` after an interruption repeats the
uninterrupted run exactly (bitwise on the CPU).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics.aggregation import CatMetric, MeanMetric

from xaibench.data import load_dataset
from xaibench.errors import InputError
from xaibench.files import write_atomic
from xaibench.models import architecture, load_model, save_model
from xaibench.modelspec import ModelSpec
from xaibench.seeding import derive_seed
from xaibench.training.calibration import confidence_adaptive_error, confidence_calibration_error, top_label
from xaibench.training.config import TrainConfig, as_train_config, load_train_config
from xaibench.training.losses import adaptive_focal_loss
from xaibench.training.perturbations import draw_fp, feature_saliency, fp_images, pgd_attack
from xaibench.training.runtime import (
    arch_spec,
    check_out,
    isolated,
    lightning_accelerator,
    progress_callbacks,
    rank,
    resume_checkpoint,
)
from xaibench.training.selection import candidate_count, select_epoch, top_epochs

LOG_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "ece", "adaece", "lr", "seconds", "selected")
CONFIG_FILE = "train.toml"
LOG_FILE = "log.csv"
MODEL_FILE = "model.pt"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced: the model file, the per-epoch log, the selected epoch and the config hash."""

    model_path: Path
    log: pd.DataFrame
    best_epoch: int
    config_hash: str


# --- data -----------------------------------------------------------------------------------------


class LabelledImages(Dataset):
    """(image [C, H, W], label) pairs of the data set positions `indices`, with the labels given."""

    def __init__(self, dataset: Dataset, indices: list[int], labels: list[int]) -> None:
        self.dataset, self.indices, self.labels = dataset, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.dataset[self.indices[i]].image, self.labels[i]


def _labels(dataset: Any) -> list[int]:
    """Every label of a data set without decoding its images where the loader keeps them apart."""
    if isinstance(getattr(dataset, "labels", None), Tensor):
        return [int(v) for v in dataset.labels]
    if hasattr(dataset, "entries"):
        return [int(e.label) for e in dataset.entries]
    return [int(s.label) for s in dataset]


def split_data(cfg: TrainConfig) -> tuple[LabelledImages, LabelledImages | None, int]:
    """(training pairs, validation pairs or None, number of classes) of a config.

    The split's positions (a seeded subset of ``[data].n`` when given) are shuffled with the seed;
    the first ``round(val_fraction * n)`` are the validation images. With ``label_permutation`` the
    labels of all of them are permuted with the seed first (Adebayo's data randomisation test).
    """
    d = cfg.data
    dataset = load_dataset(d["spec"], split=d["split"], image_size=d["image_size"])
    labels = _labels(dataset)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "split"))
    order = torch.randperm(len(labels), generator=gen).tolist()
    if d["n"] is not None:
        if d["n"] > len(order):
            raise InputError(f"config [data].n = {d['n']}, but split {d['split']!r} of {d['spec']} has {len(order)} images")
        order = order[: d["n"]]
    if cfg.label_permutation:
        perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "labels")))
        labels_of = {pos: labels[order[int(j)]] for pos, j in zip(order, perm)}
    else:
        labels_of = {pos: labels[pos] for pos in order}
    n_val = int(round(d["val_fraction"] * len(order)))
    if d["val_fraction"] > 0 and not 0 < n_val < len(order):
        raise InputError(f"config [data].val_fraction = {d['val_fraction']} leaves {n_val} of {len(order)} images "
                         "for validation; need at least one image on each side")
    val_pos, train_pos = sorted(order[:n_val]), sorted(order[n_val:])
    train_set = LabelledImages(dataset, train_pos, [labels_of[p] for p in train_pos])
    val_set = LabelledImages(dataset, val_pos, [labels_of[p] for p in val_pos]) if n_val else None
    num_classes = len(getattr(dataset, "classes", [])) or max(labels) + 1
    return train_set, val_set, num_classes


# --- the model ------------------------------------------------------------------------------------


def initial_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model to train, on the CPU, in training mode: the architecture with random weights drawn
    under the seed, or a ``file:`` model / the given ``weights`` to start from."""
    m = cfg.model
    spec, classes = m["spec"], m["num_classes"]
    scheme = ModelSpec.parse(spec).kind
    if classes is None and scheme in ("torchvision", "timm"):
        classes = num_classes
    if m["weights"] is None and scheme != "file":
        model = architecture(spec, classes, seed=cfg.seed)
    else:
        model = load_model(spec, num_classes=classes, weights=m["weights"], device="cpu")
    return model.train()


def feature_module(model: nn.Module, layer: str, probe: Tensor) -> tuple[str, nn.Module]:
    """(name, module) whose output is the FP explanation: `layer`, or the default CAM layer; its
    output must be a 4-D feature map [B, K, h, w] for images like `probe`."""
    from xaibench.explainers.cam import find_layer, get_module

    was_training = model.training
    model.eval()
    try:
        name = layer or find_layer(model, probe)
        module = get_module(model, name)
        seen: list[Any] = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            with torch.no_grad():
                model(probe[:1])
        finally:
            handle.remove()
    finally:
        model.train(was_training)
    if not seen or not isinstance(seen[0], Tensor) or seen[0].ndim != 4 or seen[0].shape[-2:].numel() < 2:
        shape = tuple(seen[0].shape) if seen and isinstance(seen[0], Tensor) else type(seen[0]).__name__ if seen else None
        raise InputError(
            f"setting with FP needs a feature map [B, K, h, w] (h*w > 1) as the explanation, but module {name!r} of "
            f"{type(model).__name__} returns {shape}; set feature_layer = '<module name>' to a convolutional layer"
        )
    return name, module


class GomezModule(pl.LightningModule):
    """The classifier `model` trained with the loss of a `TrainConfig` (see the module doc)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None,
                 feature_layer: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.train_set, self.val_set = train_set, val_set
        self.parts = cfg.parts
        self.criterion = adaptive_focal_loss if "fl" in self.parts else F.cross_entropy
        self._features: Tensor | None = None
        if feature_layer is not None:
            feature_layer.register_forward_hook(self._keep_features)
        self.train_loss, self.train_acc = MeanMetric(), MeanMetric()
        self.val_loss, self.val_conf, self.val_hits = MeanMetric(), CatMetric(), CatMetric()
        self.summary: dict[str, float] = {}
        self._epoch_start = self._last_batch_end = 0.0

    def _keep_features(self, _module: nn.Module, _inputs: Any, out: Tensor) -> None:
        self._features = out

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # data
    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        sampler = DistributedSampler(data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=shuffle, seed=self.cfg.seed)
        workers = self.cfg.num_workers
        return DataLoader(data, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    # optimisation
    def configure_optimizers(self) -> Any:
        c = self.cfg
        if c.optimizer == "adam":
            opt = torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        steps = int(self.trainer.estimated_stepping_batches)
        if c.schedule == "constant":
            return opt
        if c.schedule == "cosine":
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=steps, pct_start=c.warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derive_seed(self.cfg.seed, "dropout", self.current_epoch, batch_idx))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        w_clean, w_masked = self.cfg.loss_weights
        first = x
        if "ap" in self.parts:
            first = pgd_attack(self.model, x, y, eps=self.cfg.ap_eps, step=self.cfg.ap_step, steps=self.cfg.ap_steps)
        self._features = None
        logits = self.model(first)
        loss = w_clean * self.criterion(logits, y)
        if "fp" in self.parts:
            if "ap" in self.parts:  # the explanation of the clean images: one more forward, eval mode, no gradient
                self.model.eval()
                with torch.no_grad():
                    self.model(x)
                self.model.train()
            assert self._features is not None
            saliency = feature_saliency(self._features)
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "fp", self.current_epoch, batch_idx))
            kinds, k = draw_fp(saliency, gen)
            loss = loss + w_masked * self.criterion(self.model(fp_images(x, saliency, kinds, k)), y)
        self._features = None
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update((logits.argmax(1) == y).float().mean(), weight=len(y))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._last_batch_end = time.perf_counter()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.val_loss.update(F.cross_entropy(logits.float(), y), weight=len(y))
        conf, hits = top_label(F.softmax(logits.float(), dim=1), y)
        self.val_conf.update(conf)
        self.val_hits.update(hits)

    def on_validation_epoch_end(self) -> None:
        conf, hits = self.val_conf.compute(), self.val_hits.compute()
        self.summary = {
            "val_loss": float(self.val_loss.compute()),
            "val_accuracy": float(hits.mean()),
            "ece": float(confidence_calibration_error(conf, hits)),
            "adaece": float(confidence_adaptive_error(conf, hits)),
        }
        for metric in (self.val_loss, self.val_conf, self.val_hits):
            metric.reset()
        self.log("val_accuracy", self.summary["val_accuracy"], sync_dist=True)  # equal on every rank

    def epoch_row(self) -> dict[str, float]:
        """The log row of the epoch that just ended (all processes agree: metrics are synchronised)."""
        row = {
            "epoch": self.current_epoch,
            "loss": float(self.train_loss.compute()),
            "accuracy": float(self.train_acc.compute()),
            "val_loss": float("nan"), "val_accuracy": float("nan"), "ece": float("nan"), "adaece": float("nan"),
            **self.summary,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "seconds": self._last_batch_end - self._epoch_start,
        }
        self.train_loss.reset()
        self.train_acc.reset()
        self.summary = {}
        return row


# --- callbacks --------------------------------------------------------------------------------------


class EpochRecorder(Callback):
    """Appends each epoch's row to the log (``log.csv``) and keeps the weights of the epochs the
    selection rule may still pick (``checkpoints/epoch-NNNN.pt``). Its state (the rows) is part of
    Lightning's checkpoint, so a resumed run continues the same log."""

    def __init__(self, out: Path, rule: str, max_epochs: int, patience: int) -> None:
        self.out, self.rule, self.keep, self.patience = out, rule, candidate_count(rule, max_epochs), patience
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: GomezModule) -> None:
        # Resumed after early stopping had fired (killed before the model file was written): the
        # restored log says so, and Lightning does not keep `should_stop`; stop before a new epoch.
        if self.patience and self.rows:
            log = self.table()
            best = int(log["epoch"].iloc[int(log["val_accuracy"].to_numpy().argmax())])
            trainer.should_stop = int(log["epoch"].iloc[-1]) - best >= self.patience

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: GomezModule) -> None:
        row = pl_module.epoch_row()
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if not trainer.is_global_zero:
            return
        log = self.table()
        write_atomic(self.out / LOG_FILE, lambda p: log.to_csv(p, index=False))
        if self.keep:
            keep = set(top_epochs(log, self.keep))
            if row["epoch"] in keep:
                state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
                write_atomic(weights_path(self.out, row["epoch"]), lambda p: torch.save(state, p))
            for old in (self.out / CHECKPOINTS).glob("epoch-*.pt"):
                if int(old.stem.split("-")[1]) not in keep:
                    old.unlink(missing_ok=True)

    def table(self) -> pd.DataFrame:
        log = pd.DataFrame(self.rows, columns=[c for c in LOG_COLUMNS if c != "selected"])
        return log.astype({"epoch": "int64"})

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


def weights_path(out: Path, epoch: int) -> Path:
    return out / CHECKPOINTS / f"epoch-{epoch:04d}.pt"


# --- train ------------------------------------------------------------------------------------------


def _result(cfg: TrainConfig, out: Path) -> TrainResult:
    log = pd.read_csv(out / LOG_FILE)
    selected = log.loc[log["selected"].astype(bool), "epoch"]
    return TrainResult(out / MODEL_FILE, log, int(selected.iloc[0]), cfg.hash)


def train(config: TrainConfig | Mapping[str, Any] | str | Path, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train the model of `config` (a `TrainConfig`, a dict or a TOML path) into `out_dir`.

    With ``resume=True`` an interrupted run in `out_dir` (same config hash) continues from its last
    checkpoint, and a finished one is returned as it is (``resume=True`` on an empty or missing
    directory simply trains). `progress` shows Lightning's progress bar and messages. Returns a
    `TrainResult`; the files are described in the module doc. Under DDP only rank 0 writes files and
    selects; the other processes return ``best_epoch = -1``.
    """
    cfg = as_train_config(config)
    out = Path(out_dir)
    if rank() == 0:
        check_out(cfg, out / CONFIG_FILE, resume, load_train_config)
    if resume and (out / MODEL_FILE).is_file() and (out / LOG_FILE).is_file():
        log = pd.read_csv(out / LOG_FILE)
        if "selected" in log and log["selected"].any():
            return _result(cfg, out)
    accelerator, device_ids = lightning_accelerator(cfg.device)
    with isolated(quiet=not progress):
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        train_set, val_set, num_classes = split_data(cfg)
        model = initial_model(cfg, num_classes)
        layer = None
        if "fp" in cfg.parts:
            _name, layer = feature_module(model, cfg.feature_layer, train_set[0][0][None])
        per_process = -(-len(train_set) // cfg.devices)  # DistributedSampler pads to equal shares
        steps = cfg.epochs * -(-per_process // cfg.batch_size)
        if cfg.schedule == "onecycle" and cfg.warmup * steps <= 1:  # torch's OneCycleLR divides by warmup x steps - 1
            raise InputError(f"config schedule = 'onecycle' needs warmup x steps > 1, got {cfg.warmup} x {steps} "
                             "steps: train longer or on more images, use a smaller batch or a longer warmup")
        if rank() == 0:  # only once the data, the model and its feature map are known to work
            (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            write_atomic(out / CONFIG_FILE, lambda p: p.write_text(cfg.to_toml()))
        module = GomezModule(model, cfg, train_set, val_set, layer)
        recorder = EpochRecorder(out, cfg.selection, cfg.epochs, cfg.patience)
        callbacks: list[Callback] = [recorder, ModelCheckpoint(
            dirpath=out / CHECKPOINTS, filename=Path(LAST).stem, enable_version_counter=False,
            save_on_train_epoch_end=True)]
        if cfg.patience > 0:
            callbacks.append(EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience))
        on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
        trainer = pl.Trainer(
            accelerator=accelerator, devices=device_ids or cfg.devices,
            strategy="ddp" if cfg.devices > 1 else "auto", precision=cfg.precision, max_epochs=cfg.epochs,
            callbacks=callbacks + progress_callbacks(progress), logger=False, default_root_dir=out,
            enable_progress_bar=progress,
            enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
            limit_val_batches=1.0 if val_set is not None else 0, deterministic="warn" if on_gpu else True,
        )
        trainer.fit(module, ckpt_path=resume_checkpoint(out / CHECKPOINTS / LAST) if resume else None)
        if not trainer.is_global_zero:
            return TrainResult(out / MODEL_FILE, recorder.table(), -1, cfg.hash)
        log = recorder.table()
        best = select_epoch(log, cfg.selection)
        if cfg.selection != "last" and not weights_path(out, best).is_file():
            # "gomez" on an exact ECE tie with an epoch outside the candidates, whose weights were not kept
            kept = log[log["epoch"].isin(top_epochs(log, candidate_count(cfg.selection, len(log))))]
            fallback = int(kept.loc[kept["ece"] == log.loc[log["epoch"] == best, "ece"].iloc[0], "epoch"].iloc[0])
            warnings.warn(f"selection {cfg.selection!r} chose epoch {best}, whose weights were not kept (an ECE tie "
                          f"outside the candidates); the model is epoch {fallback}'s, of the same ECE", UserWarning)
            best = fallback
        if cfg.selection != "last":
            module.model.load_state_dict(torch.load(weights_path(out, best), map_location="cpu", weights_only=True))
        log["selected"] = log["epoch"] == best
        save_model(module.model, out / MODEL_FILE, spec=arch_spec(cfg.model["spec"]))
        write_atomic(out / LOG_FILE, lambda p: log.to_csv(p, index=False))
    return TrainResult(out / MODEL_FILE, log, best, cfg.hash)
