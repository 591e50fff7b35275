"""Direct timing of ROAD on the built-in digits: ``python -m benchmarks.road_timing [--n 50] [--repeats 3]``.

`builtin:digits-cnn` on N test images of ``builtin:digits`` (3x32x32), percentages 10/30/50/70/90,
MoRF and LeRF, default imputation noise. Two kinds of maps exercise the two solver paths of the
imputation: gradient x input summed over channels (scattered removed pixels, Jacobi-CG with a
coarse initial guess) and the same maps blurred (contiguous removed regions, multigrid). Reports
the best-of-R wall time of `road`, the time spent inside the model during that call, and a
checksum of the curves (to compare the output of two versions of the code).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import xaibench
from xaibench.data import load_dataset
from xaibench.metrics.road import road

from .harness import Counting


def _maps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    out = model(xg).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(out, xg)
    gxi = (grad * x).sum(1).detach()
    k = torch.ones(1, 1, 7, 7) / 49
    smooth = F.conv2d(gxi.abs()[:, None], k, padding=3)[:, 0]
    return {"grad_x_input": gxi, "smooth": smooth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solve-batch", type=int, default=None)
    parser.add_argument("--maps", default="grad_x_input,smooth")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = xaibench.load_model("builtin:digits-cnn")
    data = load_dataset("builtin:digits")
    x, y = data.tensors()
    x, y = x[: args.n].float(), y[: args.n]
    maps = _maps(model, x, y)
    counting = Counting(model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    for name in args.maps.split(","):
        a = maps[name]
        best, inside, checksum = float("inf"), 0.0, 0.0
        for _ in range(args.repeats):
            counting.images, counting.seconds = 0, 0.0
            start = time.perf_counter()
            res = road(counting, x, a, y, percentages=[10, 30, 50, 70, 90], solve_batch=args.solve_batch)
            wall = time.perf_counter() - start
            if wall < best:
                best, inside = wall, counting.seconds
            checksum = float(res.curves.sum() + res.extras["lerf"].sum())
        print(f"{name:14s} road {best:.3f} s  model {inside:.3f} s  ({counting.images} images)  "
              f"curves sum {checksum:.1f}  score mean {float(res.scores.mean()):.4f}")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
