"""Reading a run directory back: `load_results(DIR)` gives the tidy results table in one line.

One row per (image, method, metric) with columns

- ``image_id``, ``image_index`` (position in the dataset split), ``shard``
- ``method`` (label in the config), ``method_name`` (registry name)
- ``metric`` (label / alias in the config), ``metric_name`` (registry name), ``category``, ``mask``
- ``score`` (float; NaN where undefined) and ``nan_reason`` (why, else None)
- ``target`` (class explained), ``label``, ``prediction``, ``correct``, ``higher_is_better``
- ``label_name``, ``target_name``, ``prediction_name``: the class names of the data set
  (``ImageDataset.classes``); None where the index has no name, and for target / prediction when
  the model does not score exactly the data set's classes (e.g. an ImageNet model on a folder set)
- ``params``: the metric's parameters as run (JSON of ``MetricResult.params``, defaults included)
- ``seconds``: wall time of the metric's call on the shard (explanations a metric makes included,
  the method's maps not) divided by the shard's images: a per-image share, the same on every row
  of one (shard, method, metric); it is the only column that differs between identical runs
- ``same_as``: the label of another method of the run whose maps this method's equal on this model
  (guided backprop or deconvolution and saliency on a model without ``nn.ReLU``), else None
- provenance on every row: ``config_hash``, ``seed``, ``model_spec``, ``model_hash``,
  ``dataset_spec``, ``dataset_split``, ``xaibench_version``, ``torch_version``,
  ``captum_version``, ``python_version``

Only committed shards are read (those whose results file exists). Each file read is checked
against its shard's commit record, and a file that does not match or cannot be read is an
`InputError` naming it (``xaibench run CONFIG --out DIR --resume`` verifies every hash, recomputes
corrupt caches and names corrupt results). ``verify=True`` compares the recorded sha256 (a flipped
bit in a file of the right size is caught), ``verify=False`` the size only: the results and
curves tables (small) are verified by default, the cached maps and images (large) are not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch

from xaibench.errors import InputError
from xaibench.runner import layout

T = TypeVar("T")


def _shard_files(out: Path, folder: str, suffix: str) -> list[Path]:
    """Files of committed shards only (those whose results file exists), in shard order."""
    files = sorted((out / folder).glob(f"shard-[0-9][0-9][0-9][0-9][0-9]{suffix}"))
    return [f for f in files if (out / "shards" / f"{f.name[: -len(suffix)]}.parquet").exists()]


def _read(out: Path, path: Path, reader: Callable[[Path], T], verify: bool) -> T:
    """`reader(path)`, or an `InputError` naming the file when it differs from its commit record
    (size; with `verify` also sha256) or cannot be read."""
    why = None
    try:
        commit = layout.read_commit(out, int(path.stem.split("-")[-1]))
    except InputError as err:
        raise InputError(f"{err} (needed to read {path})") from None
    record = None if commit is None else commit["files"].get(path.relative_to(out).as_posix())
    if record is not None:
        why = layout.check_file(path, record, full=verify)
    if why is None:
        try:
            return reader(path)
        except Exception as err:  # pyarrow, torch and pickle raise many types for a damaged file
            why = f"{type(err).__name__}: {err}"
    raise InputError(f"{path} is corrupt ({why}); `xaibench run CONFIG --out {out} --resume` verifies the run, "
                     "recomputes damaged caches and names damaged results")


def load_manifest(out: str | Path) -> dict[str, Any]:
    """The run's manifest (config, config hash, image positions and ids, shard count)."""
    manifest = layout.read_manifest(Path(out))
    if manifest is None:
        raise InputError(f"{out} is not a run directory (no {layout.MANIFEST}); create one with `xaibench run`")
    return manifest


def load_results(out: str | Path, *, verify: bool = True) -> pd.DataFrame:
    """All committed rows of the run in `out`, in shard order. Warns if the run is unfinished.
    `verify`: compare each file's sha256 with its commit record (else its size only)."""
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
    return pd.concat([_read(out, f, pd.read_parquet, verify) for f in files], ignore_index=True)


def committed_shards(out: str | Path) -> int:
    """How many shards of the run in `out` are committed."""
    return len(_shard_files(Path(out), "shards", ".parquet"))


def load_curves(out: str | Path, *, verify: bool = True) -> pd.DataFrame:
    """Per-image curves (columns image_id, method, metric, curve: list of floats, step 0 first);
    `verify` as `load_results`."""
    out = Path(out)
    files = _shard_files(out, "curves", ".parquet")
    if not files:
        return pd.DataFrame({"image_id": [], "method": [], "metric": [], "curve": []})
    return pd.concat([_read(out, f, pd.read_parquet, verify) for f in files], ignore_index=True)


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_images(out: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """The run's images as stored for galleries: ids, positions, images uint8 [N, C, H, W], labels, targets;
    `verify` as `load_results`."""
    out = Path(out)
    files = _shard_files(out, "images", ".pt")
    parts = [_read(out, f, _torch_load, verify) for f in files]
    if not parts:
        return {"ids": [], "positions": [], "images": torch.empty(0, dtype=torch.uint8), "labels": torch.empty(0)}
    return {
        "ids": [i for p in parts for i in p["ids"]],
        "positions": [i for p in parts for i in p["positions"]],
        "images": torch.cat([p["images"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "targets": torch.cat([p["targets"] for p in parts]),
    }


def load_maps(out: str | Path, method: str, *, verify: bool = False) -> torch.Tensor:
    """Cached maps of one method (label in the config) for all finished shards, float32 [N, H, W];
    `verify` as `load_results`."""
    out = Path(out)
    files = _shard_files(out, f"maps/{method}", ".pt")
    if not files:
        raise InputError(f"{out}: no cached maps for method {method!r}")
    return torch.cat([_read(out, f, _torch_load, verify)["maps"] for f in files])
