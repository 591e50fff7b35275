"""Experiment recipes: one shape for every multi-step pipeline of the papers.

A recipe reads as: a validated TOML config -> a plan of named steps, each writing its outputs into
its own folder of the experiment directory (skipped on resume once committed) -> tidy tables with
provenance -> a report section. A reader who knows one recipe knows them all.

Writing a recipe: a module ``xaibench/experiments/<name>.py`` that defines ``RECIPE = Recipe(...)``
(found by `recipes()`, no list to edit)::

    RECIPE = Recipe(
        name="spurious",
        summary="alignment of a normal and a shortcut model with two human explanations",
        schema={"model": ((dict,), REQUIRED), "n": ((int,), 200)},   # keys besides name/seed/device
        plan=plan,          # (ExperimentConfig) -> list[Step]
        report=report,      # (ExperimentDir) -> list[Block]   (tables and figures, not HTML)
        example="experiment-spurious.toml",   # a shipped config in xaibench/configs/
    )

    def plan(cfg):
        return [Step("train", train_models), Step("evaluate", evaluate, needs=("train",))]

    def train_models(ctx: StepContext) -> None:
        ...ctx.folder / "model.pt"...              # the step's own folder
        ctx.write_table("accuracy", frame)         # tidy table with provenance, in the step's folder
        ctx.run_benchmark("normal", run_config)    # a runner run in DIR/runs/normal (resumable)

Directory layout::

    DIR/experiment.json          manifest: recipe, config, config hash, seed, versions, committed steps
    DIR/steps/<step>/            a step's own files (cleared and redone if the step did not commit)
    DIR/steps/<step>/tables/<name>.parquet   tidy tables; `load_table(DIR, name)` reads one
    DIR/runs/<label>/            benchmark runs started by steps (`xaibench run` layout, resumable)
    DIR/report.html              written by `xaibench report DIR` (and at the end of a run)

A step is committed by recording it, with the sha256 of every file it wrote, in the manifest after
it returns. Resume skips committed steps whose files still match, and redoes a step whose files
were changed or removed (and every step after it that needs it). Randomness: ``ctx.seed(*parts)``
derives a seed from the experiment seed and the given coordinates, never from execution order.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xaibench.config import REQUIRED, config_hash, load_toml, paths_relative_to, section
from xaibench.errors import InputError, XaibenchError
from xaibench.modelspec import ModelSpec
from xaibench.runner import layout
from xaibench.seeding import derive_seed

MANIFEST = "experiment.json"
COMMON: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), ""),
    "seed": ((int,), 0),
    "device": ((str,), "cpu"),
}
Schema = Mapping[str, tuple[tuple[type, ...], Any]]

__all__ = [
    "REQUIRED",
    "Block",
    "ExperimentConfig",
    "ExperimentDir",
    "Plot",
    "Recipe",
    "Step",
    "StepContext",
    "Table",
    "Text",
    "load_table",
]


# --- what a recipe's report section is made of (data; the report layer renders it) ---------------


@dataclass(frozen=True)
class Text:
    """A paragraph (plain text, escaped when rendered)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table with a caption; `highlight` maps (row position, column) to "best", "good" or "bad"."""

    frame: pd.DataFrame
    caption: str = ""
    highlight: Mapping[tuple[int, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plot:
    """A figure as data: the report draws `data` (a table; for an image grid, named image batches) with
    the drawer `kind` of `xaibench.report.plots` (``EXPERIMENT_PLOTS``), `options` as keyword arguments."""

    kind: str
    data: Any
    caption: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


Block = Text | Table | Plot


# --- config, steps, recipe ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config: `raw` is the canonical dict the hash is computed from."""

    recipe: str
    raw: dict[str, Any]

    @property
    def hash(self) -> str:
        return config_hash({"recipe": self.recipe, **self.raw})

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])

    @property
    def device(self) -> str:
        return str(self.raw["device"])

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


@dataclass(frozen=True)
class Step:
    """One step of a plan: `run(ctx)` writes into ``ctx.folder``; `needs` names earlier steps."""

    name: str
    run: Callable[[StepContext], None]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """A registered experiment: its config schema, its plan of steps and its report section."""

    name: str
    summary: str
    schema: Schema
    plan: Callable[[ExperimentConfig], list[Step]]
    report: Callable[[ExperimentDir], list[Block]]
    example: str | None = None
    validate: Callable[[ExperimentConfig], None] | None = None  # deeper checks before anything is written

    def parse(self, raw: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
        """Validate `raw` against the common keys and the recipe's schema (nested tables are kept)."""
        schema = {**COMMON, **self.schema}
        cfg = ExperimentConfig(self.name, section("", dict(raw), schema))
        if self.validate is not None:
            self.validate(cfg)
        return cfg

    def load(self, path: str | Path) -> ExperimentConfig:
        """Read and validate an experiment config file (TOML)."""
        return load_toml(path, self.parse, "experiment config")


# --- the experiment directory -------------------------------------------------------------------


def _files(folder: Path, root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder` (temporary files excluded)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(root)): layout.file_record(p)["sha256"]
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


class ExperimentDir:
    """Read access to an experiment directory (what report functions receive)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise InputError(f"{self.root} is not an experiment directory (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path} is corrupt ({err}); rerun the experiment into a new directory") from None

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def folder(self, step: str) -> Path:
        return self.root / "steps" / step

    def run_dir(self, label: str) -> Path:
        return self.root / "runs" / label

    def table(self, name: str) -> pd.DataFrame:
        return load_table(self.root, name)

    def has_table(self, name: str) -> bool:
        return _table_path(self.root, name) is not None

    def committed(self, step: str) -> bool:
        return step in self.manifest.get("steps", {})


def stored_path(root: str | Path, path: str | Path) -> str:
    """How a step writes a path into its tables: relative to the experiment directory `root` when
    inside it (the experiment can be moved), else absolute. `located_path` reads it back."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def located_path(root: str | Path, stored: str | Path) -> Path:
    """The path a `stored_path` value names, with the experiment directory `root` where it is now."""
    return Path(root).resolve() / stored


def _table_path(out: Path, name: str) -> Path | None:
    found = sorted(Path(out).glob(f"steps/*/tables/{name}.parquet"))
    return found[0] if found else None


def load_table(out: str | Path, name: str) -> pd.DataFrame:
    """A tidy table an experiment wrote (one row per observation, provenance columns on every row)."""
    path = _table_path(Path(out), name)
    if path is None:
        known = sorted({p.stem for p in Path(out).glob("steps/*/tables/*.parquet")})
        raise InputError(f"{out}: no table {name!r} (tables: {', '.join(known) or 'none yet'})")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for damaged files
        raise InputError(f"{path} is unreadable ({type(err).__name__}); resume the experiment to redo it") from None


def provenance(cfg: ExperimentConfig) -> dict[str, Any]:
    """The provenance columns of every stored row."""
    import torch

    import xaibench

    return {
        "experiment": cfg.recipe,
        "config_hash": cfg.hash,
        "seed": cfg.seed,
        "xaibench_version": xaibench.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


@dataclass
class StepContext:
    """What a step receives: the config, its own folder and helpers to write tables and run benchmarks."""

    cfg: ExperimentConfig
    root: Path
    step: str

    @property
    def folder(self) -> Path:
        path = self.root / "steps" / self.step
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def experiment(self) -> ExperimentDir:
        return ExperimentDir(self.root)

    def seed(self, *parts: object) -> int:
        """A seed in [0, 2**32) (torch's, NumPy's and Lightning's range) derived from the experiment
        seed and `parts` (e.g. setting, model index)."""
        return derive_seed(self.cfg.seed, self.cfg.recipe, *parts) % 2**32

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a tidy table (provenance columns added) to the step's ``tables/<name>.parquet``."""
        other = _table_path(self.root, name)
        if other is not None and other.parent.parent.name != self.step:
            raise ValueError(f"table {name!r} is already written by step {other.parent.parent.name!r}")
        frame = frame.copy()
        for key, value in provenance(self.cfg).items():
            frame[key] = value
        frame["step"] = self.step
        path = self.folder / "tables" / f"{name}.parquet"
        layout.write_parquet(path, frame)
        return path

    def run_benchmark(self, label: str, config: Mapping[str, Any]) -> Path:
        """Run (or finish) a runner benchmark of `config` (a runner config dict) into DIR/runs/<label>."""
        from xaibench.runner import parse_config, run

        out = self.root / "runs" / label
        raw = {"seed": self.seed(label), "device": self.cfg.device, **config}
        return run(parse_config(raw), out, resume=(out / layout.MANIFEST).exists())

    def log(self, message: str) -> None:
        print(f"[{self.cfg.recipe}:{self.step}] {message}", file=sys.stderr, flush=True)


def _check_plan(steps: Sequence[Step], recipe: str) -> None:
    seen: set[str] = set()
    for step in steps:
        if step.name in seen:
            raise ValueError(f"recipe {recipe!r}: step {step.name!r} appears twice")
        missing = [n for n in step.needs if n not in seen]
        if missing:
            raise ValueError(f"recipe {recipe!r}: step {step.name!r} needs {missing} before it")
        seen.add(step.name)


def run_recipe(recipe: Recipe, cfg: ExperimentConfig, out: str | Path, *, resume: bool = False,
               overwrite: bool = False) -> Path:
    """Run (or, with `resume`, finish) the plan of `recipe` for `cfg` into `out`; returns `out`.

    A directory holding another experiment is refused unless `overwrite` (which deletes it first);
    resuming requires the same recipe and config hash. Steps already committed whose files are
    unchanged are skipped; an uncommitted step's folder is cleared before it runs again. The
    directory's lock (`xaibench.runner.layout.run_lock`) is held throughout: one writer at a time.
    Paths inside `out` enter the hashes of its trainings and benchmarks relative to it, and steps
    store them relative (`stored_path`), so a moved experiment resumes at its new place.
    """
    out = Path(out)
    steps = recipe.plan(cfg)
    _check_plan(steps, recipe.name)
    dry_run(cfg)
    with layout.run_lock(out), paths_relative_to(out):  # trainings and benchmarks inside resume after a move
        return _run_locked(steps, cfg, out, resume=resume, overwrite=overwrite)


DATA_TABLES = ("data", "benchmark", "source", "target")  # tables whose ``spec`` names a data set


def dry_run(cfg: ExperimentConfig) -> None:
    """What can be checked before anything is written, beyond the recipe's validation: the device
    exists on this machine, every data set (``spec`` of a table named in `DATA_TABLES`) and every
    ``file:`` model named exists. Errors name the config table."""
    from xaibench.data import check_spec
    from xaibench.devices import resolve_device

    resolve_device(cfg.device)
    tables: list[tuple[str, Mapping[str, Any]]] = [("", cfg.raw)]
    while tables:
        where, table = tables.pop()
        for key, value in table.items():
            if isinstance(value, Mapping):
                tables.append((f"{where}.{key}".lstrip("."), value))
        spec = table.get("spec")
        if not isinstance(spec, str):
            continue
        try:
            if where.rsplit(".", 1)[-1] in DATA_TABLES:
                check_spec(spec)
            elif (model := ModelSpec.parse(spec)).kind == "file" and not model.path.is_file():
                raise InputError(f"model file {model.name} does not exist")
        except XaibenchError as err:
            raise type(err)(f"config [{where}]: {err}") from None


def _contents(out: Path) -> list[Path]:
    """What `out` holds besides its lock files."""
    return [c for c in out.iterdir() if c.name != layout.LOCK and not c.name.startswith(f".{layout.LOCK}")]


def _run_locked(steps: Sequence[Step], cfg: ExperimentConfig, out: Path, *, resume: bool, overwrite: bool) -> Path:
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not overwrite:
            raise InputError(f"{path} is corrupt ({err}); start again with --overwrite") from None
        manifest = {}
    if manifest is not None and overwrite:
        for child in _contents(out):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        manifest = None
    if manifest is None and _contents(out):
        raise InputError(f"{out} is not empty and holds no experiment; choose an empty or new directory")
    if manifest is not None and not resume:
        raise InputError(
            f"{out} already holds an experiment ({manifest['recipe']}, config {manifest['config_hash'][:12]}); "
            "pass --resume to finish it, --overwrite to start again, or choose another directory"
        )
    if manifest is not None and (manifest["recipe"], manifest["config_hash"]) != (cfg.recipe, cfg.hash):
        raise InputError(
            f"refusing to resume {out}: it holds {manifest['recipe']} with config {manifest['config_hash'][:12]}, "
            f"this is {cfg.recipe} with config {cfg.hash[:12]}; use a new directory for a changed config"
        )
    if manifest is None:
        manifest = {
            "recipe": cfg.recipe,
            "config": cfg.raw,
            "config_hash": cfg.hash,
            **{k: v for k, v in provenance(cfg).items() if k not in ("experiment", "config_hash")},
            "plan": [s.name for s in steps],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": {},
        }
        out.mkdir(parents=True, exist_ok=True)
        layout.write_json(path, manifest)
    redone: set[str] = set()
    for k, step in enumerate(steps, 1):
        record = manifest["steps"].get(step.name)
        folder = out / "steps" / step.name
        intact = record is not None and _files(folder, out) == record["files"]
        if intact and not redone.intersection(step.needs):
            print(f"[{cfg.recipe}] step {k}/{len(steps)} {step.name}: done, skipped", file=sys.stderr, flush=True)
            continue
        redone.add(step.name)
        if folder.exists():
            shutil.rmtree(folder)
        print(f"[{cfg.recipe}] step {k}/{len(steps)} {step.name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        step.run(StepContext(cfg, out, step.name))
        seconds = time.perf_counter() - start
        manifest["steps"][step.name] = {"files": _files(folder, out), "seconds": round(seconds, 3)}
        layout.write_json(path, manifest)
        print(f"[{cfg.recipe}] step {k}/{len(steps)} {step.name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    layout.write_json(path, manifest)
    return out
