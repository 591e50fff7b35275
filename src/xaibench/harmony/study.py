"""Study data sets from fine-tuned models: ``create_harmony_dataset`` and ``xaibench harmony make-study``.

From one or more conditions (original model, fine-tuned model, metric, method) and a data set:
keep the images that both models of a condition classify correctly, explain the true label with
the condition's method on both models, sum the channels, normalise each map by its maximum
absolute value and render it white-to-red (0 white, 1 red; negative values white), with images
taken disjoint across conditions (each condition its own images, in one seeded order). Written in
the study data-set format that ``xaibench harmony load`` reads (docs/harmony.md), with the keys for
metrics after the study: the maps as explained (``.npy``), the masks, the class indices, the
models (``file:`` copies inside the folder) and the registry names of metric and method.

Unlike the web application this module uses the layers below (models, data, explainers); the
application never imports it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xaibench.config import read_toml, unknown_key
from xaibench.errors import InputError
from xaibench.files import write_text
from xaibench.harmony.dataset import FORMAT, VERSION, read_manifest
from xaibench.modelspec import ModelSpec


@dataclass(frozen=True)
class StudyCondition:
    """One condition: two ``load_model`` specs, the metric's and the method's registry names, and
    the names shown in the application (default: the registry names / the model spec)."""

    original: str
    finetuned: str
    metric: str
    method: str
    method_params: dict[str, Any] = field(default_factory=dict)
    metric_label: str = ""
    method_label: str = ""
    model_label: str = ""


def render(maps: torch.Tensor, size: int) -> np.ndarray:
    """HARMONY's rendering: maps [N, H, W] max-abs normalised per map, resized bilinearly to
    `size` x `size`, white (0 or below) to red (1) as uint8 RGB [N, size, size, 3]."""
    peak = maps.flatten(1).abs().amax(1).clamp_min(torch.finfo(maps.dtype).tiny)[:, None, None]
    v = F.interpolate((maps / peak)[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    v = v.clamp(0, 1)
    rgb = torch.stack([torch.ones_like(v), 1 - v, 1 - v], dim=-1)
    return (rgb * 255).round().to(torch.uint8).numpy()


def _picture(image: torch.Tensor, size: int) -> np.ndarray:
    """An image [C, H, W] in [0, 1] as uint8 RGB at `size` x `size` (nearest: pixels stay sharp)."""
    up = F.interpolate(image[None], size=(size, size), mode="nearest")[0]
    return (up.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _model_file(spec: str, out: Path, name: str) -> str:
    """A ``file:`` spec copied into the study folder (relative spec), other specs as they are."""
    parsed = ModelSpec.parse(spec)
    if parsed.kind != "file":
        return spec
    if not parsed.path.is_file():
        raise InputError(f"model file not found: {parsed.path} (spec {spec!r})")
    target = out / "models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parsed.path, target)
    return str(ModelSpec("file", str(target)).relative_to(out))


def create_harmony_dataset(conditions: list[StudyCondition], data: str, out: str | Path, *, split: str = "test",
                           n: int | None = None, examples: int = 10, mask: str | None = None, size: int = 224,
                           seed: int = 0, name: str = "", device: str = "auto", batch_size: int = 64) -> Path:
    """Write a study data set to `out` (which must not exist); returns its path (see the module doc).

    data/split/n: the images considered (the first `n` of the split); examples: per condition;
    mask: the data set's mask written per example (default: its default mask, if any); size: the
    side of the rendered pictures.
    """
    from xaibench.data import load_dataset
    from xaibench.devices import resolve_device
    from xaibench.explainers import explainer
    from xaibench.metrics import METRICS
    from xaibench.models import load_model

    out = Path(out)
    if out.exists():
        raise InputError(f"study output folder {out} already exists; choose a new folder (nothing was written)")
    if not conditions:
        raise InputError("a study needs at least one condition")
    if examples < 1 or size < 1:
        raise InputError(f"examples and size must be >= 1, got {examples} and {size}")
    for c in conditions:
        METRICS.get(c.metric)  # unknown registry names fail before any work, with close names
    dev = resolve_device(device)
    dataset = load_dataset(data, split=split)
    total = len(dataset) if n is None else min(n, len(dataset))
    classes = list(getattr(dataset, "classes", []))
    first = dataset[0]
    if mask is not None and mask not in first.masks:
        raise InputError(f"data set {data!r} has no mask {mask!r}; masks: {', '.join(first.masks) or 'none'}")
    mask_key = mask or next((k for k, m in first.masks.items() if m is first.mask), None)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    used: set[int] = set()
    manifest_conditions = []
    out.mkdir(parents=True)
    try:
        for ci, cond in enumerate(conditions):
            models = {side: load_model(spec, device=dev).eval()
                      for side, spec in (("original", cond.original), ("finetuned", cond.finetuned))}
            chosen = _correct_images(models, dataset, [i for i in order if i not in used], examples, batch_size, dev)
            if len(chosen) < examples:
                raise InputError(f"condition {ci} ({cond.metric} / {cond.method}): only {len(chosen)} of the images left "
                                 f"are classified correctly by both models, {examples} needed; raise n or lower examples")
            used.update(chosen)
            samples = [dataset[i] for i in chosen]
            x = torch.stack([s.image for s in samples]).to(dev)
            y = torch.tensor([s.label for s in samples], device=dev)
            params = {"reduce": "sum", **cond.method_params}
            maps = {side: explainer(cond.method, m, **params)(x, y).float().cpu() for side, m in models.items()}
            specs = {f"{side}_model": _model_file(spec, out, f"c{ci}-{side}.pt")
                     for side, spec in (("original", cond.original), ("finetuned", cond.finetuned))}
            items = [_write_example(out, ci, i, s, {k: v[j] for k, v in maps.items()}, size, classes, mask_key)
                     for j, (i, s) in enumerate(zip(chosen, samples))]
            manifest_conditions.append({
                "dataset": data, "metric": cond.metric_label or cond.metric, "method": cond.method_label or cond.method,
                "model": cond.model_label or cond.original, "metric_name": cond.metric, "method_name": cond.method,
                **specs, "examples": items,
            })
        manifest = {"format": FORMAT, "version": VERSION, "name": name or out.name, "conditions": manifest_conditions}
        write_text(out / "manifest.json", json.dumps(manifest, indent=2))
        read_manifest(out)  # what `harmony load` will check
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _correct_images(models: dict[str, torch.nn.Module], dataset: Any, candidates: list[int], want: int,
                    batch_size: int, device: torch.device) -> list[int]:
    """The first `want` candidates that every model classifies correctly (predicted = true label)."""
    chosen: list[int] = []
    for start in range(0, len(candidates), batch_size):
        idx = candidates[start:start + batch_size]
        samples = [dataset[i] for i in idx]
        x = torch.stack([s.image for s in samples]).to(device)
        y = torch.tensor([s.label for s in samples], device=device)
        with torch.no_grad():
            ok = torch.stack([m(x).argmax(1) == y for m in models.values()]).all(0)
        chosen += [i for i, good in zip(idx, ok.tolist()) if good]
        if len(chosen) >= want:
            return chosen[:want]
    return chosen


def _write_example(out: Path, ci: int, index: int, sample: Any, maps: dict[str, torch.Tensor], size: int,
                   classes: list[str], mask_key: str | None) -> dict[str, Any]:
    key = f"{index:05d}"
    rel = {"image": f"images/{key}.png"}
    (out / "images").mkdir(exist_ok=True)
    Image.fromarray(_picture(sample.image, size)).save(out / rel["image"])
    for side, m in maps.items():
        picture, array = f"maps/c{ci}/{side}/{key}.png", f"arrays/c{ci}/{side}/{key}.npy"
        for path in (picture, array):
            (out / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(m[None], size)[0]).save(out / picture)
        np.save(out / array, m.numpy().astype(np.float32))
        rel[side], rel[f"{side}_map"] = picture, array
    label = classes[sample.label] if sample.label < len(classes) else str(sample.label)
    item = {"id": key, **rel, "prediction": label, "label": label, "label_index": int(sample.label)}
    if mask_key is not None:
        item["mask"] = f"masks/{key}.png"
        (out / "masks").mkdir(exist_ok=True)
        Image.fromarray((sample.masks[mask_key].numpy().astype(np.uint8) * 255)).save(out / item["mask"])
    return item


def load_study_config(path: str | Path) -> dict[str, Any]:
    """A make-study TOML config as keyword arguments of `create_harmony_dataset` (``file:`` paths
    relative to the config's folder); unknown keys are refused by name."""
    path = Path(path)
    raw = read_toml(path, "study config")
    top = {"name", "seed", "device", "data", "split", "n", "examples", "mask", "size", "conditions"}
    cond_keys = {f.name for f in StudyCondition.__dataclass_fields__.values()}
    _known(raw, top, str(path))
    if "data" not in raw or not raw.get("conditions"):
        raise InputError(f"{path}: needs 'data' (a data set spec) and at least one [[conditions]] table")

    conditions = []
    for i, c in enumerate(raw["conditions"]):
        _known(c, cond_keys, f"{path}: conditions[{i}]")
        missing = {"original", "finetuned", "metric", "method"} - set(c)
        if missing:
            raise InputError(f"{path}: conditions[{i}]: missing key(s) {', '.join(sorted(missing))}")
        conditions.append(StudyCondition(**{**c, "original": str(ModelSpec.parse(c["original"], base=path.parent)),
                                                  "finetuned": str(ModelSpec.parse(c["finetuned"], base=path.parent))}))
    return {**{k: v for k, v in raw.items() if k != "conditions"}, "conditions": conditions}


def _known(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise unknown_key(where, key, allowed)
