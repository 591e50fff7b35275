"""Cost of an epoch per training setting, side by side: ``python -m benchmarks.training_cost``.

Trains the same model on the same images once per setting (baseline, fp, ap by default) with the
real trainer (`xaibench.training.train`), settings interleaved round by round so that load changes
on a shared machine hit them alike, and reports the best training-epoch time of each setting (the
log's ``seconds``: the training batches of one epoch, validation excluded) and its ratio to the
baseline. Targets (issue 11): FP <= 2.2x, AP <= 6x a baseline epoch.

Defaults: ``builtin:digits-cnn`` on the 1257 ``builtin:digits`` training images (3x32x32), batch
64, 2 epochs per run, 3 rounds, on the CPU. ``--model torchvision:resnet18 --image-size 64`` with
``--device cuda`` gives the GPU figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from xaibench.training import train


def epoch_seconds(setting: str, out: str, *, model: str = "builtin:digits-cnn", data: str = "builtin:digits",
                  image_size: int | None = None, n: int | None = None, batch_size: int = 64, epochs: int = 2,
                  device: str = "cpu") -> float:
    """The best training-epoch time (the log's ``seconds``) of one `train` run of `setting` into `out`."""
    cfg = {"seed": 0, "device": device, "setting": setting, "epochs": epochs, "batch_size": batch_size,
           "selection": "last", "model": {"spec": model},
           "data": {"spec": data, "image_size": image_size, "n": n, "val_fraction": 0.0}}
    return float(train(cfg, out, progress=False).log["seconds"].min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:digits-cnn")
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="training images (default: the whole split)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--settings", default="baseline,fp,ap")
    args = parser.parse_args()
    settings = args.settings.split(",")
    best = {s: float("inf") for s in settings}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load {os.getloadavg()}, {args.model} on {args.data}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for s in settings:
                seconds = epoch_seconds(s, f"{tmp}/{s}-{r}", model=args.model, data=args.data,
                                        image_size=args.image_size, n=args.n, batch_size=args.batch_size,
                                        epochs=args.epochs, device=args.device)
                best[s] = min(best[s], seconds)
    base = best.get("baseline", float("nan"))
    print(f"{'setting':<10} {'epoch s':>8} {'x baseline':>10}")
    for s in settings:
        print(f"{s:<10} {best[s]:8.3f} {best[s] / base:10.2f}")
    print(f"total {time.perf_counter() - start:.0f} s, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
