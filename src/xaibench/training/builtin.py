"""The built-in models' training recipes, trained by `xaibench.training.train` and cached.

``load_model("builtin:<name>")`` (in `xaibench.models`, a layer below this one) calls
`trained_model_file` through its provider hook (``models.BUILTIN_PROVIDER``): the file is
``<cache>/models/<name>-<hash>.pt`` (a `save_model` file; the hash is the recipe's config hash),
trained on first use by one process under a file lock, with the training log beside it
(``<name>-<hash>.csv``). Any change of a recipe changes the hash and retrains.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from xaibench.models import cache_dir
from xaibench.training.config import parse_train_config

_DIGITS: dict[str, Any] = {
    "seed": 0, "device": "cpu", "setting": "baseline", "batch_size": 32, "optimizer": "adam", "lr": 0.01,
    "schedule": "onecycle", "warmup": 0.25, "selection": "last", "model": {"spec": "builtin:digits-cnn"},
}
# name -> training config: Adam with a one-cycle schedule (peak 0.01, warm-up 25%), cross-entropy,
# 10% of the training split held out for the validation columns of the log, the last epoch kept.
RECIPES: dict[str, dict[str, Any]] = {
    "digits-cnn": {**_DIGITS, "epochs": 6, "data": {"spec": "builtin:digits", "val_fraction": 0.1}},
    "digits-spurious-cnn": {**_DIGITS, "epochs": 2, "data": {"spec": "builtin:digits-spurious", "val_fraction": 0.1}},
}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive `fcntl.flock` on `path` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def trained_model_file(name: str) -> Path:
    """The cached model file of built-in model `name`, trained now if missing (once across processes)."""
    cfg = parse_train_config(RECIPES[name])
    folder = cache_dir() / "models"
    path = folder / f"{name}-{cfg.hash[:16]}.pt"
    if path.is_file():
        return path
    with _file_lock(folder / f"{name}.lock"):
        if path.is_file():  # another process trained it while we waited
            return path
        print(f"training builtin:{name} (cached afterwards in {path}) ...", file=sys.stderr, flush=True)
        from xaibench.training.engine import train

        start = time.perf_counter()
        work = folder / f".training-{name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny convolutions: one thread is faster than several (and than contention)
        try:
            result = train(cfg, work, progress=False)
            shutil.copyfile(work / "log.csv", path.with_suffix(".csv"))
            os.replace(result.model_path, path)
        finally:
            torch.set_num_threads(threads)
            shutil.rmtree(work, ignore_errors=True)
        print(f"trained builtin:{name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return path
