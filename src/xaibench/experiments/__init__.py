"""Experiment recipes of the papers, run by ``xaibench experiment NAME CONFIG --out DIR``.

Every module of this package that defines ``RECIPE`` is a recipe (see `xaibench.experiments.base`
for the shape they share); `EXPERIMENTS` is the registry the CLI and the Python API look names up in.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xaibench.experiments.base import (
    REQUIRED,
    Block,
    ExperimentConfig,
    ExperimentDir,
    Plot,
    Recipe,
    Step,
    StepContext,
    Table,
    Text,
    load_table,
    run_recipe,
)
from xaibench.registry import Registry

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
    "recipes",
    "run_experiment",
]


@functools.cache
def recipes() -> Registry[Recipe]:
    """The registry of recipes: every module of this package that defines ``RECIPE``."""
    registry: Registry[Recipe] = Registry("experiment")
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        recipe = getattr(module, "RECIPE", None)
        if isinstance(recipe, Recipe):
            registry.add(recipe.name, recipe)
    return registry


def run_experiment(name: str, config: str | Path | Mapping[str, Any], out: str | Path, *,
                   resume: bool = False, overwrite: bool = False) -> Path:
    """Validate `config` (a TOML path or a dict) for recipe `name`, then run it into `out`."""
    recipe = recipes().get(name)
    cfg = recipe.parse(config) if isinstance(config, Mapping) else recipe.load(config)
    return run_recipe(recipe, cfg, out, resume=resume, overwrite=overwrite)
