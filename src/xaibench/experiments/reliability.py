"""Benchmark reliability under training settings (Gomez & Mouchère, arXiv 2311.17876).

Does the way a model is trained make a faithfulness benchmark more reliable? For each training
setting (Baseline, FP, AP, FL and their combinations; `xaibench.training`) the same architecture is
trained by the same trainer (``repeats`` models per setting: model k of every setting has training
seed ``[train].seed + k``, so the settings share initialisation and batch order), then the paper's
benchmark runs through the runner on the same test images:

- method groups (ranked within a group): CAM (CAM, Grad-CAM, Grad-CAM++, Score-CAM), back-propagation
  (VarGrad, SmoothGrad, Integrated Gradients, Guided Backprop), perturbation (feature permutation,
  feature ablation, occlusion, RISE);
- metrics: DAUC, IAUC (deletion / insertion with raw areas, black and box-blur baselines), DC, IC and
  their non-cumulative variants DC-nc, IC-nc, AD, ADD; and the validity rates of their code
  (``dauc_vr``, ``iauc_vr``: the share of curve steps where the score falls / rises; ``ad_vr``,
  ``add_vr``: the share of images where the masked score rises / falls), reported per setting,
  not ranked; the four step-wise metrics take one
  feature-map cell per step (the paper), or ``steps`` steps of ``cells // steps`` cells when the
  config sets ``steps`` (to bound the cost: each step is one forward per image and method);
- maps at feature-map resolution: the CAM group's maps stay at the layer's native h x w; the other
  groups' input-resolution maps are ranked by ``cell x cell`` patches, ``cell = ceil(H / h)`` (the
  patch sum ranks as the map average-pooled to h x w), and their perturbations use a cell-sized
  ``patch`` (feature permutation, feature ablation) and a 2-cell window with a one-cell stride
  (occlusion) unless [methods.<name>] says otherwise. AD and ADD use each map as it is (their soft
  mask is the map upsampled bicubically): for the two input-resolution groups that is a finer mask
  than the paper's.

Statistics per (setting, group, metric), all over the test images (bootstrap resamples of images):

- Krippendorff's alpha (ordinal) of the per-image method rankings, averaged over the setting's
  models, with a BCa interval at ``level`` (default 99%) from ``n_boot`` resamples (the same image
  resamples for every setting: seed = experiment seed); images where a method has no score on any
  of the setting's models are left out (counted in ``n_images``);
- the difference to Baseline (x 100) of alpha and of each method's mean score, on the images both
  settings have, by a paired bootstrap over images (`xaibench.reliability.paired_bootstrap`: the same
  image resamples on both sides), with its percentile interval at ``level`` and a bootstrap p-value
  adjusted over every comparison of the table (``correction``: "holm", default, or "bh");
  significant when the adjusted p < 1 - level. With ``repeats`` >= 2 the spread between seeds (the
  larger range of per-model alphas of the two settings) is reported, and an alpha difference counts as
  an *effect* only when it is significant and larger than that spread;
- the paper's significance procedure, for reproduction only (``paper_*`` columns): Shapiro-Wilk on the
  two bootstrap distributions of alpha; if either rejects normality (p < 0.05), the Mann-Whitney U
  test (also when a distribution is constant), else Levene's test (scipy's default, median-centred)
  chooses Student's (p >= 0.05) or Welch's t-test; significant when p < 0.05. It overstates
  significance (`compare_bootstrap`): the replicates are not independent observations of new images,
  so its p-values shrink as ``n_boot`` grows, and it has no multiple-comparison correction;
- Gomez et al.'s minimum benchmark size (`xaibench.reliability.minimum_benchmark_size`, 95%,
  even-count rule) divided by the number of images, averaged over the setting's models;
- accuracy, ECE and AdaECE of each model on the whole test split, and the methods' mean scores
  and ranks per setting.

``data_randomisation = true`` adds Adebayo et al.'s data randomisation test: model k is also
trained in the Baseline setting on labels permuted with its seed, and every method's maps of the
two models are compared on the benchmark images for the true label (Spearman and SSIM,
`xaibench.metrics.data_randomisation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.config import section, suggest
from xaibench.devices import model_device
from xaibench.errors import InputError, UnknownNameError
from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Plot,
    Recipe,
    Step,
    StepContext,
    Table,
    Text,
    located_path,
    stored_path,
)
from xaibench.reliability import (
    CORRECTION_NAMES,
    AlphaStatistic,
    MeanStatistic,
    accuracy_check,
    adjust_p,
    bootstrap_ci,
    first_place_rates,
    krippendorff_alpha,
    minimum_benchmark_size,
    paired_bootstrap,
    per_image_ranks,
)

GROUPS: dict[str, list[str]] = {
    "cam": ["cam", "gradcam", "gradcam_plus_plus", "scorecam"],
    "backprop": ["vargrad", "smoothgrad", "integrated_gradients", "guided_backprop"],
    "perturbation": ["feature_permutation", "feature_ablation", "occlusion", "rise"],
}
METRICS = ("dauc", "iauc", "dc", "ic", "dc_nc", "ic_nc", "ad", "add", "dauc_vr", "iauc_vr", "ad_vr", "add_vr")
VALIDITY = ("dauc_vr", "iauc_vr", "ad_vr", "add_vr")  # validity rates: reported, not ranked
BASELINE = "baseline"
SIGNIFICANCE = 0.05

BENCHMARK: dict[str, tuple[tuple[type, ...], Any]] = {
    "spec": ((str,), None),  # default: the training data set
    "split": ((str,), "test"),
    "n": ((int,), 100),
    "image_size": ((int,), None),
    "target": ((str,), "predicted"),
    "shard_size": ((int,), 50),
    "explain_batch": ((int,), 50),
    "max_batch": ((int,), 512),
}


# --- config ----------------------------------------------------------------------------------


def _unknown(kind: str, value: str, known: list[str]) -> UnknownNameError:
    return UnknownNameError(f"config {kind}: unknown {value!r}.{suggest(value, known)} Known: {', '.join(known)}.")


def settings(cfg: ExperimentConfig) -> list[str]:
    """The canonical setting names of the config, Baseline first."""
    from xaibench.training import SETTINGS

    out = []
    for value in cfg["settings"]:
        if not isinstance(value, str):
            raise InputError(f"config settings: expected setting names, got {value!r}")
        parts = frozenset(p.strip() for p in value.lower().split("+"))
        name = next((n for n, known in SETTINGS.items() if parts == known or parts == {n}), None)
        if name is None:
            raise _unknown("settings", value, list(SETTINGS))
        if name in out:
            raise InputError(f"config settings: {value!r} is listed twice")
        out.append(name)
    if BASELINE not in out:
        raise InputError("config settings: 'baseline' is required (every setting is compared with it)")
    return [BASELINE] + [s for s in out if s != BASELINE]


def groups(cfg: ExperimentConfig) -> dict[str, list[str]]:
    table = cfg["groups"] if cfg["groups"] is not None else GROUPS
    for group, methods in table.items():
        if not isinstance(methods, list) or len(methods) < 2 or not all(isinstance(m, str) for m in methods):
            raise InputError(f"config groups.{group}: a list of at least 2 method names is required, got {methods!r}")
    return {g: list(m) for g, m in table.items()}


def metrics(cfg: ExperimentConfig) -> list[str]:
    chosen = list(cfg["metrics"])
    for m in chosen:
        if m not in METRICS:
            raise _unknown("metrics", str(m), list(METRICS))
    return chosen


def benchmark(cfg: ExperimentConfig) -> dict[str, Any]:
    table = section("[benchmark].", cfg["benchmark"], BENCHMARK)
    train_data = cfg["train"].get("data", {})
    table["spec"] = table["spec"] or train_data.get("spec")
    if table["image_size"] is None:
        table["image_size"] = train_data.get("image_size")
    return table


def train_config(cfg: ExperimentConfig, setting: str, k: int, permuted: bool = False) -> dict[str, Any]:
    """The trainer config of model k of `setting` (label-permuted twin when `permuted`)."""
    base = {"selection": "gomez", **cfg["train"]}  # the paper's model selection unless [train] names one
    seed = int(base.get("seed", 0)) + k
    return {**base, "seed": seed, "device": cfg.device, "setting": setting, "label_permutation": permuted}


def models(cfg: ExperimentConfig) -> list[tuple[str, str, int, bool]]:
    """(label, setting, k, permuted) of every model to train."""
    out = [(f"{s}-s{k}", s, k, False) for s in settings(cfg) for k in range(cfg["repeats"])]
    if cfg["data_randomisation"]:
        out += [(f"permuted-s{k}", BASELINE, k, True) for k in range(cfg["repeats"])]
    return out


def method_params(cfg: ExperimentConfig, method: str, cell: int) -> dict[str, Any]:
    """Explainer parameters of `method` at feature-map resolution, then the config's [methods.<name>]."""
    from xaibench.explainers import METHODS

    info = METHODS.get(method)
    own: dict[str, Any] = {}
    if info.resolution == "layer" and "upsample" in info.params:
        own["upsample"] = False
    if method in ("feature_permutation", "feature_ablation"):
        own["patch"] = cell
    if method == "occlusion":
        own.update(window=2 * cell, stride=cell)
    return {**own, **cfg["methods"].get(method, {})}


def metric_tables(native: bool, cell: int, steps: int, chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Runner [metrics] tables: ranking by feature-map cells (native maps: their pixels; else patches),
    `steps` perturbation steps (DAUC, IAUC, DC, IC)."""
    rank: dict[str, Any] = {"resample": "rank_native", "steps": steps} | ({} if native else {"patch_size": cell})
    tables = {
        "dauc": {"metric": "deletion", "normalize": None, "baseline": "black", **rank},
        "iauc": {"metric": "insertion", "normalize": None, "baseline": "box_blur", **rank},
        "dc": {"metric": "deletion_correlation", **rank},
        "ic": {"metric": "insertion_correlation", **rank},
        "dc_nc": {"metric": "deletion_correlation", "cumulative": False, **rank},
        "ic_nc": {"metric": "insertion_correlation", "cumulative": False, **rank},
        "ad": {"metric": "average_drop"},
        "add": {"metric": "average_drop_in_deletion"},
        "dauc_vr": {"metric": "deletion_validity_rate", "baseline": "black", **rank},
        "iauc_vr": {"metric": "insertion_validity_rate", "baseline": "box_blur", **rank},
        "ad_vr": {"metric": "average_drop_validity_rate"},
        "add_vr": {"metric": "average_drop_in_deletion_validity_rate"},
    }
    return {m: tables[m] for m in chosen}


def run_config(cfg: ExperimentConfig, model_spec: str, group: str, grid: tuple[int, int, int]) -> dict[str, Any]:
    """The runner config of one group for one model; `grid` = (input side, feature-map h, w)."""
    from xaibench.explainers import METHODS

    side, h, w = grid
    cell = math.ceil(side / max(h, w))
    methods = groups(cfg)[group]
    native = all(METHODS.get(m).resolution == "layer" for m in methods)
    bench = benchmark(cfg)
    return {
        "name": group,
        "target": bench["target"],
        "shard_size": bench["shard_size"],
        "explain_batch": bench["explain_batch"],
        "max_batch": bench["max_batch"],
        "model": {"spec": model_spec},
        "data": {"spec": bench["spec"], "split": bench["split"], "n": bench["n"], "seed": cfg.seed,
                 "image_size": bench["image_size"]},
        "methods": {m: {"method": m, **method_params(cfg, m, cell)} for m in methods},
        "metrics": metric_tables(native, cell, min(cfg["steps"] or h * w, h * w), metrics(cfg)),
    }


def validate(cfg: ExperimentConfig) -> None:
    from xaibench.explainers import METHODS
    from xaibench.runner import parse_config
    from xaibench.training import parse_train_config

    if cfg["repeats"] < 1:
        raise InputError(f"config repeats: must be >= 1, got {cfg['repeats']}")
    if cfg["correction"] not in CORRECTION_NAMES:
        raise InputError(f"config correction: expected one of {', '.join(CORRECTION_NAMES)}, got {cfg['correction']!r}")
    for label, setting, k, permuted in models(cfg):
        try:
            parse_train_config(train_config(cfg, setting, k, permuted))
        except InputError as err:
            raise type(err)(f"[train] ({label}): {err}") from None
    if cfg["steps"] is not None and cfg["steps"] < 2:
        raise InputError(f"config steps: must be >= 2, got {cfg['steps']}")
    if cfg["n_boot"] < 100:
        raise InputError(f"config n_boot: at least 100 resamples are needed, got {cfg['n_boot']}")
    if not 0.5 < cfg["level"] < 1:
        raise InputError(f"config level: must be in (0.5, 1), got {cfg['level']}")
    listed = {m for ms in groups(cfg).values() for m in ms}
    for method in listed:
        try:
            METHODS.get(method)
        except UnknownNameError as err:
            raise UnknownNameError(f"config groups: {err}") from None
    for method in cfg["methods"]:
        if method not in listed:
            raise _unknown("[methods]", method, sorted(listed))
    for group in groups(cfg):
        parse_config({"seed": cfg.seed, **run_config(cfg, cfg["train"]["model"]["spec"], group, (32, 8, 8))})
    bench = benchmark(cfg)
    if bench["spec"] is None:
        raise InputError("config [benchmark].spec: no data set (and none in [train.data])")
    if any("feature_permutation" in ms for ms in groups(cfg).values()):
        _check_batches(bench, cfg["data_randomisation"])


def _check_batches(bench: Mapping[str, Any], whole: bool) -> None:
    """Feature permutation needs >= 2 images in every explainer call: the runner's (explain_batch within
    each shard) and, with `whole`, the data randomisation test's (explain_batch over all images)."""
    from xaibench.data import load_dataset

    kw = {"image_size": bench["image_size"]} if bench["image_size"] else {}
    n = bench["n"] or len(load_dataset(bench["spec"], split=bench["split"], **kw))
    sizes = [min(bench["shard_size"], n - s) for s in range(0, n, bench["shard_size"])]
    calls = [min(bench["explain_batch"], z - s) for z in sizes + [n] * whole for s in range(0, z, bench["explain_batch"])]
    if min(calls) < 2:
        raise InputError(f"config [benchmark]: with n = {n}, shard_size = {bench['shard_size']} and explain_batch = "
                         f"{bench['explain_batch']} an explainer call gets 1 image, and feature_permutation needs "
                         "2; change n, shard_size or explain_batch")


# --- steps -------------------------------------------------------------------------------------


def _train_step(label: str, setting: str, k: int, permuted: bool):  # noqa: ANN202 - a Step.run
    def run(ctx: StepContext) -> None:
        from xaibench.training import train

        result = train(train_config(ctx.cfg, setting, k, permuted), ctx.folder / "model")
        ctx.write_table(f"training_{label}", pd.DataFrame([{
            "model": label, "setting": setting, "model_seed": k, "label_permutation": permuted,
            "model_path": stored_path(ctx.root, result.model_path), "best_epoch": int(result.best_epoch),
            "train_config_hash": result.config_hash,
        }]))
        log = result.log.copy()
        log.insert(0, "model", label)
        ctx.write_table(f"training_log_{label}", log)

    return run


def _trained(exp: ExperimentDir, label: str) -> dict[str, Any]:
    """The training row of model `label`, its ``model_path`` located where the experiment is now."""
    row = exp.table(f"training_{label}").iloc[0].to_dict()
    return {**row, "model_path": str(located_path(exp.root, row["model_path"]))}


def _load(path: str, device: str) -> torch.nn.Module:
    from xaibench.models import load_model

    return load_model(f"file:{path}").to(device).eval()


def _test_tensors(cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from xaibench.data import collate, load_dataset

    bench = benchmark(cfg)
    kw = {"image_size": bench["image_size"]} if bench["image_size"] else {}
    batch = collate(list(load_dataset(bench["spec"], split=bench["split"], **kw)))
    return batch.images, batch.labels


def calibration(ctx: StepContext) -> None:
    """Accuracy, ECE and AdaECE of every trained model on the whole test split."""
    from xaibench.training.calibration import adaptive_calibration_error, expected_calibration_error

    images, labels = _test_tensors(ctx.cfg)
    rows = []
    for label, setting, k, permuted in models(ctx.cfg):
        info = _trained(ctx.experiment, label)
        model = _load(info["model_path"], ctx.cfg.device)
        with torch.no_grad():
            probs = torch.cat([model(images[s:s + 256].to(ctx.cfg.device)).softmax(1).cpu()
                               for s in range(0, len(labels), 256)])
        rows.append({"model": label, "setting": setting, "model_seed": k, "label_permutation": permuted,
                     "accuracy": float((probs.argmax(1) == labels).float().mean()),
                     "ece": float(expected_calibration_error(probs, labels)),
                     "adaece": float(adaptive_calibration_error(probs, labels)),
                     "confidence": float(probs.max(1).values.mean()),
                     "best_epoch": info["best_epoch"], "n_images": len(labels)})
    ctx.write_table("calibration", pd.DataFrame(rows))


def feature_grid(model: torch.nn.Module, image: torch.Tensor) -> tuple[int, int, int]:
    """(input side, h, w) of the model's CAM layer for one image [C, H, W]."""
    from xaibench.explainers.cam import find_layer, get_module

    x = image[None].to(model_device(model))
    store: list[torch.Tensor] = []
    hook = get_module(model, find_layer(model, x)).register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return max(x.shape[-2:]), int(store[0].shape[-2]), int(store[0].shape[-1])


def run_benchmarks(ctx: StepContext) -> None:
    """The benchmark of every group for every (non-permuted) model, through the runner."""
    from xaibench.store import load_results

    images, _ = _test_tensors(ctx.cfg)
    frames = []
    for label, setting, k, permuted in models(ctx.cfg):
        if permuted:
            continue
        path = _trained(ctx.experiment, label)["model_path"]
        grid = feature_grid(_load(path, ctx.cfg.device), images[0])
        for group in groups(ctx.cfg):
            ctx.log(f"{label}: {group} (feature map {grid[1]}x{grid[2]})")
            out = ctx.run_benchmark(f"{label}-{group}", run_config(ctx.cfg, f"file:{path}", group, grid))
            rows = load_results(out)[["image_id", "method", "metric", "score", "higher_is_better", "nan_reason"]]
            frames.append(rows.assign(setting=setting, model_seed=k, group=group))
    ctx.write_table("scores", pd.concat(frames, ignore_index=True))


def statistics(ctx: StepContext) -> None:
    scores = ctx.experiment.table("scores")
    rates = scores["metric"].isin(VALIDITY)
    ctx.write_table("validity", validity_table(scores[rates]))
    alpha, diffs, sizes, ranks, score_diffs = reliability_tables(
        scores[~rates], settings(ctx.cfg), level=ctx.cfg["level"], n_boot=ctx.cfg["n_boot"], seed=ctx.cfg.seed,
        correction=ctx.cfg["correction"])
    ctx.write_table("alpha", alpha)
    ctx.write_table("alpha_difference", diffs)
    ctx.write_table("score_difference", score_diffs)
    ctx.write_table("benchmark_size", sizes)
    ctx.write_table("rankings", ranks)


def data_randomisation(ctx: StepContext) -> None:
    """Adebayo's test: each method's maps of model k and of its label-permuted twin, true-label class."""
    from xaibench.data import collate, load_dataset
    from xaibench.metrics.data_randomisation import data_randomisation_test
    from xaibench.runner.shard import select_positions

    bench = benchmark(ctx.cfg)
    kw = {"image_size": bench["image_size"]} if bench["image_size"] else {}
    dataset = load_dataset(bench["spec"], split=bench["split"], **kw)
    batch = collate([dataset[i] for i in select_positions(len(dataset), bench["n"], ctx.cfg.seed)])
    x, t = batch.images.to(ctx.cfg.device), batch.labels.to(ctx.cfg.device)
    rows = []
    for k in range(ctx.cfg["repeats"]):
        trained = _load(_trained(ctx.experiment, f"{BASELINE}-s{k}")["model_path"], ctx.cfg.device)
        permuted = _load(_trained(ctx.experiment, f"permuted-s{k}")["model_path"], ctx.cfg.device)
        grid = feature_grid(trained, batch.images[0])
        for group, methods in groups(ctx.cfg).items():
            for method in methods:
                # maps at input resolution (SSIM's 7x7 window); the same seed for both models: same draws
                params = method_params(ctx.cfg, method, math.ceil(grid[0] / max(grid[1:])))
                params.update({"upsample": True} if "upsample" in params else {})
                res = data_randomisation_test(trained, permuted, x, t, method, batch=bench["explain_batch"],
                                              max_batch=bench["max_batch"], **params)
                rows.append(pd.DataFrame({"model_seed": k, "group": group, "method": method, "image_id": batch.ids,
                                          "spearman": res.spearman.cpu().numpy(), "ssim": res.ssim.cpu().numpy()}))
    ctx.write_table("data_randomisation", pd.concat(rows, ignore_index=True))


def plan(cfg: ExperimentConfig) -> list[Step]:
    """Train the settings' models, benchmark them, statistics; then the label-permuted twins (if asked),
    calibration of every model and the data randomisation test."""
    steps = [Step(f"train-{label}", _train_step(label, s, k, p)) for label, s, k, p in models(cfg) if not p]
    trained = tuple(step.name for step in steps)
    steps += [Step("benchmark", run_benchmarks, needs=trained), Step("statistics", statistics, needs=("benchmark",))]
    twins = [Step(f"train-{label}", _train_step(label, s, k, p)) for label, s, k, p in models(cfg) if p]
    steps += [*twins, Step("calibration", calibration, needs=trained + tuple(t.name for t in twins))]
    if twins:
        steps.append(Step("data-randomisation", data_randomisation, needs=trained + tuple(t.name for t in twins)))
    return steps


# --- statistics (pure functions of the scores table) --------------------------------------------


class SeedMeanAlpha:
    """Mean over models of Krippendorff's alpha: ranks [n_images, n_models, n_methods] as a bootstrap
    statistic (images resampled jointly for every model; `weighted` as `AlphaStatistic`)."""

    def __init__(self, level: str = "ordinal") -> None:
        self.alpha = AlphaStatistic(level)

    def __call__(self, batch: np.ndarray) -> np.ndarray:  # [B, n, S, M] -> [B]
        return np.asarray(krippendorff_alpha(np.moveaxis(batch, 2, 1), self.alpha.level)).mean(-1)

    def weighted(self, data: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.mean([self.alpha.weighted(data[:, s], counts) for s in range(data.shape[1])], axis=0)


def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] counts of each image in each resample; the draws of `xaibench.reliability.bootstrap_ci`."""
    index = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    flat = (index + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def compare_bootstrap(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """(p, test) of the paper's procedure on two bootstrap distributions (see the module doc), kept to
    reproduce the paper. It overstates significance: it treats the B replicates of each side as B
    independent observations, so its p-value shrinks as B grows (any difference becomes significant
    with enough resamples), it ignores that both sides are computed on the same images, and nothing
    corrects for the many comparisons. The verdicts use `xaibench.reliability.paired_bootstrap`."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 3 or b.size < 3:
        return float("nan"), "undefined: fewer than 3 finite replicates"
    # A constant distribution (alpha = 1 on every resample) is not normal: Shapiro is undefined there.
    if np.ptp(a) == 0 or np.ptp(b) == 0 or min(stats.shapiro(a).pvalue, stats.shapiro(b).pvalue) < SIGNIFICANCE:
        return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue), "mann-whitney"
    equal = stats.levene(a, b).pvalue >= SIGNIFICANCE
    return float(stats.ttest_ind(a, b, equal_var=bool(equal)).pvalue), "student" if equal else "welch"


def _rank_array(sub: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str], int, np.ndarray, np.ndarray]:
    """(ranks [n_images, n_models, n_methods] on the images complete for every model, methods, seeds,
    number of images left out, those images' ids, their scores averaged over the models [n_images, n_methods])."""
    hib = bool(sub["higher_is_better"].iloc[0])
    methods = list(pd.unique(sub["method"]))
    seeds = sorted(pd.unique(sub["model_seed"]))
    wide = sub.pivot_table(index="image_id", columns=["model_seed", "method"], values="score", aggfunc="first",
                           dropna=False)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([seeds, methods]))
    x = wide.to_numpy(dtype=np.float64).reshape(len(wide), len(seeds), len(methods))
    complete = ~np.isnan(x).any(axis=(1, 2))
    x = x[complete]
    ranks = np.stack([per_image_ranks(x[:, s], hib) for s in range(len(seeds))], 1) if len(x) else x
    return ranks, methods, seeds, int((~complete).sum()), wide.index.to_numpy()[complete], x.mean(1)


def seed_spread(ranks: np.ndarray) -> float:
    """Range (max - min) of the per-model alphas of ranks [n_images, n_models, n_methods]; NaN for one model."""
    if ranks.shape[1] < 2:
        return float("nan")
    return float(np.ptp(np.asarray(krippendorff_alpha(np.moveaxis(ranks, 1, 0), "ordinal"))))


def _effect(significant: bool, difference: float, spread: float) -> str:
    if not np.isfinite(difference):
        return "undefined"
    if not significant:
        return "not significant"
    if not np.isfinite(spread):
        return "significant; seed spread unknown (one model per setting)"
    return "effect" if abs(difference) > spread else "within the spread between seeds"


def validity_table(rates: pd.DataFrame) -> pd.DataFrame:
    """Mean validity rate per (setting, group, metric): over the images of each method and model
    (Gomez & Mouchère's pooled rate), then over the methods; ``n`` the defined per-image values."""
    columns = ["setting", "group", "metric", "validity_rate", "n"]
    if rates.empty:
        return pd.DataFrame(columns=columns)
    keys = ["setting", "group", "metric"]
    per_method = rates.groupby([*keys, "method"], sort=False)["score"].agg(["mean", "count"]).reset_index()
    out = per_method.groupby(keys, sort=False).agg(validity_rate=("mean", "mean"), n=("count", "sum")).reset_index()
    return out[columns]


def reliability_tables(scores: pd.DataFrame, setting_order: list[str], *, level: float = 0.99, n_boot: int = 1000,
                       seed: int = 0, correction: str = "holm"
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(alpha, alpha_difference, benchmark_size, rankings, score_difference) tables from the tidy scores
    (columns setting, model_seed, group, metric, method, image_id, score, higher_is_better).

    Each setting is compared with Baseline on the images both have complete: the difference in the
    models' mean alpha (x100) and in each method's mean score (averaged over the models), by a paired
    bootstrap over images (`xaibench.reliability.paired_bootstrap`, the same resamples for both
    settings), p-values adjusted with ``correction`` over every row of the table; significant when the
    adjusted p < 1 - level (the interval at the corrected level excludes 0). An alpha difference is
    an ``effect`` only when it is significant and larger than the spread between seeds (the larger
    range of per-model alphas of the two settings; unknown with one model per setting). The paper's
    replicate test (`compare_bootstrap`) is kept in the ``paper_*`` columns, uncorrected."""
    alpha_rows, size_rows, rank_rows = [], [], []
    boots: dict[tuple[str, str, str], np.ndarray] = {}
    arrays: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, list[str], np.ndarray]] = {}
    for (setting, group, metric), sub in scores.groupby(["setting", "group", "metric"], sort=False):
        ranks, methods, seeds, dropped, ids, mean_scores = _rank_array(sub)
        arrays[(setting, group, metric)] = (ranks, ids, methods, mean_scores)
        n = ranks.shape[0]
        row: dict[str, Any] = {"setting": setting, "group": group, "metric": metric, "alpha": np.nan, "low": np.nan,
                               "high": np.nan, "n_images": n, "n_left_out": dropped, "n_models": len(seeds),
                               "seed_spread": seed_spread(ranks) if n >= 2 else np.nan, "reason": None}
        stat = SeedMeanAlpha()
        if n < 2:
            row["reason"] = "fewer than 2 images with a score for every method"
        else:
            est = float(stat(ranks[None])[0])
            if not np.isfinite(est):
                row["reason"] = "no variation in the ranks"
            else:
                ci = bootstrap_ci(stat, ranks, n_boot=n_boot, level=level, seed=seed)
                row.update(alpha=est, low=ci.low, high=ci.high)
                boots[(setting, group, metric)] = stat.weighted(ranks, resample_counts(n, n_boot, seed))
        alpha_rows.append(row)
        sizes = []
        for s in range(len(seeds)) if n else ():
            rates = first_place_rates(ranks[:, s])
            sizes.append(minimum_benchmark_size(rates / rates.sum(), max_n=n) / n)
        size_rows.append({"setting": setting, "group": group, "metric": metric,
                          "normalised_min_size": float(np.mean(sizes)) if sizes else np.nan, "n_images": n})
        hib = bool(sub["higher_is_better"].iloc[0])
        means = sub.groupby(["model_seed", "method"])["score"].mean().groupby("method").mean().reindex(methods)
        order = (means if hib else -means).rank(ascending=False, method="min")
        for method in methods:
            rank_rows.append({"setting": setting, "group": group, "metric": metric, "method": method,
                              "mean": float(means[method]), "rank": float(order[method])})
    alpha = pd.DataFrame(alpha_rows)
    diff_rows, score_rows = [], []
    for row in alpha_rows:
        key = (row["setting"], row["group"], row["metric"])
        base_key = (BASELINE, *key[1:])
        if row["setting"] == BASELINE or base_key not in arrays:
            continue
        (ra, ia, ma, sa), (rb, ib, mb, sb) = arrays[key], arrays[base_key]
        common = np.intersect1d(ia, ib)
        pa, pb = np.searchsorted(ia, common), np.searchsorted(ib, common)  # ids are sorted (pivot index)
        out: dict[str, Any] = {"setting": key[0], "group": key[1], "metric": key[2], "difference": np.nan,
                               "low": np.nan, "high": np.nan, "p": np.nan, "n_images": int(common.size),
                               "seed_spread": 100 * np.nanmax([row["seed_spread"], float(alpha.loc[
                                   (alpha.setting == BASELINE) & (alpha.group == key[1]) & (alpha.metric == key[2]),
                                   "seed_spread"].iloc[0])]) if row["n_models"] > 1 else np.nan}
        if common.size >= 2 and ma == mb:
            d = paired_bootstrap(SeedMeanAlpha(), ra[pa], rb[pb], n_boot=n_boot, level=level, seed=seed)
            out.update(difference=100 * d.estimate, low=100 * d.low, high=100 * d.high, p=d.p)
            m = paired_bootstrap(MeanStatistic(), sa[pa], sb[pb], n_boot=n_boot, level=level, seed=seed)
            for k, method in enumerate(ma):
                score_rows.append({"setting": key[0], "group": key[1], "metric": key[2], "method": method,
                                   "difference": m.estimate[k], "low": m.low[k], "high": m.high[k], "p": m.p[k],
                                   "n_images": int(common.size)})
        p, test = (compare_bootstrap(boots[key], boots[base_key])
                   if key in boots and base_key in boots else (np.nan, "undefined: alpha undefined"))
        out.update(paper_p=p, paper_test=test, paper_significant=bool(np.isfinite(p) and p < SIGNIFICANCE))
        diff_rows.append(out)
    diffs, score_diffs = pd.DataFrame(diff_rows), pd.DataFrame(score_rows)
    for table in (diffs, score_diffs):
        if table.empty:
            continue
        table["p_adj"] = adjust_p(table["p"].to_numpy(), correction)
        table["significant"] = np.isfinite(table["p_adj"]) & (table["p_adj"] < 1 - level)
    if not diffs.empty:
        diffs["effect"] = [_effect(sig, d, spread) for sig, d, spread in
                           zip(diffs["significant"], diffs["difference"], diffs["seed_spread"])]
        diffs["correction"] = correction
    order = {s: i for i, s in enumerate(setting_order)}
    sort = lambda f: f.sort_values("setting", key=lambda c: c.map(order), kind="stable").reset_index(drop=True) if len(f) else f  # noqa: E731
    return (sort(alpha), sort(diffs), sort(pd.DataFrame(size_rows)), sort(pd.DataFrame(rank_rows)),
            sort(score_diffs))


# --- report ------------------------------------------------------------------------------------


def _comparison_table(diffs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting and metric: the difference with its interval, adjusted p, seed spread, verdict."""
    def interval(r: pd.Series) -> str:
        return "undefined" if not np.isfinite(r.difference) else f"{r.difference:+.1f} [{r.low:+.1f}, {r.high:+.1f}]"

    return pd.DataFrame({
        "setting": diffs["setting"], "metric": diffs["metric"], "difference [CI]": diffs.apply(interval, axis=1),
        "p_adj": diffs["p_adj"].round(4), "seed spread": diffs["seed_spread"].round(1), "verdict": diffs["effect"],
        "n images": diffs["n_images"], "paper p": diffs["paper_p"].map(lambda p: f"{p:.2g}" if np.isfinite(p) else ""),
        "paper test": diffs["paper_test"]})


def _classes(cfg: ExperimentConfig) -> list[str]:
    from xaibench.data import load_dataset

    bench = benchmark(cfg)
    return list(load_dataset(bench["spec"], split=bench["split"]).classes)


def _interval(row: pd.Series, key: str = "alpha") -> str:
    if not np.isfinite(row[key]):
        return "undefined"
    return f"{row[key]:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def report(exp: ExperimentDir) -> list[Block]:
    cfg = exp.config
    blocks: list[Block] = [Text(
        "Benchmark reliability per training setting (Gomez & Mouchère): Krippendorff's alpha of the per-image "
        f"method rankings within each method group (mean over the {cfg['repeats']} models per setting), with "
        f"{100 * cfg['level']:.0f}% BCa intervals over {cfg['n_boot']} image resamples; its difference to Baseline "
        "(x100) by a paired bootstrap over the shared images, significant when the adjusted p < "
        f"{1 - cfg['level']:.2g} ({CORRECTION_NAMES[cfg['correction']]} correction over every comparison), and an "
        "effect (*) only when it is also larger than the spread between the seeds of the two settings (° = "
        "significant but within that spread, or the spread unknown with one model per setting); the normalised "
        "minimum benchmark size, and each setting's accuracy and calibration. The paper's test on the bootstrap "
        "replicates (Shapiro-Wilk -> Mann-Whitney U, else Levene -> Student / Welch t) is listed for "
        "reproduction only: it counts the replicates as independent observations, so its p-values shrink as "
        "the number of resamples grows, and it corrects for none of the comparisons; it overstates significance."
    )]
    if exp.has_table("calibration"):
        calib = exp.table("calibration")
        cols = ["model", "setting", "model_seed", "label_permutation", "accuracy", "ece", "adaece", "confidence",
                "best_epoch"]
        checks = [accuracy_check(np.arange(int(r.n_images)) < round(r.accuracy * r.n_images), len(_classes(cfg)))
                  for r in calib.itertuples()]
        calib = calib.assign(**{"accuracy CI": [f"[{c.accuracy.low:.3f}, {c.accuracy.high:.3f}]" for c in checks],
                                "vs chance": ["at or near chance" if c.near_chance else "above chance" for c in checks]})
        blocks.append(Table(calib[cols[:5] + ["accuracy CI", "vs chance"] + cols[5:]].round(4),
                            "Calibration per setting: accuracy (95 % Wilson interval; at or near chance when its lower "
                            "bound is not 5 points above 1 / classes), ECE (15 bins) and AdaECE on the whole test "
                            "split, mean confidence, selected epoch."))
        at_chance = [r.model for r, c in zip(calib.itertuples(), checks) if c.near_chance and not r.label_permutation]
        if at_chance:
            blocks.append(Text(f"NOT MEANINGFUL for {', '.join(at_chance)}: these models are at or near chance, so "
                               "their benchmark's alpha, rankings and comparisons say nothing about the methods."))
    if not exp.has_table("alpha"):
        return blocks + [Text("Benchmark statistics not computed yet.")]
    alpha, diffs = exp.table("alpha"), exp.table("alpha_difference")
    order = list(pd.unique(alpha.setting))
    metric_order = [m for m in METRICS if m in set(alpha.metric)]
    if exp.has_table("validity") and not (validity := exp.table("validity")).empty:
        cols = [m for m in VALIDITY if m in set(validity.metric)]
        wide = validity.pivot(index=["group", "setting"], columns="metric", values="validity_rate").reindex(columns=cols)
        blocks.append(Table(wide.round(3).reset_index(), "Validity rate (Gomez & Mouchère): the share of curve steps "
                            "(DAUC, IAUC) or images (AD, ADD) where the masked score moves the expected way, mean "
                            "over the images of each method, then over the group's methods."))
    for group in pd.unique(alpha.group):
        if not diffs.empty and (diffs.group == group).any():
            blocks.append(Plot("alpha_heatmap", diffs, f"{group}: alpha difference to Baseline x100 (settings x "
                               "metrics); * an effect (significant after correction and beyond the seed spread), ° "
                               "significant only.",
                               {"group": group, "setting_order": order, "metric_order": metric_order}))
        cells = alpha[alpha.group == group].assign(value=lambda f: f.apply(_interval, axis=1))
        wide = cells.pivot(index="setting", columns="metric", values="value").reindex(index=order, columns=metric_order)
        blocks.append(Table(wide.reset_index(), f"{group}: alpha [{100 * cfg['level']:.0f}% BCa interval]."))
        if not diffs.empty and (diffs.group == group).any():
            blocks.append(Table(_comparison_table(diffs[diffs.group == group]),
                                f"{group}: alpha - alpha(Baseline) x100 [{100 * cfg['level']:.0f}% paired bootstrap "
                                f"interval], {CORRECTION_NAMES[cfg['correction']]}-adjusted p, spread between seeds "
                                "(x100) and the verdict; the paper's replicate test (p, test) for reproduction only."))
    if exp.has_table("score_difference"):
        sd = exp.table("score_difference")
        if not sd.empty:
            count = sd.groupby(["setting", "group"], sort=False)["significant"].agg(["sum", "size"]).reset_index()
            count.columns = ["setting", "group", "significant", "comparisons"]
            blocks.append(Table(count, "Mean metric scores: method x metric differences to Baseline that are "
                                       f"significant after {CORRECTION_NAMES[cfg['correction']]} correction (paired "
                                       "bootstrap over images; table score_difference has every interval)."))
    sizes = exp.table("benchmark_size")
    columns = [f"{g}:{m}" for g in pd.unique(sizes.group) for m in metric_order]
    wide = sizes.assign(group_metric=sizes.group + ":" + sizes.metric).pivot(
        index="setting", columns="group_metric", values="normalised_min_size").reindex(index=order, columns=columns)
    blocks.append(Table(wide.round(3).reset_index(), "Normalised minimum benchmark size (minimum size / images; "
                                                     "1 = cannot be reduced), per group:metric."))
    ranks = exp.table("rankings").sort_values(["rank"], kind="stable")
    text = ranks.groupby(["setting", "group", "metric"], sort=False)["method"].agg(" > ".join).reset_index()
    wide = text.pivot(index=["group", "setting"], columns="metric", values="method")
    wide = wide.reindex(columns=metric_order).reset_index()
    wide["setting"] = pd.Categorical(wide["setting"], order)
    blocks.append(Table(wide.sort_values(["group", "setting"]).astype(str),
                        "Per-setting rankings: methods by mean score, best first."))
    if exp.has_table("data_randomisation"):
        dr = exp.table("data_randomisation")
        summary = dr.groupby(["group", "method"], sort=False)[["spearman", "ssim"]].agg(["mean", "count"])
        summary.columns = [f"{a}_{b}" for a, b in summary.columns]
        blocks.append(Table(summary.round(3).reset_index(),
                            "Data randomisation test (Adebayo et al.): similarity of each method's maps for the "
                            "model and its twin trained on permuted labels (mean over images and models; count = "
                            "defined values). High similarity = the method fails the test."))
    return blocks


RECIPE = Recipe(
    name="reliability",
    summary="benchmark reliability (Krippendorff's alpha) per training setting: FP, AP, FL and combinations",
    schema={
        "settings": ((list,), ["baseline", "fp", "ap", "fl", "fp+ap", "fl+fp", "fl+ap", "fl+fp+ap"]),
        "repeats": ((int,), 2),
        "train": ((dict,), REQUIRED),
        "benchmark": ((dict,), {}),
        "groups": ((dict,), None),
        "methods": ((dict,), {}),
        "metrics": ((list,), list(METRICS)),
        "steps": ((int,), None),
        "level": ((float,), 0.99),
        "n_boot": ((int,), 1000),
        "correction": ((str,), "holm"),
        "data_randomisation": ((bool,), False),
    },
    plan=plan,
    report=report,
    example="experiment-reliability.toml",
    validate=validate,
)
