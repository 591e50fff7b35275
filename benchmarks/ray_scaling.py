"""Ray executor scaling: ``python -m benchmarks.ray_scaling [--n 128] [--shard-size 16] [--workers 1,2]``.

A fixed config (`builtin:digits-cnn` on N ``builtin:digits`` test images, 3x32x32; saliency,
SmoothGrad with 8 samples and integrated gradients with 16 steps; deletion and insertion with 16
steps, max-sensitivity with 4 samples, sparseness) cut into shards, run through
`Executor.map(execute_shard, specs)`:

- local: `LocalExecutor` in this process, one torch thread, model loaded before timing (run first
  and again last: the difference is the drift of a shared machine's load);
- Ray with W workers (a local cluster of W CPUs, one CPU per task, so one torch thread each): a
  warm-up run first (starts the workers, loads the model in each), then the timed run into a fresh
  directory (no cached maps).

Reported: wall time, the sum of the shards' own compute times (`ShardSummary.seconds`, measured
inside the workers), speed-up over local, and the overhead per task = (W x wall - sum of shard
times) / shards (scheduling, serialisation, idle tail); plus the round trip of an empty Ray task
and the start-up the table leaves out (``ray.init``, and the warm-up run: worker processes import
torch and xaibench and load the model).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xaibench.runner import LocalExecutor, execute_shard, parse_config, plan
from xaibench.runner.ray_executor import RayExecutor, import_ray
from xaibench.runner.shard import get_context, select_positions


def config(n: int, shard_size: int) -> dict:
    return {
        "name": "ray-scaling",
        "seed": 0,
        "shard_size": shard_size,
        "explain_batch": shard_size,
        "model": {"spec": "builtin:digits-cnn"},
        "data": {"spec": "builtin:digits", "split": "test", "n": n},
        "methods": {"saliency": {}, "smoothgrad": {"n_samples": 8}, "integrated_gradients": {"steps": 16}},
        "metrics": {"deletion": {"steps": 16}, "insertion": {"steps": 16}, "max_sensitivity": {"n_samples": 4},
                    "sparseness": {}},
    }


def timed_map(executor, cfg, positions, model_hash, out: Path) -> tuple[float, float]:
    specs = plan(cfg, out, positions, model_hash)
    start = time.perf_counter()
    summaries = list(executor.map(execute_shard, specs))
    return time.perf_counter() - start, sum(s.seconds for s in summaries)


def empty_task_seconds(ray, n: int = 200) -> float:
    noop = ray.remote(num_cpus=1)(lambda: None)
    ray.get([noop.remote() for _ in range(20)])  # warm
    start = time.perf_counter()
    ray.get([noop.remote() for _ in range(n)])
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    ray = import_ray()
    torch.set_num_threads(1)
    cfg = parse_config(config(args.n, args.shard_size))
    ctx = get_context(cfg)
    positions = select_positions(len(ctx.dataset), cfg.data["n"], cfg.data["seed"])
    shards = len(plan(cfg, "x", positions, ctx.model_hash))
    rows, starts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        timed_map(LocalExecutor(), cfg, positions[: args.shard_size], ctx.model_hash, Path(tmp, "warm"))
        wall, work = timed_map(LocalExecutor(), cfg, positions, ctx.model_hash, Path(tmp, "local"))
        rows.append(("local (1 thread)", wall, work, None))
        local = wall
        for w in [int(v) for v in args.workers.split(",")]:
            start = time.perf_counter()
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
            init = time.perf_counter() - start
            try:
                warm, _ = timed_map(RayExecutor(), cfg, positions[: args.shard_size * w], ctx.model_hash,
                                    Path(tmp, f"warm{w}"))
                starts.append(f"{w} worker(s): ray.init {init:.1f} s, first {w} shard(s) {warm:.1f} s")
                wall, work = timed_map(RayExecutor(), cfg, positions, ctx.model_hash, Path(tmp, f"ray{w}"))
                rows.append((f"Ray, {w} worker{'s' if w > 1 else ''}", wall, work, (w * wall - work) / shards))
                empty = empty_task_seconds(ray)
            finally:
                ray.shutdown()
        wall, work = timed_map(LocalExecutor(), cfg, positions, ctx.model_hash, Path(tmp, "local-again"))
        rows.append(("local again (drift check)", wall, work, None))
    print(f"{args.n} images, {shards} shards of {args.shard_size}; 3 methods x 4 metrics; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    print("| executor | wall (s) | sum of shard times (s) | speed-up vs local | overhead per task (s) |")
    print("|---|---|---|---|---|")
    for name, wall, work, overhead in rows:
        print(f"| {name} | {wall:.2f} | {work:.2f} | {local / wall:.2f}x | "
              f"{'-' if overhead is None else f'{overhead:.3f}'} |")
    print(f"empty Ray task round trip (batch of 200): {1e3 * empty:.2f} ms")
    print("start-up (not in the table): " + "; ".join(starts))


if __name__ == "__main__":
    main()
