"""`run(config, out)`: a whole benchmark run, split into shards, resumable after any interruption."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from tqdm.auto import tqdm

from xaibench.errors import InputError
from xaibench.runner import layout
from xaibench.runner.config import RunConfig, load_config
from xaibench.runner.executor import Executor, LocalExecutor
from xaibench.runner.shard import ShardSpec, execute_shard, get_context, select_positions


def plan(cfg: RunConfig, out: str | Path, positions: list[int], model_hash: str) -> list[ShardSpec]:
    """The shard specs of a run: consecutive chunks of `cfg.shard_size` image positions."""
    size = cfg.shard_size
    return [
        ShardSpec(str(out), k, tuple(positions[s : s + size]), cfg.raw, cfg.hash, model_hash)
        for k, s in enumerate(range(0, len(positions), size))
    ]


def run(
    config: RunConfig | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    executor: Executor | None = None,
) -> Path:
    """Run (or, with `resume`, finish) the benchmark of `config` into directory `out`; returns `out`.

    A directory that already holds a run is only touched with ``resume=True``, and only if the
    config hash and the model hash match the ones it started with. Finished shards are skipped;
    the rows of a resumed run are exactly those of an uninterrupted one.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    cfg = cfg.with_device(device)
    out = Path(out)
    manifest = layout.read_manifest(out)
    if manifest is not None and not resume:
        raise InputError(
            f"{out} already holds a run (config {manifest['config_hash'][:12]}); "
            "pass --resume to finish it, or choose another output directory"
        )
    if manifest is not None and manifest["config_hash"] != cfg.hash:
        raise InputError(
            f"refusing to resume {out}: it was started with config {manifest['config_hash'][:12]}, "
            f"this config hashes to {cfg.hash[:12]}; use a new output directory for a changed config"
        )
    ctx = get_context(cfg)
    if manifest is None:
        positions = select_positions(len(ctx.dataset), cfg.data["n"], cfg.data["seed"])
        specs = plan(cfg, out, positions, ctx.model_hash)
        manifest = {
            "config_hash": cfg.hash,
            "config": cfg.raw,
            "model_hash": ctx.model_hash,
            "positions": positions,
            "n_images": len(positions),
            "n_shards": len(specs),
            "methods": [m.label for m in cfg.methods],
            "metrics": [m.label for m in cfg.metrics],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out.mkdir(parents=True, exist_ok=True)
        layout.write_json(out / layout.MANIFEST, manifest)
    else:
        if manifest["model_hash"] != ctx.model_hash:
            raise InputError(
                f"refusing to resume {out}: model {cfg.model['spec']!r} hashes to {ctx.model_hash[:12]}, "
                f"the run started with {manifest['model_hash'][:12]}"
            )
        specs = plan(cfg, out, list(manifest["positions"]), manifest["model_hash"])
    for pattern in (".shard-*.tmp", f".{layout.MANIFEST}.*.tmp"):  # left by interrupted writes; never read
        for stale in out.rglob(pattern):
            stale.unlink(missing_ok=True)
    pending = [s for s in specs if not layout.results_path(out, s.index).exists()]
    n_methods, n_metrics = len(cfg.methods), len(cfg.metrics)
    label = cfg.name or Path(out).name
    with (
        tqdm(total=len(pending) * n_methods, desc=f"{label}: maps", unit="map", disable=None, position=0) as maps_bar,
        tqdm(
            total=len(pending) * n_methods * n_metrics, desc=f"{label}: metrics", unit="score", disable=None, position=1
        ) as metrics_bar,
    ):
        bars = {"maps": maps_bar, "metrics": metrics_bar}
        fn = functools.partial(execute_shard, progress=lambda what: bars[what].update(1))
        for _ in (executor or LocalExecutor()).map(fn, pending):
            pass
    return out
