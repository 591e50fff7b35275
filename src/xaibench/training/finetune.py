"""Metric fine-tuning (HARMONY): a copy of a classifier trained so that a learnable metric improves
for a fixed attribution method while the copy keeps the original's predictions.

`finetune(config, out_dir)` writes to `out_dir`:

- ``finetune.toml``: the validated config; ``log.csv``: one row per validation (`LOG_COLUMNS`,
  step 0 = the original model);
- ``model.pt``: the selected weights as a `save_model` file (``load_model("file:DIR/model.pt")``);
- ``evaluation.json``: original vs fine-tuned on the held-out split (the metric's mean with a
  bootstrap CI, the paired difference with its CI and a Wilcoxon signed-rank p-value, agreement,
  accuracy); ``gallery.pt``: original vs fine-tuned maps on held-out images as data (a `Gallery`,
  drawn as ``gallery.png`` by ``xaibench finetune``);
- ``checkpoints/``: ``last.ckpt`` (Lightning's full state, for ``resume``) and ``best.ckpt``.

Objective per batch (HARMONY's): the fidelity term ``mean(1 - (cos(z_orig, z_learn) + 1) / 2)``
of the two models' logits on the clean batch, plus ``weight x``

- ``(1 - metric)`` for Focus and RMA (the learnable metric through the differentiable maps);
- ``agreement x mean(p_learn(masked)[y] / p_learn(clean)[y])`` for ROAD and IROF (masked images
  from ``perturb_input`` with the fine-tuned model's own maps; y the original's prediction;
  agreement = the batch's share of images where both models predict the same class);
- ``mean(relative map change / relative input change)`` for IS (one noisy copy per image, its map
  differentiable, the clean map a constant).

Both models stay in eval mode (batch-norm statistics and dropout frozen, as in HARMONY); the
training maps explain the original's predicted class. Adam; a validation on the first batches of
the validation images keeps the model when the validation metric improves and the agreement with
the original passes ``agreement_min``; when no validation qualifies the original's weights are
written. The loop, checkpoints and resume are Lightning's (manual optimisation: two models,
gradients through maps).

``preset`` chooses between the two recipes (docs/harmony.md has the table of differences):

- ``"harmony"`` (default): what HARMONY's ``harmony_finetune`` code does. Its attributors
  (`HARMONY_METHOD_PARAMS`), the learnable metrics' ``preset="harmony"``; gradient clipping
  (norm 1) only for RMA; the ROAD / IROF term weighted by the agreement of the previous batch (0
  before the first update); validation explains the label for RMA and each evaluated model's own
  prediction for ROAD, IROF and IS, ROAD and IROF measured against the label; a model is kept when
  the agreement is strictly above ``agreement_min``; HARMONY's loop counters: ``iterations + 1``
  updates (RMA: ``iterations``), a validation after update i + 1 for every i > 0 divisible by
  ``val_every`` (RMA: i counts the batches of the epoch), on ``val_batches + 1`` batches.
- ``"xaibench"``: gradient clipping for every metric, the current batch's agreement, validation
  explaining (and comparing against) the original's prediction for both models, agreement at least
  ``agreement_min``, ``iterations`` updates with a validation every ``val_every`` updates on
  ``val_batches`` batches; the explainers and learnable metrics as configured.

Reproducibility: epoch e's batch order is a permutation seeded by (seed, e) (`EpochOrder`), a
step's random draws (removal fractions, imputation noise, noisy copies) come from a generator
seeded by (seed, step); a run resumed from ``last.ckpt`` continues the interrupted epoch's order
where it stopped, so it repeats the uninterrupted run (bitwise on the CPU).
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from xaibench.checks import perturbed_inputs
from xaibench.config import REQUIRED, CanonicalConfig, Schema, load_toml, lookup, section, suggest
from xaibench.data import load_dataset
from xaibench.errors import InputError
from xaibench.files import write_atomic
from xaibench.explainers import explainer
from xaibench.metrics.learnable import LEARNABLE, LearnableMetric, finite_mean
from xaibench.models import load_model, save_model
from xaibench.reliability import MeanStatistic, bootstrap_ci
from xaibench.seeding import derive_seed
from xaibench.training.engine import LAST, split_data
from xaibench.training.runtime import (
    arch_spec,
    check_out,
    isolated,
    lightning_accelerator,
    progress_callbacks,
    resume_checkpoint,
)

CONFIG_FILE = "finetune.toml"
LOG_FILE = "log.csv"
MODEL_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
GALLERY_FILE = "gallery.pt"
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"  # the selected step's full checkpoint: the fallback when last.ckpt is damaged
LOG_COLUMNS = ("step", "metric", "agreement", "seconds")
PRESETS = ("harmony", "xaibench")
# HARMONY's loss weights per metric (trainer.py), and its learning rates (train.py: 3e-6 for the
# segmentation-mask metric in train_segmentation, 3e-5 in train)
WEIGHTS = {"focus": 0.01, "relevance_mass_accuracy": 0.05, "road": 0.1, "irof": 0.1, "relative_input_stability": 5e-6}
LEARNING_RATES = {"relevance_mass_accuracy": 3e-6}
DEFAULT_LR = 3e-5
# HARMONY's validation schedule (train.py): train_segmentation eval_every=20, validation_iterations=5;
# train eval_every=50, validation_iterations=10
HARMONY_VALIDATION = {"relevance_mass_accuracy": (20, 5)}
DEFAULT_VALIDATION = (50, 10)
# HARMONY's attributors (attributor.py, get_attributor(..., only_positive=True, interpolate=True) in
# train.py) as xaibench explainer parameters; other methods get the positive part only
HARMONY_METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "gradcam": {"sign": "positive"},
    "input_x_gradient": {"sign": "positive", "reduce": "sum"},
    "guided_backprop": {"sign": "positive", "reduce": "sum", "init": "logit"},
    "excitation_backprop": {"sign": "positive", "reduce": "sum", "init": "logit", "contrast": "logits"},
    "lrp_epsilon_plus": {"sign": "positive", "reduce": "sum", "init": "logit", "contrast": "logits"},
}

_TOP: Schema = {
    "seed": ((int,), 0),
    "preset": ((str,), "harmony"),
    "device": ((str,), "auto"),
    "metric": ((str,), REQUIRED),
    "method": ((str,), REQUIRED),
    "iterations": ((int,), 20000),
    "batch_size": ((int,), 8),
    "lr": ((float,), None),
    "weight": ((float,), None),
    "clip": ((float,), None),
    "val_every": ((int,), None),
    "val_batches": ((int,), None),
    "agreement_min": ((float,), 0.95),
    "mask": ((str,), None),
    "scale": ((bool,), False),
    "method_params": ((dict,), None),
    "metric_params": ((dict,), None),
    "model": ((dict,), REQUIRED),
    "data": ((dict,), REQUIRED),
    "evaluation": ((dict,), None),
}
_MODEL: Schema = {"spec": ((str,), REQUIRED)}
_DATA: Schema = {
    "spec": ((str,), REQUIRED),
    "split": ((str,), "train"),
    "val_fraction": ((float,), 0.1),
    "image_size": ((int,), None),
    "n": ((int,), None),
    "test_split": ((str,), "test"),
    "test_n": ((int,), None),
}
_EVALUATION: Schema = {
    "bootstrap": ((int,), 1000),
    "gallery": ((int,), 8),
}
@dataclass(frozen=True)
class FinetuneConfig(CanonicalConfig):
    """A validated fine-tuning config (see `CanonicalConfig`), written as ``finetune.toml``."""

    label_permutation = False  # what `split_data` reads


@dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` produced: the model file, the validation log and the held-out evaluation."""

    model_path: Path
    log: pd.DataFrame
    evaluation: dict[str, Any]
    config_hash: str


def parse_finetune_config(raw: Mapping[str, Any]) -> FinetuneConfig:
    """Validate a config dict; errors name the key and suggest close names."""
    if not isinstance(raw, Mapping):
        raise InputError(f"config must be a table, got {type(raw).__name__}")
    top = section("", raw, _TOP)
    top["model"] = section("[model].", top["model"], _MODEL)
    top["data"] = section("[data].", top["data"], _DATA)
    top["evaluation"] = section("[evaluation].", top["evaluation"] or {}, _EVALUATION)
    if top["preset"] not in PRESETS:
        raise InputError(f"config preset: must be one of {PRESETS}, got {top['preset']!r}")
    harmony = top["preset"] == "harmony"
    top["method_params"] = dict(top["method_params"] or {})
    top["metric_params"] = dict(top["metric_params"] or {})
    for key in ("lr", "weight", "clip", "agreement_min"):
        if top[key] is not None:
            top[key] = float(top[key])
    top["data"]["val_fraction"] = float(top["data"]["val_fraction"])
    metric = lookup("metric", LEARNABLE, top["metric"])
    top["metric"] = metric.name
    from xaibench.explainers import METHODS
    from xaibench.explainers.differentiable import DIFFERENTIABLE

    top["method"] = lookup("method", METHODS, top["method"]).name
    if top["method"] not in DIFFERENTIABLE:
        raise InputError(f"config method: {top['method']!r} has no differentiable mode; the fine-tuner supports "
                         f"{', '.join(DIFFERENTIABLE)}")
    top["lr"] = top["lr"] if top["lr"] is not None else LEARNING_RATES.get(metric.name, DEFAULT_LR)
    top["weight"] = top["weight"] if top["weight"] is not None else WEIGHTS[metric.name]
    if top["clip"] is None:  # HARMONY clips (norm 1) only in IoULearnableMetricTrainer (RMA); 0 = no clipping
        top["clip"] = 1.0 if not harmony or metric.name == "relevance_mass_accuracy" else 0.0
    every, batches = HARMONY_VALIDATION.get(metric.name, DEFAULT_VALIDATION) if harmony else DEFAULT_VALIDATION
    top["val_every"] = every if top["val_every"] is None else top["val_every"]
    top["val_batches"] = batches if top["val_batches"] is None else top["val_batches"]
    if harmony:
        top["method_params"] = {**HARMONY_METHOD_PARAMS.get(top["method"], {"sign": "positive"}), **top["method_params"]}
    for key in ("iterations", "batch_size", "val_every", "val_batches"):
        if top[key] < 1:
            raise InputError(f"config {key}: must be >= 1, got {top[key]}")
    if not top["lr"] > 0:
        raise InputError(f"config lr: must be > 0, got {top['lr']}")
    if not top["clip"] >= 0:
        raise InputError(f"config clip: must be >= 0 (0: no clipping), got {top['clip']}")
    if not 0 <= top["agreement_min"] <= 1:
        raise InputError(f"config agreement_min: must be in [0, 1], got {top['agreement_min']}")
    if metric.name == "focus" and top["batch_size"] % 4:
        raise InputError(f"config batch_size: HARMONY's Focus builds mosaics of four images, so the batch size must "
                         f"be divisible by 4, got {top['batch_size']}")
    if not 0 < top["data"]["val_fraction"] < 1:
        raise InputError(f"config [data].val_fraction: must be in (0, 1), got {top['data']['val_fraction']}")
    return FinetuneConfig(json.loads(json.dumps(top)))


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a TOML fine-tuning config."""
    return load_toml(path, parse_finetune_config, "fine-tuning config")


# --- data -------------------------------------------------------------------------------------------


class MaskedImages(Dataset):
    """(image, label, mask) of data-set positions; the mask is the named one, or all False without one."""

    def __init__(self, dataset: Any, indices: list[int], mask: str | None) -> None:
        self.dataset, self.indices, self.mask = dataset, indices, mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        s = self.dataset[self.indices[i]]
        if self.mask is None:
            return s.image, s.label, torch.zeros(s.image.shape[-2:], dtype=torch.bool)
        return s.image, s.label, s.masks[self.mask]


def mask_name(cfg: FinetuneConfig, metric: LearnableMetric, sample: Any) -> str | None:
    """The mask the metric reads (``mask`` or the data set's default), checked against `sample`."""
    if not metric.needs_masks:
        return None
    if not sample.masks:
        raise InputError(f"metric {cfg.metric!r} needs masks, but data set {cfg.data['spec']!r} has none; use a "
                         "data set with masks (e.g. builtin:digits, an image folder with masks)")
    if cfg.mask:
        name = cfg.mask
    elif sample.mask is not None:
        name = next(n for n, m in sample.masks.items() if m is sample.mask)
    else:
        name = next(iter(sample.masks))
    if name not in sample.masks:
        hint = suggest(name, sample.masks, cutoff=0.4)
        raise InputError(f"config mask: data set {cfg.data['spec']!r} has no mask {name!r}.{hint} "
                         f"Masks: {', '.join(sample.masks)}.")
    return name


def held_out(cfg: FinetuneConfig, mask: str | None) -> MaskedImages:
    d = cfg.data
    dataset = load_dataset(d["spec"], split=d["test_split"], image_size=d["image_size"])
    n = len(dataset) if d["test_n"] is None else min(d["test_n"], len(dataset))
    return MaskedImages(dataset, list(range(n)), mask)


# --- the Lightning module --------------------------------------------------------------------------


def method_maps(cfg: FinetuneConfig, model: nn.Module, differentiable: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """The config's method on `model`; with ``scale`` each map divided by its maximum absolute value
    (HARMONY's optional scaling; maps without relevance stay 0)."""
    explain = explainer(cfg.method, model, differentiable=differentiable, **cfg.method_params)
    if not cfg.scale:
        return explain

    def scaled(inputs: Tensor, targets: Tensor) -> Tensor:
        maps = explain(inputs, targets)
        peak = maps.flatten(1).abs().amax(1)[:, None, None]
        return maps / torch.where(peak > 0, peak, torch.ones_like(peak))

    return scaled


def explained(cfg: FinetuneConfig, own: Tensor, original: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(classes the maps explain, classes ROAD / IROF compare against) when a model is evaluated:
    preset ``harmony``: the label for RMA (``IoULearnableMetric``: ``classes=y``), else the
    evaluated model's own prediction `own`, compared against the label (``MaskedSimilarity...
    Trainer.evaluate``: ``classes=o.max(-1)[1]``, the metric called with ``y``); preset
    ``xaibench``: the original's prediction for both."""
    if cfg.preset == "xaibench":
        return original, original
    if cfg.metric == "relevance_mass_accuracy":
        return labels, labels
    return own, labels


def qualifying(cfg: FinetuneConfig, agreement: float) -> bool:
    """Whether a validation's agreement lets its model be kept: strictly above ``agreement_min``
    for preset ``harmony`` (trainer.py: ``orig_learn_acc > 0.95``), at least it for ``xaibench``."""
    return agreement > cfg.agreement_min if cfg.preset == "harmony" else agreement >= cfg.agreement_min


def fidelity(z_orig: Tensor, z_learn: Tensor) -> Tensor:
    """HARMONY's fidelity term ``mean(1 - (cos(z_orig, z_learn) + 1) / 2)`` (0 for parallel logits)."""
    return (1 - (F.cosine_similarity(z_orig, z_learn, dim=1) + 1) / 2).mean()


class EpochOrder(Sampler[int]):
    """The training order of epoch e: a permutation seeded by (seed, e) (Lightning calls
    ``set_epoch``), without its first `skip` positions once (a run resumed mid-epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "finetune-order", self.epoch))
        skip, self.skip = self.skip, 0
        return iter(torch.randperm(self.n, generator=gen)[skip:].tolist())

    def __len__(self) -> int:
        return self.n


class HarmonyModule(pl.LightningModule):
    """The fine-tuned copy `learn` of `orig` under HARMONY's objective (module doc), manual optimisation."""

    def __init__(self, learn: nn.Module, orig: nn.Module, cfg: FinetuneConfig, metric: LearnableMetric,
                 train_set: Dataset, val_set: Dataset) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.learn, self.orig = learn, orig
        for p in self.orig.parameters():
            p.requires_grad_(False)
        self.cfg, self.metric = cfg, metric
        self.train_set, self.val_set = train_set, val_set
        self.explain_graph = method_maps(cfg, learn, differentiable=True)
        self.explain_learn = method_maps(cfg, learn)
        self.val_scores: list[Tensor] = []
        self.val_agree: list[Tensor] = []
        self.summary: dict[str, float] = {}
        self.previous_agreement = 0.0  # HARMONY weights the masked term by the previous batch's agreement

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["previous_agreement"] = self.previous_agreement

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.previous_agreement = float(checkpoint["previous_agreement"])

    def train(self, mode: bool = True) -> HarmonyModule:
        """Both models stay in eval mode (HARMONY: batch-norm statistics and dropout frozen)."""
        super().train(mode)
        self.learn.eval()
        self.orig.eval()
        return self

    def train_dataloader(self) -> DataLoader:
        sampler = EpochOrder(len(self.train_set), self.cfg.seed)
        # resumed mid-epoch: Lightning has restored the epoch's progress; continue its order where it stopped
        sampler.skip = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed * self.cfg.batch_size
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=sampler,
                          drop_last=self.cfg.metric == "focus")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, drop_last=self.cfg.metric == "focus")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.learn.parameters(), lr=self.cfg.lr, weight_decay=0.0)

    def metric_term(self, x: Tensor, pred: Tensor, masks: Tensor, z: Tensor, agreement: Tensor,
                    gen: torch.Generator) -> Tensor:
        """The metric's part of the loss (before its weight); see the module doc."""
        m = self.metric
        if m.objective == "score":
            return 1 - finite_mean(m.evaluate(self.learn, x, pred, self.explain_graph, masks))
        if m.objective == "masked":
            masked = m.perturb_input(x, self.explain_learn(x, pred), gen)
            with perturbed_inputs():
                p_masked = self.learn(masked).softmax(1).gather(1, pred[:, None])[:, 0]
            p_clean = z.softmax(1).gather(1, pred[:, None])[:, 0]
            return agreement * (p_masked / (p_clean + 1e-9)).mean()
        noisy = m.perturb_input(x, generator=gen, model=self.learn)  # type: ignore[call-arg]
        with perturbed_inputs():
            noisy_maps = self.explain_graph(noisy, pred)
        return finite_mean(m.objective(x, noisy, self.explain_learn(x, pred), noisy_maps, self.learn))  # type: ignore[attr-defined]

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _, masks = batch
        gen = torch.Generator(device=x.device).manual_seed(derive_seed(self.cfg.seed, "finetune", self.global_step))
        with torch.no_grad():
            z_orig = self.orig(x)
        pred = z_orig.argmax(1)
        z = self.learn(x)
        agreement = (z.argmax(1) == pred).float().mean().detach()
        weighting = agreement if self.cfg.preset == "xaibench" else torch.tensor(self.previous_agreement)
        loss = fidelity(z_orig, z) + self.cfg.weight * self.metric_term(x, pred, masks, z, weighting.to(x.device), gen)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.cfg.clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.clip, gradient_clip_algorithm="norm")
        opt.step()
        self.previous_agreement = float(agreement)
        self.log_dict({"loss": loss.detach(), "agreement": agreement}, prog_bar=True, on_step=True)
        return loss.detach()

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, masks = batch
        with torch.no_grad():
            pred, own = self.orig(x).argmax(1), self.learn(x).argmax(1)
        agree = own == pred
        targets, reference = explained(self.cfg, own, pred, y)
        gen = torch.Generator(device=x.device).manual_seed(derive_seed(self.cfg.seed, "validation", batch_idx))
        with torch.enable_grad():
            scores = self.metric.evaluate(self.learn, x, targets, self.explain_learn, masks, gen, reference)
        self.val_scores.append(scores.detach().double().cpu())
        self.val_agree.append(agree.double().cpu())

    def on_validation_epoch_end(self) -> None:
        scores, agree = torch.cat(self.val_scores), torch.cat(self.val_agree)
        self.val_scores, self.val_agree = [], []
        score, agreement = float(scores.nanmean()), float(agree.mean())
        good = score if self.metric.higher_is_better else -score
        qualifies = qualifying(self.cfg, agreement) and math.isfinite(good)
        self.summary = {"step": int(self.global_step), "metric": score, "agreement": agreement}
        self.log_dict({"val_metric": score, "val_agreement": agreement,
                       "val_select": good if qualifies else -math.inf}, prog_bar=True)


class ValidationLog(Callback):
    """One row per validation in ``log.csv``; its rows are part of Lightning's checkpoint (resume
    continues the same log)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, float]] = []
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: HarmonyModule) -> None:
        if trainer.sanity_checking or not pl_module.summary:
            return
        row = {**pl_module.summary, "seconds": time.perf_counter() - self._start}
        self.rows = [r for r in self.rows if r["step"] != row["step"]] + [row]
        write_atomic(self.out / LOG_FILE, lambda p: self.table().to_csv(p, index=False))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: HarmonyModule) -> None:
        self._start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(LOG_COLUMNS)).astype({"step": "int64"})

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


# --- evaluation -------------------------------------------------------------------------------------


def _scores(model: nn.Module, orig: nn.Module, cfg: FinetuneConfig, metric: LearnableMetric, data: Dataset,
            device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(metric scores, same prediction as the original [bool], correct [bool]) of `model` on `data`."""
    explain = method_maps(cfg, model)
    scores, agree, correct = [], [], []
    loader = DataLoader(data, batch_size=max(cfg.batch_size, 32) // 4 * 4, shuffle=False, drop_last=cfg.metric == "focus")
    for b, (x, y, masks) in enumerate(loader):
        x, y, masks = x.to(device), y.to(device), masks.to(device)
        with torch.no_grad():
            pred_orig, pred = orig(x).argmax(1), model(x).argmax(1)
        targets, reference = explained(cfg, pred, pred_orig, y)
        gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "evaluation", b))
        scores.append(metric.evaluate(model, x, targets, explain, masks, gen, reference).detach().double().cpu())
        agree.append((pred == pred_orig).cpu())
        correct.append((pred == y).cpu())
    return torch.cat(scores).numpy(), torch.cat(agree).numpy(), torch.cat(correct).numpy()


def evaluate(learn: nn.Module, orig: nn.Module, cfg: FinetuneConfig, metric: LearnableMetric, data: Dataset,
             device: torch.device) -> dict[str, Any]:
    """Original vs fine-tuned on held-out data: means with bootstrap CIs, the paired difference with
    its CI and Wilcoxon signed-rank p-value (pairs where both scores are defined), agreement, accuracy."""
    from scipy import stats

    before, _, correct_before = _scores(orig, orig, cfg, metric, data, device)
    after, agree, correct_after = _scores(learn, orig, cfg, metric, data, device)
    both = np.isfinite(before) & np.isfinite(after)
    n_boot = cfg.evaluation["bootstrap"]

    def summary(values: np.ndarray) -> dict[str, Any]:
        ci = bootstrap_ci(MeanStatistic(), values, n_boot=n_boot, seed=cfg.seed)
        return {"mean": float(values.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high)}

    diff = after[both] - before[both]
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    improved = diff.mean() > 0 if metric.higher_is_better else diff.mean() < 0
    return {
        "metric": cfg.metric, "method": cfg.method, "higher_is_better": metric.higher_is_better,
        "n": int(both.sum()), "n_undefined": int((~both).sum()),
        "original": summary(before[both]), "finetuned": summary(after[both]),
        "difference": summary(diff), "wilcoxon_p": p, "improved": bool(improved),
        "agreement": float(agree.mean()),
        "accuracy_original": float(correct_before.mean()), "accuracy_finetuned": float(correct_after.mean()),
        "n_images": int(len(correct_before)), "config_hash": cfg.hash, "seed": cfg.seed,
        "versions": {"torch": torch.__version__, "lightning": pl.__version__},
    }


@dataclass(frozen=True)
class Gallery:
    """Original vs fine-tuned maps of held-out images (HARMONY's figures), as data for a figure:
    images [N, C, H, W] in [0, 1], maps {"original", "fine-tuned"} -> [N, H, W], masks bool
    [N, H, W] or None, one title per image (all on the CPU)."""

    images: Tensor
    maps: dict[str, Tensor]
    masks: Tensor | None
    titles: list[str]


def gallery(learn: nn.Module, orig: nn.Module, cfg: FinetuneConfig, metric: LearnableMetric, data: Dataset,
            device: torch.device) -> Gallery | None:
    """The `Gallery` of `evaluation.gallery` images: mosaics for HARMONY's Focus, images otherwise
    (None when the config asks for none)."""
    n = cfg.evaluation["gallery"]
    if n < 1:
        return None
    group = 4 if cfg.metric == "focus" else 1  # four images per mosaic
    x, _, masks = next(iter(DataLoader(data, batch_size=min(group * n, len(data)) // group * group)))
    x, masks = x.to(device), masks.to(device)
    with torch.no_grad():
        pred = orig(x).argmax(1)
    if cfg.metric == "focus":
        mosaic, cls, tile = metric.mosaics(orig, x)  # type: ignore[attr-defined]
        x, pred, masks = mosaic, cls, tile
    maps = {name: method_maps(cfg, model)(x, pred).cpu()
            for name, model in (("original", orig), ("fine-tuned", learn))}
    return Gallery(x.cpu(), maps, masks.cpu() if masks.any() else None, [f"class {int(c)}" for c in pred])


def load_gallery(out_dir: str | Path) -> Gallery | None:
    """The `Gallery` a fine-tuning wrote to `out_dir` (None when it wrote none)."""
    path = Path(out_dir) / GALLERY_FILE
    return Gallery(**torch.load(path, weights_only=True)) if path.is_file() else None


# --- finetune ----------------------------------------------------------------------------------------


def as_finetune_config(config: FinetuneConfig | Mapping[str, Any] | str | Path) -> FinetuneConfig:
    if isinstance(config, FinetuneConfig):
        return config
    if isinstance(config, Mapping):
        return parse_finetune_config(copy.deepcopy(dict(config)))
    return load_finetune_config(config)


def finetune(config: FinetuneConfig | Mapping[str, Any] | str | Path, out_dir: str | Path, *, resume: bool = False,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune the model of `config` for its metric and method into `out_dir` (see the module doc).

    ``resume=True`` continues an interrupted run (same config hash) from ``checkpoints/last.ckpt``
    and returns a finished one as it is.
    """
    cfg = as_finetune_config(config)
    out = Path(out_dir)
    check_out(cfg, out / CONFIG_FILE, resume, load_finetune_config, "fine-tuning")
    if resume and (out / EVALUATION_FILE).is_file():
        return FinetuneResult(out / MODEL_FILE, pd.read_csv(out / LOG_FILE),
                              json.loads((out / EVALUATION_FILE).read_text()), cfg.hash)
    metric = LEARNABLE.get(cfg.metric)(preset=cfg.preset, **cfg.metric_params)
    accelerator, device_ids = lightning_accelerator(cfg.device)
    with isolated(quiet=not progress), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # on purpose, see HarmonyModule.train
        warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")  # EpochOrder continues it
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        train_pairs, val_pairs, _ = split_data(cfg)  # type: ignore[arg-type]
        dataset = train_pairs.dataset
        mask = mask_name(cfg, metric, dataset[train_pairs.indices[0]])
        train_set, val_set = MaskedImages(dataset, train_pairs.indices, mask), MaskedImages(dataset, val_pairs.indices, mask)
        orig = load_model(cfg.model["spec"], device="cpu").eval()
        learn = copy.deepcopy(orig)
        module = HarmonyModule(learn, orig, cfg, metric, train_set, val_set)
        _probe(module, train_set)
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        write_atomic(out / CONFIG_FILE, lambda p: p.write_text(cfg.to_toml()))
        log = ValidationLog(out)
        best = ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="best", monitor="val_select", mode="max",
                               save_top_k=1, save_last=True, enable_version_counter=False)
        harmony = cfg.preset == "harmony"
        per_epoch = cfg.metric == "relevance_mass_accuracy"  # HARMONY's RMA loop counts batches per epoch
        trainer = pl.Trainer(
            accelerator=accelerator, devices=device_ids or 1, max_steps=cfg.iterations + int(harmony and not per_epoch),
            max_epochs=-1, val_check_interval=cfg.val_every, check_val_every_n_epoch=None,
            limit_val_batches=cfg.val_batches + harmony, callbacks=[log, best, *progress_callbacks(progress)], logger=False,
            default_root_dir=out,
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0, inference_mode=False,
        )
        if harmony:
            harmony_schedule(trainer, cfg.val_every, per_epoch)
        start = resume_checkpoint(out / CHECKPOINTS / LAST, (out / CHECKPOINTS / BEST,)) if resume else None
        if start is not None:
            trainer.fit(module, ckpt_path=start)
        else:
            trainer.validate(module, verbose=False)  # step 0: the original's score, logged by ValidationLog
            trainer.fit(module)
        table = log.table()
        device = module.device
        selected = _select(module, best, table, cfg)
        if selected == 0:
            ran = int((table["step"] > 0).sum())
            warnings.warn(f"fine-tuning kept the original weights: {ran} validation(s) after step 0 "
                          + ("and none improved the metric with the required agreement" if ran else
                             f"(none is scheduled within {cfg.iterations} iterations at val_every = {cfg.val_every}"
                             + (", HARMONY's schedule validates after update val_every + 1" if harmony else "") + ")"),
                          stacklevel=2)
        table["selected"] = table["step"] == selected
        save_model(module.learn, out / MODEL_FILE, spec=arch_spec(cfg.model["spec"]))
        write_atomic(out / LOG_FILE, lambda p: table.to_csv(p, index=False))
        test = held_out(cfg, mask)
        result = evaluate(module.learn, module.orig, cfg, metric, test, device)
        result["selected_step"] = selected
        shown = gallery(module.learn, module.orig, cfg, metric, test, device)
        if shown is not None:
            write_atomic(out / GALLERY_FILE, lambda p: torch.save(asdict(shown), p))
        write_atomic(out / EVALUATION_FILE, lambda p: p.write_text(json.dumps(result, indent=2)))
    return FinetuneResult(out / MODEL_FILE, table, result, cfg.hash)


def harmony_schedule(trainer: pl.Trainer, every: int, per_epoch: bool) -> None:
    """Validate after the update of 0-based index i when i > 0 and i % `every` == 0 (HARMONY's
    ``if i > 0 and i % eval_every == 0`` after the update; `per_epoch`: i counts the epoch's batches).
    Lightning's own rule (after every `every`-th update) has no offset, so its check is replaced
    (a private hook of Lightning 2.x's training epoch loop, checked by the tests)."""
    loop = trainer.fit_loop.epoch_loop

    def should_check(data_fetcher: Any) -> bool:
        i = loop.batch_idx if per_epoch else loop.total_batch_idx
        return i > 0 and i % every == 0

    loop._should_check_val_fx = should_check  # type: ignore[method-assign]


def _probe(module: HarmonyModule, data: Dataset) -> None:
    """One loss on a small batch before anything is written: a missing CAM layer, a model the
    method cannot explain or masks of the wrong shape fail here with their own error."""
    n = min(4, len(data))
    x, y, masks = next(iter(DataLoader(data, batch_size=n)))
    with torch.no_grad():
        pred = module.orig(x).argmax(1)
    z = module.learn(x)
    module.metric_term(x, pred, masks, z, torch.tensor(1.0), torch.Generator().manual_seed(0))


def _select(module: HarmonyModule, best: ModelCheckpoint, table: pd.DataFrame, cfg: FinetuneConfig) -> int:
    """Load the selected weights into ``module.learn``; returns their step (0: the original's weights)."""
    score = best.best_model_score
    if score is None or not math.isfinite(float(score)) or not Path(best.best_model_path).is_file():
        module.learn.load_state_dict(module.orig.state_dict())
        return 0
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    weights = {k[len("learn."):]: v for k, v in state["state_dict"].items() if k.startswith("learn.")}
    module.learn.load_state_dict(weights)
    return int(state["global_step"])
