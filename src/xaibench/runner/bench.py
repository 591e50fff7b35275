"""`run(config, out)`: a whole benchmark run, split into shards, resumable after any interruption.

Order of a run: load the model and the data set, describe the selected images (ids, content
hashes, sizes, masks), check everything that can be checked and dry-run every (method, metric)
on two images without writing anything; only then take the run directory's lock (`layout.run_lock`),
write the manifest, verify what earlier attempts committed, and run the pending shards.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from xaibench.devices import resolve_device
from xaibench.errors import InputError
from xaibench.modelspec import ModelSpec
from xaibench.runner import layout
from xaibench.runner.config import RunConfig, load_config
from xaibench.runner.cost import format_plan, plan_costs, step_units
from xaibench.runner.executor import Executor, LocalExecutor
from xaibench.runner.progress import RunProgress
from xaibench.runner.shard import (
    Context,
    ShardSpec,
    compute_shard,
    execute_shard,
    get_context,
    missing_mask_error,
    select_positions,
)

RUN_FILES = (layout.MANIFEST, "report.html")
RUN_FOLDERS = ("shards", "commits", "curves", "images", "maps")
SHOWN = 3  # changed images named in an error


def plan(cfg: RunConfig, out: str | Path, positions: list[int], model_hash: str) -> list[ShardSpec]:
    """The shard specs of a run: consecutive chunks of `cfg.shard_size` image positions."""
    size = cfg.shard_size
    return [
        ShardSpec(str(out), k, tuple(positions[s : s + size]), cfg.raw, cfg.hash, model_hash)
        for k, s in enumerate(range(0, len(positions), size))
    ]


def _check_selection(cfg: RunConfig, ctx: Context, records: list[Any]) -> None:
    """Image sizes agree and every mask metric's mask exists for every selected image."""
    sizes = {r.size: r for r in records}
    if len(sizes) > 1:
        a, b = list(sizes.values())[:2]
        raise InputError(
            f"the images of [data] {cfg.data['spec']!r} have different sizes ({a.id!r}: {a.size[1]}x{a.size[0]}, "
            f"{b.id!r}: {b.size[1]}x{b.size[0]}, WxH); set [data] image_size = <int> to resize and centre-crop them"
        )
    from xaibench.metrics import METRICS

    default = getattr(ctx.dataset, "default_mask", None)
    for metric in cfg.metrics:
        if "masks" not in METRICS.get(metric.metric).info.requires:
            continue
        name = metric.mask if metric.mask is not None else default
        where = f"[metrics.{metric.label}]"
        if name is None or name not in getattr(ctx.dataset, "mask_names", ()):
            raise missing_mask_error(ctx, where, [], name)
        lacking = [r for r in records if name not in r.masks]
        if lacking:
            files = [r.missing.get(name) or r.id for r in lacking[:SHOWN]]
            more = f" and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""
            raise InputError(f"{where} needs mask {name!r}, which {len(lacking)} of the {len(records)} selected "
                             f"images lack: missing {', '.join(files)}{more}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _preflight(cfg: RunConfig, out: Path, positions: list[int], model_hash: str) -> None:
    """Every method and metric once on the first two images, nothing written: a bad parameter
    value or layer name fails in seconds, before the run directory exists."""
    spec = ShardSpec(str(out), 0, tuple(positions[:2]), cfg.raw, cfg.hash, model_hash)
    try:
        compute_shard(spec, cache=False)
    except InputError as err:
        raise InputError(f"config check on {len(spec.positions)} images (nothing was written): {err}") from err


def _data_hash(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def _data_changes(manifest: dict[str, Any], n_total: int, records: list[Any]) -> str | None:
    """What changed in the data since the run started, or None."""
    if manifest.get("n_total") not in (None, n_total):
        return f"the split now has {n_total} images, the run started with {manifest['n_total']}"
    ids, hashes = manifest.get("image_ids"), manifest.get("image_hashes")
    if ids is None or hashes is None:
        return None  # a run directory of an older xaibench: nothing recorded to compare
    renamed = [(i, old, r.id) for i, (old, r) in enumerate(zip(ids, records)) if old != r.id]
    if renamed:
        shown = "; ".join(f"position {i}: {old!r} is now {new!r}" for i, old, new in renamed[:SHOWN])
        return f"{len(renamed)} selected images are different images now ({shown})"
    edited = [r.id for old, r in zip(hashes, records) if old != r.sha256]
    if edited:
        more = f" and {len(edited) - SHOWN} more" if len(edited) > SHOWN else ""
        return f"the content of {len(edited)} selected images changed ({', '.join(map(repr, edited[:SHOWN]))}{more})"
    return None


def _model_changed(cfg: RunConfig, out: Path, now: str, then: str) -> InputError:
    kind = ModelSpec.parse(cfg.model["spec"]).kind
    random_init = cfg.model.get("weights") is None and kind in ("torchvision", "timm")
    why = ("its random weights are drawn from the run seed, so the architecture's initialisation changed "
           "(another torchvision/timm version)" if random_init else "its weights changed (another weights file, "
           "retrained built-in model or library version)")
    return InputError(
        f"refusing to resume {out}: model {cfg.model['spec']!r} hashes to {now[:12]}, the run started with "
        f"{then[:12]}: {why}. Scores of two models must not mix: restore the original weights, or start the run "
        "again with --overwrite (or another --out)"
    )


def _clear(out: Path) -> None:
    """Remove a run's files from `out` (nothing else); call it holding the lock."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)


def _record_existing(out: Path, spec: ShardSpec) -> None:
    """Write the commit record of a committed shard that has none (older run or deleted record)."""
    results = layout.results_path(out, spec.index)
    try:
        pd.read_parquet(results)
    except Exception as err:
        raise InputError(f"results file {results} is corrupt ({err}); delete it to recompute shard {spec.index} "
                         "with --resume") from None
    files = [results, layout.curves_path(out, spec.index), layout.images_path(out, spec.index)]
    files += [layout.maps_path(out, label, spec.index) for label in spec.config["methods"]]
    records = {p.relative_to(out).as_posix(): layout.file_record(p) for p in files if p.exists()}
    layout.write_json(layout.commit_path(out, spec.index), {"shard": spec.index, "files": records})


def verify_committed(out: Path, specs: list[ShardSpec]) -> tuple[list[ShardSpec], list[str]]:
    """The shards still to run and notes on what was recomputed.

    Every file of a committed shard is checked against its commit record (size and sha256). A
    corrupt results file is an `InputError` naming it (its scores are not recomputed behind the
    user's back); a corrupt or missing cache (curves, images, maps) is deleted and its shard run again.
    """
    pending, notes = [], []
    for spec in specs:
        results = layout.results_path(out, spec.index)
        if not results.exists():
            pending.append(spec)
            continue
        try:
            commit = layout.read_commit(out, spec.index)
        except InputError:
            commit = None
        rel = results.relative_to(out).as_posix()
        if commit is None or rel not in commit["files"]:
            _record_existing(out, spec)
            continue
        why = layout.check_file(results, commit["files"][rel])
        if why:
            raise InputError(
                f"results file {results} is corrupt ({why}); delete it (and {layout.commit_path(out, spec.index)}) "
                f"to recompute shard {spec.index} with --resume, or start the run again with --overwrite"
            )
        bad = [(name, why) for name, record in commit["files"].items() if name != rel
               and (why := layout.check_file(out / name, record))]
        if bad:
            for name, _ in bad:
                (out / name).unlink(missing_ok=True)
            results.unlink()
            layout.commit_path(out, spec.index).unlink(missing_ok=True)
            notes.append(f"recomputing shard {spec.index}: " + "; ".join(f"{out / n} is {w}" if w == "missing"
                                                                          else f"{out / n} is corrupt ({w})"
                                                                          for n, w in bad))
            pending.append(spec)
    return pending, notes


def run(
    config: RunConfig | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> Path:
    """Run (or, with `resume`, finish) the benchmark of `config` into directory `out`; returns `out`.

    A directory that already holds a run is only touched with ``resume=True`` (same config hash,
    model hash and images; committed files verified) or ``overwrite=True`` (its run files are
    deleted and the run starts again). One process writes a run directory at a time. Finished
    shards are skipped; the rows of a resumed run are those of an uninterrupted one (but for the
    wall-time column ``seconds``). progress: None = a bar in a terminal, plain lines otherwise;
    False = silent.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    cfg = cfg.with_device(device)
    resolve_device(cfg.device)  # a device this machine lacks is an error before anything else
    out = Path(out)
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume finishes the run in the directory, "
                         "overwrite deletes it and starts again")
    manifest = None if overwrite else layout.read_manifest(out)
    if manifest is not None and not resume:
        raise InputError(
            f"{out} already holds a run (config {manifest['config_hash'][:12]}); pass --resume to finish it, "
            "--overwrite to delete it and start again, or choose another output directory"
        )
    if manifest is not None and manifest["config_hash"] != cfg.hash:
        raise InputError(
            f"refusing to resume {out}: it was started with config {manifest['config_hash'][:12]}, "
            f"this config hashes to {cfg.hash[:12]}; use a new output directory for a changed config "
            "(or --overwrite to replace the run)"
        )
    ctx = get_context(cfg, fresh=True)
    n_total = len(ctx.dataset)
    if manifest is None:
        positions = select_positions(n_total, cfg.data["n"], cfg.data["seed"])
    else:
        positions = list(manifest["positions"])
        if manifest["model_hash"] != ctx.model_hash:
            raise _model_changed(cfg, out, ctx.model_hash, manifest["model_hash"])
        if manifest.get("n_total") not in (None, n_total):
            raise InputError(f"refusing to resume {out}: the data changed: "
                             f"{_data_changes(manifest, n_total, [])}")
    records = [ctx.dataset.describe(p) for p in positions]
    specs = plan(cfg, out, positions, ctx.model_hash)
    if manifest is None:
        _check_selection(cfg, ctx, records)
        if progress is not False:
            _say(format_plan(plan_costs(cfg, image_size=records[0].size, model=ctx.model), len(records)))
            _say(f"checking every method and metric on {min(2, len(positions))} images, nothing written yet ...")
        _preflight(cfg, out, positions, ctx.model_hash)
    else:
        changed = _data_changes(manifest, n_total, records)
        if changed:
            raise InputError(f"refusing to resume {out}: the data changed since it started: {changed}; "
                             "restore the data, or start the run again with --overwrite")

    with layout.run_lock(out):
        if manifest is None and not overwrite and layout.read_manifest(out) is not None:
            raise InputError(f"{out} was started by another process meanwhile; pass --resume to finish that run")
        if overwrite:
            _clear(out)
        if manifest is None:
            hashes = [r.sha256 for r in records]
            layout.write_json(out / layout.MANIFEST, {
                "config_hash": cfg.hash,
                "config": cfg.raw,
                "model_hash": ctx.model_hash,
                "positions": positions,
                "n_total": n_total,
                "image_ids": [r.id for r in records],
                "image_hashes": hashes,
                "data_hash": _data_hash(hashes),
                "n_images": len(positions),
                "n_shards": len(specs),
                "methods": [m.label for m in cfg.methods],
                "metrics": [m.label for m in cfg.metrics],
                "classes": list(getattr(ctx.dataset, "classes", []) or []),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        layout.remove_stale_temps(out)
        pending, notes = verify_committed(out, specs)
        _execute(cfg, ctx, out, specs, pending, notes, records, executor, progress, resumed=manifest is not None)
    return out


def _execute(cfg: RunConfig, ctx: Context, out: Path, specs: list[ShardSpec], pending: list[ShardSpec],
             notes: list[str], records: list[Any], executor: Executor | None, progress: bool | None,
             resumed: bool) -> None:
    size = records[0].size if records else None
    reporter = None
    if progress is False and notes:
        warnings.warn("; ".join(notes), stacklevel=3)
    if progress is not False and pending:
        weights = step_units(cfg, image_size=size, model=ctx.model)
        reporter = RunProgress(cfg.name or out.name, weights, {s.index: len(s.positions) for s in pending},
                               len(specs), len(specs) - len(pending), terminal=None if progress is None else True)
        for note in notes:
            reporter.message(note)
        if resumed:  # a fresh run printed its plan before the config check
            left = sum(len(s.positions) for s in pending)
            reporter.message(format_plan(plan_costs(cfg, image_size=size, model=ctx.model), left))
    # A partial of execute_shard: executors that run shards elsewhere relay its progress events.
    fn = execute_shard if reporter is None else functools.partial(execute_shard, progress=reporter.step)
    try:
        for _ in (executor or LocalExecutor()).map(fn, pending):
            if reporter is not None:
                reporter.shard_done()
    finally:
        if reporter is not None:
            reporter.close()
