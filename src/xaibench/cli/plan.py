"""`xaibench plan CONFIG`: what a run will cost before it runs.

Per method and metric, the forwards / backwards / explanations per image (the declared
passes, evaluated by `xaibench.runner.cost`), their totals over the configured images, and a time estimate:
one forward and one forward + backward of a batch are timed on the device (the calibration), and
each step's passes are priced at those per-image times. ``--workers`` adds what N workers would
take, each with the calibrated speed: model loading once per worker, then ``ceil(shards / N)``
rounds of shards, each with a per-task overhead (``--task-overhead``, measured for the Ray executor
in benchmarks/README.md). The estimate counts model passes only: CPU work such as SLIC superpixels
or ROAD's imputation and Python overhead is not in it, and terms whose size is unknown before
running (Score-CAM's channels) are listed, not guessed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_WORKERS = "1,2,4,8"
DEFAULT_TASK_OVERHEAD = 0.05  # seconds per shard task on a warm Ray worker (benchmarks/README.md)


@dataclass(frozen=True)
class Calibration:
    """Seconds per image of a forward and of a backward pass, and of loading the model, on a device."""

    device: str
    batch: int
    forward: float
    backward: float
    load: float
    measured: bool  # False when given on the command line


def calibrate(model: torch.nn.Module, image_size: tuple[int, int], *, batch: int, device: str,
              repeats: int = 3, load: float = 0.0) -> Calibration:
    """Time `repeats` forwards and forward + backward (gradient w.r.t. the inputs, as the gradient
    explainers take) of a random batch after one warm-up; the median per image."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *image_size, generator=gen).to(device)

    def timed(backward: bool) -> float:
        times = []
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            if backward:
                inputs = x.clone().requires_grad_(True)
                model(inputs).max(1).values.sum().backward()
            else:
                with torch.no_grad():
                    model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            if i:  # the first one warms up
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] / batch

    forward = timed(False)
    both = timed(True)
    return Calibration(device, batch, forward, max(both - forward, 0.0), load, True)


def cost_table(cfg: Any, image_size: tuple[int, int], model: torch.nn.Module | None) -> list[dict[str, Any]]:
    """One row per method's maps and per (method, metric): passes per image, explanations expanded."""
    from xaibench.runner.cost import method_cost, metric_cost, pair_cost

    methods = {m.label: method_cost(m.method, m.params, image_size=image_size) for m in cfg.methods}
    rows = []
    for label, cost in methods.items():
        rows.append({"method": label, "metric": "(maps)", "explanations": 1.0, "forwards": cost.forwards,
                     "backwards": cost.backwards, "unknown": "; ".join(cost.unknown)})
    for metric in cfg.metrics:
        own = metric_cost(metric.metric, metric.params, image_size=image_size, model=model)
        for label, cost in methods.items():
            pair = pair_cost(cost, own)
            rows.append({"method": label, "metric": metric.label, "explanations": own.explanations,
                         "forwards": pair.forwards, "backwards": pair.backwards,
                         "unknown": "; ".join(dict.fromkeys(pair.unknown))})
    return rows


def estimate(rows: list[dict[str, Any]], cal: Calibration, n_images: int, shard_size: int,
             workers: list[int], task_overhead: float) -> dict[str, Any]:
    """Totals over `n_images` and the time for each number of workers (see the module docstring)."""
    for row in rows:
        row["seconds_per_image"] = row["forwards"] * cal.forward + row["backwards"] * cal.backward
    totals = {k: n_images * sum(r[k] for r in rows) for k in ("explanations", "forwards", "backwards")}
    seconds = n_images * sum(r["seconds_per_image"] for r in rows)
    shards = math.ceil(n_images / shard_size)
    per_shard = seconds / shards if shards else 0.0
    by_workers = {n: cal.load + math.ceil(shards / n) * (per_shard + task_overhead) for n in workers}
    return {"n_images": n_images, "shards": shards, "totals": totals, "seconds": seconds,
            "workers": by_workers, "task_overhead": task_overhead,
            "unknown": sorted({r["unknown"] for r in rows if r["unknown"]})}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _workers(text: str) -> list[int]:
    from xaibench.errors import InputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--workers: expected numbers separated by commas, like 1,2,4; got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"--workers: expected positive numbers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="forwards, backwards, explanations and time a benchmark config will take",
        description="Print the planned cost of a TOML config per method and metric (passes per image from the "
        "declared costs), the totals over its images and a time estimate calibrated on this device, for 1 to N "
        "workers. Nothing is written.",
    )
    p.add_argument("config", help="TOML config file")
    p.add_argument("--device", default=None, help="device to calibrate on (default: the config's)")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="plan for N images instead of the config's (the data set is then not loaded)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="image side in pixels when the data set is not loaded (default: [data].image_size)")
    p.add_argument("--workers", default=DEFAULT_WORKERS, help=f"worker counts to estimate (default {DEFAULT_WORKERS})")
    p.add_argument("--task-overhead", type=float, default=DEFAULT_TASK_OVERHEAD, metavar="S",
                   help=f"seconds of scheduling overhead per shard task (default {DEFAULT_TASK_OVERHEAD})")
    p.add_argument("--batches", type=int, default=3, help="timed batches per calibration (default 3)")
    p.add_argument("--forward-ms", type=float, default=None,
                   help="milliseconds per image of a forward pass, instead of calibrating (with --backward-ms)")
    p.add_argument("--backward-ms", type=float, default=None, help="milliseconds per image of a backward pass")
    p.add_argument("--pairs", action="store_true", help="also print every (method, metric) pair")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (every pair included)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError
    from xaibench.runner import load_config

    workers = _workers(args.workers)
    if (args.forward_ms is None) != (args.backward_ms is None):
        raise InputError("--forward-ms and --backward-ms go together")
    if args.images is not None and args.images < 1:
        raise InputError(f"--images: must be >= 1, got {args.images}")
    cfg = load_config(args.config).with_device(args.device)
    from xaibench.devices import resolve_device

    device = str(resolve_device(cfg.device))  # a device this machine lacks: the error every command gives
    start = time.perf_counter()
    from xaibench import load_model

    from xaibench.errors import WeightsUnavailableError

    mkw = {k: cfg.model[k] for k in ("weights", "num_classes") if cfg.model.get(k) is not None}
    try:
        model = load_model(cfg.model["spec"], seed=cfg.seed, device=device, **mkw).eval()
    except WeightsUnavailableError as err:  # timing does not depend on the weights' values
        print(f"note: timing the architecture with random weights ({err})", file=sys.stderr)
        mkw.pop("weights")
        model = load_model(cfg.model["spec"], seed=cfg.seed, device=device, **mkw).eval()
    load = time.perf_counter() - start
    if args.images is None:
        from xaibench.data import load_dataset
        from xaibench.runner.shard import select_positions

        dkw = {k: cfg.data[k] for k in ("image_size",) if cfg.data.get(k) is not None}
        dataset = load_dataset(cfg.data["spec"], split=cfg.data["split"], **dkw)
        n_images = len(select_positions(len(dataset), cfg.data["n"], cfg.data["seed"]))
        image_size = tuple(dataset[0].image.shape[-2:])
    else:
        side = args.image_size or cfg.data.get("image_size")
        if side is None:
            raise InputError("--images without the data set: give --image-size (or [data].image_size in the config)")
        n_images, image_size = args.images, (side, side)
    if args.forward_ms is not None:
        cal = Calibration(device, 0, args.forward_ms / 1e3, args.backward_ms / 1e3, load, False)
    else:
        cal = calibrate(model, image_size, batch=min(cfg.max_batch, 64), device=device,
                        repeats=max(1, args.batches), load=load)
    rows = cost_table(cfg, image_size, model)
    plan = estimate(rows, cal, n_images, cfg.shard_size, workers, args.task_overhead)
    if args.json:
        print(json.dumps({"calibration": cal.__dict__, "rows": rows, **plan}, indent=1, default=str))
        return 0
    _print(cfg, rows, cal, plan, image_size, args.pairs)
    return 0


def _print(cfg: Any, rows: list[dict[str, Any]], cal: Calibration, plan: dict[str, Any],
           image_size: tuple[int, int], pairs: bool = False) -> None:
    import pandas as pd

    table = pd.DataFrame(rows)
    table["time %"] = (100 * table["seconds_per_image"] / max(table["seconds_per_image"].sum(), 1e-30)).round(1)
    maps = table[table["metric"] == "(maps)"]
    scored = table[table["metric"] != "(maps)"]
    metrics = scored.groupby("metric", sort=False).agg(
        explanations=("explanations", "first"), forwards=("forwards", "sum"), backwards=("backwards", "sum"),
        **{"time %": ("time %", "sum")}).reset_index()
    number = lambda v: f"{v:g}"  # noqa: E731
    print(f"plan for {cfg.name or 'config'}: {plan['n_images']} images of {image_size[0]}x{image_size[1]} in "
          f"{plan['shards']} shards, {len(cfg.methods)} methods x {len(cfg.metrics)} metrics")
    print("\nmaps, per image (one explanation by each method):")
    print(maps[["method", "forwards", "backwards", "time %"]].to_string(index=False, float_format=number))
    print("\nmetrics, per image, over all methods (explanations = calls of each method, their passes included):")
    print(metrics.to_string(index=False, float_format=number))
    if pairs:
        print("\nper (method, metric) pair, per image:")
        print(scored[["method", "metric", "explanations", "forwards", "backwards", "time %"]]
              .to_string(index=False, float_format=number))
    t = plan["totals"]
    print(f"\ntotal: {t['explanations']:,.0f} explanations, {t['forwards']:,.0f} forwards, "
          f"{t['backwards']:,.0f} backwards (per image: {t['forwards'] / plan['n_images']:,.0f} forwards, "
          f"{t['backwards'] / plan['n_images']:,.0f} backwards)")
    how = f"timed on {cal.device}, batch {cal.batch}" if cal.measured else "given"
    print(f"calibration ({how}): forward {1e3 * cal.forward:.3g} ms/image, backward {1e3 * cal.backward:.3g} "
          f"ms/image, model load {cal.load:.1f} s")
    print(f"estimate on one worker: {_duration(plan['seconds'])} of model passes")
    for n, seconds in plan["workers"].items():
        print(f"  {n:>4} worker{'s' if n > 1 else ' '}: {_duration(seconds)}")
    if plan["unknown"]:
        print("not counted (size unknown before running): " + " | ".join(plan["unknown"]))
