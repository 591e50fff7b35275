"""Where a run keeps its files, and atomic writes (write a temporary file, then `os.replace`).

::

    DIR/run.json                          manifest: config, config hash, image positions, shard count
    DIR/shards/shard-00000.parquet        results of shard 0: its commit marker, written last
    DIR/curves/shard-00000.parquet        per-image curves of curve metrics (deletion, insertion, ...)
    DIR/images/shard-00000.pt             the shard's images (uint8) for galleries
    DIR/maps/<method>/shard-00000.pt      cached attribution maps, reused on resume
    DIR/report.html                       written by `xaibench report`
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

MANIFEST = "run.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def results_path(out: Path, index: int) -> Path:
    return out / "shards" / f"{shard_name(index)}.parquet"


def curves_path(out: Path, index: int) -> Path:
    return out / "curves" / f"{shard_name(index)}.parquet"


def images_path(out: Path, index: int) -> Path:
    return out / "images" / f"{shard_name(index)}.pt"


def maps_path(out: Path, method: str, index: int) -> Path:
    return out / "maps" / method / f"{shard_name(index)}.pt"


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp)` into a temporary file next to `path`, then rename it into place.

    A reader (or a resumed run) sees either no file or the complete file, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True)))


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    _atomic(path, lambda p: df.to_parquet(p, index=False, engine="pyarrow"))


def write_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda p: torch.save(obj, p))


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
