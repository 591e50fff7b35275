"""Overhead of the streaming wrappers: ``python -m benchmarks.streaming_overhead [--batch 32] [--batches 8] [--repeats 5]``.

`builtin:digits-cnn` on ``builtin:digits-spurious`` test images (3x32x32), in batches. For each
case the same work is timed twice, interleaved, best of R passes over all batches:

- functional: the explainer call (where the streaming metric makes the maps) and the metric
  function, then ``.mean()`` as a training loop would log it;
- streaming: ``update(...)`` on every batch and ``compute()`` at the end (`xaibench.streaming`).

Cases: deletion (16 steps) and max-sensitivity (4 samples) with Grad-CAM maps made inside, and the
pointing game and sparseness on given maps (no model pass: the wrapper's fixed cost shows most).
Overhead = streaming / functional - 1, and the absolute difference per batch.
"""

from __future__ import annotations

import argparse
import time

import torch

import xaibench
from xaibench import streaming
from xaibench.data import collate, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    ds = load_dataset("builtin:digits-spurious", split="test")
    batches = []
    for k in range(args.batches):
        b = collate([ds[i] for i in range(k * args.batch, (k + 1) * args.batch)])
        with torch.no_grad():
            targets = model(b.images).argmax(1)
        batches.append((b.images, targets, b.masks["digit"]))
    gradcam = xaibench.explainer("gradcam", model)
    maps = [gradcam(x, t) for x, t, _ in batches]
    fns = xaibench.metrics

    cases = {
        "deletion (maps inside)": (
            lambda: [fns.deletion(model, x, gradcam(x, t), t, steps=16).mean() for x, t, _ in batches],
            lambda m: [m.update(model=model, inputs=x, targets=t) for x, t, _ in batches],
            lambda: streaming.Deletion(method="gradcam", steps=16),
        ),
        "max_sensitivity (explainer inside)": (
            lambda: [fns.max_sensitivity(model, x, t, gradcam, n_samples=4, seed=k).mean()
                     for k, (x, t, _) in enumerate(batches)],
            lambda m: [m.update(model=model, inputs=x, targets=t) for x, t, _ in batches],
            lambda: streaming.MaxSensitivity(method="gradcam", n_samples=4),
        ),
        "pointing_game (given maps)": (
            lambda: [fns.pointing_game(a, mk).mean() for a, (_, _, mk) in zip(maps, batches)],
            lambda m: [m.update(attributions=a, masks=mk) for a, (_, _, mk) in zip(maps, batches)],
            lambda: streaming.PointingGame(),
        ),
        "sparseness (given maps)": (
            lambda: [fns.sparseness(a).mean() for a in maps],
            lambda m: [m.update(attributions=a) for a in maps],
            lambda: streaming.Sparseness(),
        ),
    }
    print(f"{args.batches} batches of {args.batch} images, best of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| case | functional (s) | streaming (s) | overhead | per batch (ms) |")
    print("|---|---|---|---|---|")
    for name, (functional, update, make) in cases.items():
        best_f = best_s = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            functional()
            best_f = min(best_f, time.perf_counter() - start)
            metric = make()
            start = time.perf_counter()
            update(metric)
            metric.compute()
            best_s = min(best_s, time.perf_counter() - start)
        print(f"| {name} | {best_f:.4f} | {best_s:.4f} | {100 * (best_s / best_f - 1):+.1f} % | "
              f"{1e3 * (best_s - best_f) / args.batches:+.3f} |")


if __name__ == "__main__":
    main()
