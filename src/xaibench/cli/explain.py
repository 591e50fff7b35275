"""`xaibench explain`: attribution maps of a few images for several methods, saved with a gallery.

Writes ``DIR/maps.pt`` (``{"maps": {method: float32 [N, H, W]}, "ids": [N], "targets": long [N],
"labels": long [N], "classes": [names], "target_policy", "model", "data", "image_size", "split",
"seed"}``) and the gallery (rows = images with their true and explained class names and the
default mask's outline; columns = the image, then each method's map with its colour bar):
``DIR/gallery.png``, or ``DIR/gallery-01.png``, ``-02`` ... of at most `GALLERY_ROWS` images each.
The images are the first N of the split; the explained class is the model's prediction or the label.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

GALLERY_ROWS = 16  # images per gallery page: a page stays a few thousand pixels high


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="compute attribution maps for a few images and save them with a PNG gallery",
        description="Compute maps of the first N images of a data set for each method; write DIR/maps.pt "
        "(method -> [N, H, W], ids, targets) and DIR/gallery.png.",
    )
    p.add_argument("--model", required=True, help="model spec, e.g. builtin:digits-cnn or torchvision:resnet18")
    p.add_argument("--data", required=True, help="data set spec, e.g. builtin:digits")
    p.add_argument("--split", default="test", help="data set split (default: test)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize the shorter side to N and centre-crop N x N (needed for photos of different sizes)")
    p.add_argument("--methods", required=True, help="comma-separated method names (see `xaibench methods`)")
    p.add_argument("--n", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: a GPU if any, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the methods that draw random numbers")
    p.add_argument("--target", choices=("predicted", "label"), default="predicted",
                   help="explained class: the model's prediction (default) or the true label")
    p.add_argument("--batch-size", type=int, default=16, help="images explained at once (default: 16)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most model rows per forward inside a method (default: 64)")
    p.set_defaults(func=handle)


def explain_images(model: nn.Module, images: Tensor, targets: Tensor, methods: Sequence[str], *,
                   seed: int = 0, batch_size: int = 16, max_batch: int = 64) -> dict[str, Tensor]:
    """Maps {method: float32 [N, H, W] on the CPU} of `images` for `targets`, `batch_size` images at a time.

    Methods taking a ``seed`` get `seed`; each explainer is built once and called per chunk.
    """
    from tqdm import tqdm

    from xaibench.checks import check_maps
    from xaibench.devices import model_device
    from xaibench.explainers import METHODS, explainer
    from xaibench.errors import InputError

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    device = model_device(model)
    out: dict[str, Tensor] = {}
    chunks = range(0, images.shape[0], batch_size)
    with tqdm(total=len(methods) * len(chunks), desc="explain", disable=None) as bar:
        for name in methods:
            params: dict[str, Any] = {"max_batch": max_batch}
            if "seed" in METHODS.get(name).params:
                params["seed"] = seed
            exp = explainer(name, model, **params)
            parts = []
            for start in chunks:
                x = images[start:start + batch_size].to(device)
                parts.append(exp(x, targets[start:start + batch_size].to(device)).detach().float().cpu())
                bar.update()
            maps = torch.cat(parts)
            check_maps(maps, images.shape[0], name=f"maps of {name!r}")
            out[name] = maps
    return out


def _class_name(classes: Sequence[str], index: int) -> str:
    return classes[index] if 0 <= index < len(classes) else str(index)


def save_gallery_pages(out: Path, images: Tensor, maps: dict[str, Tensor], titles: list[str],
                       masks: Tensor | None) -> list[Path]:
    """The gallery as ``gallery.png`` or, beyond `GALLERY_ROWS` images, pages ``gallery-01.png`` ..."""
    from xaibench.plotting import save_gallery

    n = images.shape[0]
    starts = range(0, n, GALLERY_ROWS)
    paths = []
    for page, s in enumerate(starts, start=1):
        part = slice(s, s + GALLERY_ROWS)
        name = "gallery.png" if len(starts) == 1 else f"gallery-{page:02d}.png"
        paths.append(save_gallery(images[part], {m: v[part] for m, v in maps.items()}, out / name,
                                  titles=titles[part], masks=None if masks is None else masks[part]))
    return paths


def handle(args: argparse.Namespace) -> int:
    import sys

    from xaibench import load_model
    from xaibench.data import collate, load_dataset
    from xaibench.devices import resolve_device
    from xaibench.errors import InputError
    from xaibench.explainers import METHODS
    from xaibench.files import write_atomic

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods: give at least one method name")
    for m in methods:
        METHODS.get(m)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    dataset = load_dataset(args.data, split=args.split, image_size=args.image_size)
    n = min(args.n, len(dataset))
    if n < args.n:
        print(f"xaibench: --n {args.n} is more than the {len(dataset)} images of {args.data!r} "
              f"(split {args.split!r}); explaining all {n}", file=sys.stderr)
    model = load_model(args.model).to(device).eval()
    batch = collate([dataset[i] for i in range(n)])
    if args.target == "label":
        targets = batch.labels.long()
    else:
        with torch.no_grad():
            targets = torch.cat([model(batch.images[s:s + args.batch_size].to(device)).argmax(1).cpu()
                                 for s in range(0, n, args.batch_size)])
    maps = explain_images(model, batch.images, targets, methods, seed=args.seed,
                          batch_size=args.batch_size, max_batch=args.max_batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(getattr(dataset, "classes", []) or [])
    saved = {
        "maps": maps, "ids": list(batch.ids), "targets": targets.cpu(), "labels": batch.labels.long().cpu(),
        "classes": classes, "target_policy": args.target, "model": args.model, "data": args.data,
        "image_size": args.image_size, "split": args.split, "seed": args.seed,
    }
    write_atomic(out / "maps.pt", lambda p: torch.save(saved, p))
    explained = "explained" if args.target == "label" else "predicted"
    titles = [f"{i}\ntrue: {_class_name(classes, int(y))}\n{explained}: {_class_name(classes, int(t))}"
              for i, y, t in zip(batch.ids, batch.labels.tolist(), targets.tolist())]
    default = getattr(dataset, "default_mask", None)
    pages = save_gallery_pages(out, batch.images, maps, titles, batch.masks.get(default) if default else None)
    shown = pages[0] if len(pages) == 1 else f"{len(pages)} pages {pages[0].name} ... {pages[-1].name}"
    print(f"maps of {n} images x {len(methods)} methods written to {out / 'maps.pt'}; gallery: {shown}")
    return 0
