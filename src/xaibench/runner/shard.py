"""One shard: a fixed chunk of images, explained by every method and scored by every metric.

A shard is an independent unit of work: `execute_shard(spec)` needs nothing but the `ShardSpec`
(which is plain data) and the run directory, so any executor may run shards in any order or in
parallel. Every random draw of a shard is seeded from (run seed, shard index, method, metric),
never from a shared stream, so a shard's rows do not depend on which shards ran before it.

Conventions: the class explained is the model's prediction (``target = "predicted"``) or the true
label (``"label"``); maps are float32 [B, H, W] as the explainer returns them (input resolution by
default), cached per (method, shard) on disk and reused when their key (method, parameters, model
hash, image ids, targets) matches; an unreadable cache file is recomputed. `commit_shard` writes a
shard's files and its commit record (sizes and sha256) before the results file, the marker.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.files import write_temp
from xaibench.runner import layout
from xaibench.runner.config import RunConfig, parse_config
from xaibench.seeding import derive_seed

Progress = Callable[[int, str, "str | None", bool], None]
"""``progress(shard, method, metric, finished)``: a step of a shard starts (``finished=False``) or
ends; ``metric`` is None for the maps of `method`. Plain data, so executors may relay it."""


@dataclass(frozen=True)
class ShardSpec:
    """Plain-data description of one shard (picklable, JSON-able)."""

    out: str  # run directory
    index: int  # shard index
    positions: tuple[int, ...]  # dataset indices of the shard's images
    config: dict[str, Any]  # canonical config (RunConfig.raw)
    config_hash: str
    model_hash: str  # hash of the model the run started with; a shard refuses other weights


@dataclass(frozen=True)
class ShardSummary:
    index: int
    rows: int
    seconds: float


def select_positions(n_total: int, n: int | None, seed: int) -> list[int]:
    """The dataset indices a run uses: all of them, or a seeded random subset of `n` in index order."""
    if n is None or n == n_total:
        return list(range(n_total))
    if n > n_total:
        raise InputError(f"config [data].n = {n}, but the split has only {n_total} images")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=gen)[:n].tolist())


class Context:
    """What a process needs to run shards of one config: the model on its device and the dataset."""

    def __init__(self, cfg: RunConfig) -> None:
        from xaibench.models import load_model
        from xaibench.data import load_dataset
        from xaibench.models import model_hash

        self.cfg = cfg
        from xaibench.devices import resolve_device

        self.device = resolve_device(cfg.device)
        mkw = {k: cfg.model[k] for k in ("weights", "num_classes") if cfg.model.get(k) is not None}
        model = load_model(cfg.model["spec"], seed=cfg.seed, **mkw)
        self.model: nn.Module = model.to(self.device).eval()
        dkw = {k: cfg.data[k] for k in ("image_size", "on_error") if cfg.data.get(k) is not None}
        self.dataset = load_dataset(cfg.data["spec"], split=cfg.data["split"], **dkw)
        self.model_hash = model_hash(self.model)
        self._default_mask: str | None | bool = False  # False = not resolved yet
        self._twins: dict[str, str | None] = {}

    def provenance(self) -> dict[str, Any]:
        import captum

        import xaibench

        return {
            "config_hash": self.cfg.hash,
            "seed": self.cfg.seed,
            "model_spec": self.cfg.model["spec"],
            "model_hash": self.model_hash,
            "dataset_spec": self.cfg.data["spec"],
            "dataset_split": self.cfg.data["split"],
            "xaibench_version": xaibench.__version__,
            "torch_version": torch.__version__,
            "captum_version": captum.__version__,
            "python_version": platform.python_version(),
        }

    def default_mask(self, sample: Any) -> str | None:
        """Name of the dataset's default mask: the entry of ``sample.masks`` that is ``sample.mask``."""
        if self._default_mask is False:
            masks = dict(getattr(sample, "masks", {}) or {})
            default = getattr(sample, "mask", None)
            name = None
            if default is not None:
                name = next((k for k, m in masks.items() if m is default), None)
                if name is None:
                    name = next((k for k, m in masks.items() if torch.equal(m, default)), None)
            elif len(masks) == 1:
                name = next(iter(masks))
            self._default_mask = name
        return self._default_mask  # type: ignore[return-value]

    def twin(self, method: Any) -> str | None:
        """The label of another method of the run whose maps this one's equal on this model (e.g.
        guided backprop and saliency on a model without ``nn.ReLU``), else None. Its explainer
        says so (``same_as``) when built; the twin must use the same channel reduction and sign."""
        if method.label not in self._twins:
            from xaibench.explainers import METHODS

            same = getattr(self.make_explainer(method, 0), "same_as", None)

            def policy(m: Any) -> tuple[Any, Any]:
                defaults = METHODS.get(m.method).params
                return tuple(m.params.get(k, defaults.get(k, (None,))[0]) for k in ("reduce", "sign"))

            self._twins[method.label] = next(
                (m.label for m in self.cfg.methods
                 if same is not None and m.label != method.label and METHODS.get(m.method).name == same
                 and policy(m) == policy(method)), None)
        return self._twins[method.label]

    def make_explainer(self, method: Any, seed: int) -> Any:
        """A fresh explainer for one shard; a ``seed`` parameter, when the method takes one, is derived."""
        from xaibench.explainers import explainer

        params = dict(method.params)
        if "seed" not in params and _accepts_seed(method.method):
            params["seed"] = seed
        return explainer(method.method, self.model, **params)


@functools.lru_cache(maxsize=2)
def _context(config_json: str) -> Context:
    return Context(parse_config(json.loads(config_json)))


def get_context(cfg: RunConfig, fresh: bool = False) -> Context:
    """The process-wide `Context` of a config (model and dataset are loaded once per process);
    ``fresh=True`` loads them again (a run's start: files may have changed since the last run)."""
    if fresh:
        _context.cache_clear()
    return _context(json.dumps(cfg.raw, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _accepts_seed(method: str) -> bool:
    from xaibench.explainers import METHODS
    from xaibench.runner.config import method_factory

    try:
        return "seed" in inspect.signature(method_factory(METHODS.get(method))).parameters
    except (TypeError, ValueError):
        return False


def load_batch(ctx: Context, positions: tuple[int, ...]) -> Any:
    from xaibench.data import collate

    samples = [ctx.dataset[i] for i in positions]
    return collate(samples), samples[0]


@torch.no_grad()
def _predict(model: nn.Module, inputs: Tensor, max_batch: int) -> tuple[Tensor, int]:
    """Predicted classes [B] and the number of classes the model scores."""
    logits = [model(inputs[s : s + max_batch]) for s in range(0, inputs.shape[0], max_batch)]
    return torch.cat([z.argmax(1) for z in logits]), int(logits[0].shape[1])


def _load_cached(path: Path) -> dict[str, Any] | None:
    """A cached maps file, or None when there is none or it is unreadable (it is then recomputed)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt cache is recomputed, whatever torch.load raises for it
        return None


def _maps(ctx: Context, spec: ShardSpec, method: Any, inputs: Tensor, targets: Tensor, ids: list[str], seed: int,
          cache: bool = True) -> Tensor:
    """Maps of one method for one shard, from the cache when its key matches, else computed (and
    cached unless ``cache=False``)."""
    key = {
        "method": method.method,
        "params": method.params,
        "model_hash": ctx.model_hash,
        "ids": ids,
        "targets": targets.tolist(),
    }
    path = layout.maps_path(Path(spec.out), method.label, spec.index)
    cached = _load_cached(path) if cache else None
    if cached is not None and cached.get("key") == json.dumps(key, sort_keys=True):
        return cached["maps"].to(ctx.device)
    explainer = ctx.make_explainer(method, seed)
    torch.manual_seed(seed)  # explainers that draw from the global generator
    step = ctx.cfg.explain_batch
    maps = torch.cat(
        [explainer(inputs[s : s + step], targets[s : s + step]).detach() for s in range(0, inputs.shape[0], step)]
    ).float()
    from xaibench.checks import check_maps

    check_maps(maps, inputs.shape[0], name=f"maps of method {method.label!r}")
    if cache:
        layout.write_torch(path, {"key": json.dumps(key, sort_keys=True), "maps": maps.cpu()})
    return maps


def class_names(classes: list[str] | None, indices: Tensor, n_model_classes: int | None = None) -> list[str | None]:
    """Names of class `indices` in the data set's `classes`; None where there is no name, and for
    model outputs (``n_model_classes`` given) when the model does not score exactly those classes."""
    if not classes or (n_model_classes is not None and n_model_classes != len(classes)):
        return [None] * len(indices)
    return [classes[i] if 0 <= i < len(classes) else None for i in indices.tolist()]


def missing_mask_error(ctx: Context, where: str, positions: Any, mask_name: str | None) -> InputError:
    """The error for a mask metric whose mask some images lack: the file that is missing, if any."""
    if mask_name is not None and mask_name in getattr(ctx.dataset, "mask_names", ()):
        for position in positions:
            record = ctx.dataset.describe(position)
            if mask_name in record.missing:
                file = record.missing[mask_name]
                return InputError(
                    f"{where} needs mask {mask_name!r}, but image {record.id!r} has none"
                    + (f": {file} is missing" if file else "")
                    + "; add it, or choose images that have it"
                )
    known = ", ".join(getattr(ctx.dataset, "mask_names", ())) or "none"
    return InputError(
        f"{where} needs a human mask; dataset {ctx.cfg.data['spec']!r} has: {known}"
        + ("" if mask_name is None else f" (asked for {mask_name!r})")
    )


def compute_shard(
    spec: ShardSpec, progress: Progress | None = None, cache: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Rows, curves and gallery images of one shard. Maps are read from / written to the run's
    cache (``cache=False``: computed, never read or written, as for a dry run)."""
    from xaibench.metrics import METRICS

    cfg = parse_config(spec.config)
    if cfg.hash != spec.config_hash:
        raise InputError("shard spec: config does not match its hash")
    ctx = get_context(cfg)
    batch, first = load_batch(ctx, spec.positions)
    inputs = batch.images.to(ctx.device)
    labels = torch.as_tensor(batch.labels).long().to(ctx.device)
    ids = [str(i) for i in batch.ids]
    preds, n_model_classes = _predict(ctx.model, inputs, cfg.max_batch)
    targets = preds if cfg.target == "predicted" else labels
    n = len(ids)
    prov = ctx.provenance()
    if prov["model_hash"] != spec.model_hash:
        raise InputError(
            f"model {cfg.model['spec']!r} now hashes to {prov['model_hash'][:12]}, but this run started "
            f"with {spec.model_hash[:12]}: its weights changed"
        )
    classes = getattr(ctx.dataset, "classes", None)

    base = pd.DataFrame(
        {
            "image_id": ids,
            "image_index": list(spec.positions),
            "shard": spec.index,
            "target": targets.cpu().numpy(),
            "label": labels.cpu().numpy(),
            "prediction": preds.cpu().numpy(),
            "correct": (preds == labels).cpu().numpy(),
            "label_name": class_names(classes, labels),
            "target_name": class_names(classes, targets, n_model_classes),
            "prediction_name": class_names(classes, preds, n_model_classes),
        }
    )
    frames: list[pd.DataFrame] = []
    curve_rows: list[pd.DataFrame] = []
    for method in cfg.methods:
        if progress:
            progress(spec.index, method.label, None, False)
        maps = _maps(
            ctx, spec, method, inputs, targets, ids, derive_seed(cfg.seed, spec.index, method.label, "maps"), cache
        )
        if progress:
            progress(spec.index, method.label, None, True)
        for metric in cfg.metrics:
            if progress:
                progress(spec.index, method.label, metric.label, False)
            entry = METRICS.get(metric.metric)
            info = entry.info
            mask_name = metric.mask if metric.mask is not None else ctx.default_mask(first)
            seed = derive_seed(cfg.seed, spec.index, method.label, metric.label)
            words: dict[str, Any] = {
                "model": ctx.model,
                "inputs": inputs,
                "attributions": maps,
                "targets": targets,
                "labels": labels,
            }
            if "explainer" in info.requires:
                # A fresh explainer per (shard, method, metric): its draws do not depend on what ran before.
                words["explainer"] = ctx.make_explainer(method, seed)
            if "masks" in info.requires:
                if mask_name is None or mask_name not in batch.masks:
                    raise missing_mask_error(ctx, f"[metrics.{metric.label}]", spec.positions, mask_name)
                words["masks"] = batch.masks[mask_name].to(ctx.device)
            torch.manual_seed(seed)  # metrics that draw from the global generator
            start = time.perf_counter()
            try:
                result = entry.score(words, metric.params, seed=seed, max_batch=cfg.max_batch)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
            except InputError as err:
                raise InputError(f"shard {spec.index}, method {method.label!r}, metric {metric.label!r}: {err}") from err
            scores = result.scores.detach().double().cpu().flatten()
            if scores.numel() != n:
                raise InputError(f"metric {metric.label!r} returned {scores.numel()} scores for {n} images")
            reasons = list(result.reasons) if result.reasons is not None else [None] * n
            nan = torch.isnan(scores).tolist()
            reasons = [(r or "undefined (no reason given)") if bad else None for r, bad in zip(reasons, nan)]
            frame = base.copy()
            frame["method"] = method.label
            frame["method_name"] = method.method
            frame["same_as"] = ctx.twin(method)
            frame["metric"] = metric.label
            frame["metric_name"] = info.name
            frame["category"] = info.category
            frame["mask"] = mask_name if "masks" in info.requires else None
            frame["higher_is_better"] = info.higher_is_better
            frame["score"] = scores.numpy()
            frame["nan_reason"] = reasons
            frame["params"] = json.dumps(result.params, sort_keys=True, default=repr)
            frame["seconds"] = (time.perf_counter() - start) / n
            frames.append(frame)
            if result.curves is not None:
                curves = result.curves.detach().double().cpu()
                curve_rows.append(
                    pd.DataFrame(
                        {
                            "image_id": ids,
                            "method": method.label,
                            "metric": metric.label,
                            "curve": [row.tolist() for row in curves],
                        }
                    )
                )
            if progress:
                progress(spec.index, method.label, metric.label, True)

    rows = pd.concat(frames, ignore_index=True)
    for key, value in prov.items():
        rows[key] = value
    order = ["image_id", "image_index", "shard", "method", "method_name", "metric", "metric_name", "category",
             "mask", "score", "nan_reason", "target", "label", "prediction", "correct", "higher_is_better",
             "label_name", "target_name", "prediction_name", "params", "seconds", "same_as"]
    rows = rows[order + list(prov)]
    curves_df = (
        pd.concat(curve_rows, ignore_index=True)
        if curve_rows
        else pd.DataFrame({"image_id": [], "method": [], "metric": [], "curve": []})
    )
    gallery = {
        "ids": ids,
        "positions": list(spec.positions),
        "images": (batch.images.clamp(0, 1) * 255).round().to(torch.uint8).cpu(),
        "labels": labels.cpu(),
        "targets": targets.cpu(),
    }
    return rows, curves_df, gallery


def commit_shard(spec: ShardSpec, rows: pd.DataFrame, curves: pd.DataFrame, gallery: dict[str, Any]) -> None:
    """Write a shard's files: curves and images, then its commit record (size and sha256 of every
    file of the shard, maps included), and last the results file, renamed into place (the marker)."""
    out = Path(spec.out)
    cfg = parse_config(spec.config)
    layout.write_parquet(layout.curves_path(out, spec.index), curves)
    layout.write_torch(layout.images_path(out, spec.index), gallery)
    results = layout.results_path(out, spec.index)
    tmp = write_temp(results, layout.parquet_writer(rows))
    try:
        files = [layout.curves_path(out, spec.index), layout.images_path(out, spec.index)]
        files += [layout.maps_path(out, m.label, spec.index) for m in cfg.methods]
        records = {p.relative_to(out).as_posix(): layout.file_record(p) for p in files}
        records[results.relative_to(out).as_posix()] = layout.file_record(tmp)
        layout.write_json(layout.commit_path(out, spec.index), {"shard": spec.index, "files": records})
        os.replace(tmp, results)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def execute_shard(spec: ShardSpec, progress: Progress | None = None) -> ShardSummary:
    """Compute one shard and commit it (`commit_shard`)."""
    start = time.perf_counter()
    rows, curves, gallery = compute_shard(spec, progress)
    commit_shard(spec, rows, curves, gallery)
    return ShardSummary(spec.index, len(rows), time.perf_counter() - start)
