"""Reading a run directory back: `load_results(DIR)` gives the tidy results table in one line.

One row per (image, method, metric) with columns

- ``image_id``, ``image_index`` (position in the dataset split), ``shard``
- ``method`` (label in the config), ``method_name`` (registry name)
- ``metric`` (label / alias in the config), ``metric_name`` (registry name), ``category``, ``mask``
- ``score`` (float; NaN where undefined) and ``nan_reason`` (why, else None)
- ``target`` (class explained), ``label``, ``prediction``, ``correct``, ``higher_is_better``
- provenance on every row: ``config_hash``, ``seed``, ``model_spec``, ``model_hash``,
  ``dataset_spec``, ``dataset_split``, ``xaibench_version``, ``torch_version``,
  ``captum_version``, ``python_version``
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xaibench.errors import InputError
from xaibench.runner.layout import MANIFEST

def _shard_files(out: Path, folder: str, suffix: str) -> list[Path]:
    """Files of committed shards only (those whose results file exists), in shard order."""
    files = sorted((out / folder).glob(f"shard-[0-9][0-9][0-9][0-9][0-9]{suffix}"))
    return [f for f in files if (out / "shards" / f"{f.name[: -len(suffix)]}.parquet").exists()]


def load_manifest(out: str | Path) -> dict[str, Any]:
    """The run's manifest (config, config hash, image positions, shard count)."""
    path = Path(out) / MANIFEST
    if not path.exists():
        raise InputError(f"{out} is not a run directory (no {MANIFEST}); create one with `xaibench run`")
    return json.loads(path.read_text())


def load_results(out: str | Path) -> pd.DataFrame:
    """All committed rows of the run in `out`, in shard order. Warns if the run is unfinished."""
    out = Path(out)
    manifest = load_manifest(out)
    files = _shard_files(out, "shards", ".parquet")
    if len(files) < manifest["n_shards"]:
        warnings.warn(
            f"{out}: only {len(files)} of {manifest['n_shards']} shards are finished; "
            "finish the run with `xaibench run CONFIG --out DIR --resume`",
            stacklevel=2,
        )
    if not files:
        raise InputError(f"{out}: no finished shard yet")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def load_curves(out: str | Path) -> pd.DataFrame:
    """Per-image curves (columns image_id, method, metric, curve: list of floats, step 0 first)."""
    files = _shard_files(Path(out), "curves", ".parquet")
    if not files:
        return pd.DataFrame({"image_id": [], "method": [], "metric": [], "curve": []})
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def load_images(out: str | Path) -> dict[str, Any]:
    """The run's images as stored for galleries: ids, positions, images uint8 [N, C, H, W], labels, targets."""
    files = _shard_files(Path(out), "images", ".pt")
    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    if not parts:
        return {"ids": [], "positions": [], "images": torch.empty(0, dtype=torch.uint8), "labels": torch.empty(0)}
    return {
        "ids": [i for p in parts for i in p["ids"]],
        "positions": [i for p in parts for i in p["positions"]],
        "images": torch.cat([p["images"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "targets": torch.cat([p["targets"] for p in parts]),
    }


def load_maps(out: str | Path, method: str) -> torch.Tensor:
    """Cached maps of one method (label in the config) for all finished shards, float32 [N, H, W]."""
    out = Path(out)
    files = _shard_files(out, f"maps/{method}", ".pt")
    if not files:
        raise InputError(f"{out}: no cached maps for method {method!r}")
    return torch.cat([torch.load(f, map_location="cpu", weights_only=True)["maps"] for f in files])
