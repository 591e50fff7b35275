"""A small synthetic study data set (for trying the application and for tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from xaibench.harmony.dataset import FORMAT, VERSION


def _photos(size: int) -> list[np.ndarray]:
    photos = []
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            try:
                photos.append(np.asarray(getattr(data, name)()))
            except Exception:  # noqa: BLE001 - a picture that needs downloading is skipped
                continue
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        pass
    if not photos:
        yy, xx = np.mgrid[0:size, 0:size] / size
        photos.append((np.stack([xx, yy, 1 - xx], axis=-1) * 255).astype(np.uint8))
    return [np.asarray(Image.fromarray(p[..., :3]).resize((size, size))) for p in photos]


def _heatmap(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    heat = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        s = rng.uniform(0.08, 0.25) * size
        heat += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    heat /= heat.max()
    rgb = np.stack([np.clip(1.5 * heat, 0, 1), np.clip(1.5 * heat - 0.5, 0, 1), np.clip(0.4 - heat, 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def _practice(root: Path, rng: np.random.Generator, photo: np.ndarray, size: int) -> list[dict]:
    folder = root / "practice"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(folder / "image.png")
    Image.fromarray(_heatmap(rng, size)).save(folder / "map.png")
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(folder / "grey.png")
    return [{"id": "p1", "image": "practice/image.png", "map": "practice/map.png", "wrong": "practice/grey.png",
             "prediction": "astronaut", "feedback": "The grey map highlights nothing, so the other map is better."},
            {"id": "p2", "image": "practice/image.png", "map": "practice/map.png", "prediction": "astronaut",
             "feedback": "Both maps are the same, so Neither is the answer."}]


def make_sample_dataset(
    directory: str | Path,
    conditions: int = 2,
    examples: int = 3,
    size: int = 96,
    seed: int = 0,
    name: str = "sample-study",
    crowdsourcing: dict | None = None,
) -> Path:
    """Write a study data set (manifest.json + PNGs) with ``conditions`` x ``examples`` examples;
    with ``crowdsourcing`` (settings, possibly empty) also a crowdsourcing section: consent and
    instructions files and two practice items (a real map against a grey one, and one map twice)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos(size)
    classes = ["astronaut", "espresso", "tabby cat", "space shuttle"]  # the order of _photos
    methods = ["GradCAM", "GuidedBackprop", "ExcitationBackprop", "IntegratedGradients"]
    conds = []
    for c in range(conditions):
        items = []
        for e in range(examples):
            folder = root / f"c{c}" / f"{e:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photos[(c + e) % len(photos)]).save(folder / "image.png")
            Image.fromarray(_heatmap(rng, size)).save(folder / "original.png")
            Image.fromarray(_heatmap(rng, size)).save(folder / "finetuned.png")
            rel = f"c{c}/{e:03d}"
            items.append(
                {
                    "id": f"{e:03d}",
                    "image": f"{rel}/image.png",
                    "original": f"{rel}/original.png",
                    "finetuned": f"{rel}/finetuned.png",
                    "prediction": classes[(c + e) % len(photos)] if len(photos) > 1 else "gradient",
                    "label": classes[(c + e) % len(photos)] if len(photos) > 1 else "gradient",
                }
            )
        conds.append(
            {"dataset": "Sample", "metric": f"Metric{c // len(methods)}", "model": "TinyNet",
             "method": methods[c % len(methods)], "examples": items}
        )
    manifest = {"format": FORMAT, "version": VERSION, "name": name, "conditions": conds}
    if crowdsourcing is not None:
        manifest["crowdsourcing"] = {"consent": "consent.txt", "instructions": "instructions.txt",
                                     "practice": _practice(root, rng, photos[0], size), **crowdsourcing}
        (root / "consent.txt").write_text("You are invited to a study of heat maps.\nYour answers are stored "
                                          "under a pseudonym.\nYou may stop at any time.\n", encoding="utf-8")
        (root / "instructions.txt").write_text("Pick the heat map that better shows why the model made its "
                                               "prediction, or Neither.\n", encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root
