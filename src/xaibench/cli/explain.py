"""`xaibench explain`: attribution maps of a few images for several methods, saved with a gallery.

Writes ``DIR/maps.pt`` (``{"maps": {method: float32 [N, H, W]}, "ids": [N], "targets": long [N],
"labels": long [N], "target_policy", "model", "data", "params": {method: params}}``) and
``DIR/gallery.png`` (rows = images; columns = the image, then each method's map overlaid).
The images are the first N of the split; the explained class is the model's prediction or the label.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


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
    p.add_argument("--methods", required=True, help="comma-separated method names (see `xaibench methods`)")
    p.add_argument("--n", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
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
    from xaibench.explainers import METHODS, explainer
    from xaibench.errors import InputError

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
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


def handle(args: argparse.Namespace) -> int:
    from xaibench import load_model
    from xaibench.data import collate, load_dataset
    from xaibench.errors import InputError
    from xaibench.explainers import METHODS
    from xaibench.plotting import save_gallery

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods: give at least one method name")
    for m in methods:
        METHODS.get(m)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    model = load_model(args.model).to(torch.device(args.device)).eval()
    dataset = load_dataset(args.data, split=args.split)
    n = min(args.n, len(dataset))
    batch = collate([dataset[i] for i in range(n)])
    if args.target == "label":
        targets = batch.labels.long()
    else:
        with torch.no_grad():
            targets = torch.cat([model(batch.images[s:s + args.batch_size].to(args.device)).argmax(1).cpu()
                                 for s in range(0, n, args.batch_size)])
    maps = explain_images(model, batch.images, targets, methods, seed=args.seed,
                          batch_size=args.batch_size, max_batch=args.max_batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({
        "maps": maps, "ids": list(batch.ids), "targets": targets.cpu(), "labels": batch.labels.long().cpu(),
        "target_policy": args.target, "model": args.model, "data": args.data, "split": args.split,
        "seed": args.seed,
    }, out / "maps.pt")
    save_gallery(batch.images, maps, out / "gallery.png", titles=list(batch.ids))
    print(f"maps of {n} images x {len(methods)} methods written to {out / 'maps.pt'} and {out / 'gallery.png'}")
    return 0
