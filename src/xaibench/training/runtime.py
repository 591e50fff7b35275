"""What the trainer and the fine-tuner share around Lightning: the accelerator of a config's device,
the process's rank, isolation of the caller's global state, progress for a terminal or a log, the
output folder's resume check, the checkpoint to resume from and the architecture spec a model file
stores."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar

from xaibench.errors import InputError
from xaibench.modelspec import ModelSpec


def arch_spec(spec: str) -> str:
    """The architecture spec stored in the model file (a ``file:`` model's own)."""
    parsed = ModelSpec.parse(spec)
    if parsed.kind != "file":
        return spec
    obj = torch.load(parsed.path, map_location="cpu", weights_only=True)
    return str(obj["spec"])


def lightning_accelerator(device: str) -> tuple[str, Any]:
    """Lightning (accelerator, device indices or None) of a config's device string; a device this
    machine lacks is an `InputError` listing the available ones."""
    from xaibench.devices import resolve_device

    resolve_device(device.replace("gpu", "cuda"))
    if device == "auto":
        return "auto", None
    if device == "cpu":
        return "cpu", None
    index = device.partition(":")[2]  # "cuda", "gpu", "cuda:<index>" (validated by the config)
    return "gpu", [int(index)] if index else None


def rank() -> int:
    """This process's rank under a DDP launcher (0 outside one)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def isolated(quiet: bool) -> Iterator[None]:
    """Leave the caller's global RNG states, deterministic-algorithm flags and logging as they were."""
    py_state, np_state = random.getstate(), np.random.get_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|isinstance\(treespec, LeafSpec\)|exists and is not empty).*")
        if quiet:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            random.setstate(py_state)
            np.random.set_state(np_state)


class LineProgress(ProgressBar):
    """Progress for a log file rather than a terminal: one line per validation (or per epoch when
    nothing is validated) with the logged metrics, and no carriage returns."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, trainer: pl.Trainer) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        values = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1)
        print(f"epoch {trainer.current_epoch + 1}{epochs}, step {trainer.global_step}{steps}: {values}",
              file=sys.stderr, flush=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._line(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not sum(trainer.num_val_batches):
            self._line(trainer)


def progress_callbacks(progress: bool) -> list[Callback]:
    """With `progress`, Lightning's bar on a terminal and `LineProgress` when stderr is a file or pipe."""
    return [LineProgress()] if progress and not sys.stderr.isatty() else []


def check_out(cfg: Any, existing: Path, resume: bool, load: Callable[[Path], Any], what: str = "training") -> None:
    """Refuse to write into the folder of `existing` (a run's config file, read back with `load`)
    unless resuming, and refuse to resume a run of another config."""
    out = existing.parent
    if not existing.is_file():
        return
    if not resume:
        raise InputError(f"{out} already holds a {what} run; pass --resume (resume=True) to finish it, or "
                         "choose another output directory")
    before = load(existing)
    if before.hash != cfg.hash:
        raise InputError(f"refusing to resume {out}: it was started with config {before.hash[:12]}, this config "
                         f"hashes to {cfg.hash[:12]}; use a new output directory for a changed config")


def resume_checkpoint(last: Path, fallbacks: tuple[Path, ...] = ()) -> Path | None:
    """The checkpoint to resume from: `last` when it loads; when it is damaged (a truncated write,
    a full disk), the first of `fallbacks` that loads, with a warning naming both; None without
    `last`. A damaged `last` and no usable fallback is an `InputError` naming the file and what to do."""
    if not last.is_file():
        return None
    why = _unloadable(last)
    if why is None:
        return last
    for other in fallbacks:
        if other.is_file() and _unloadable(other) is None:
            warnings.warn(f"{last} is damaged ({why}); resuming from the earlier checkpoint {other} instead: the "
                          "steps after it are run again", UserWarning, stacklevel=2)
            return other
    raise InputError(f"checkpoint {last} is damaged ({why}) and there is no earlier full checkpoint to resume from: "
                     f"delete it to run again from the start with --resume (the directory and config are kept), or "
                     "restore it from a copy")


def _unloadable(path: Path) -> str | None:
    """Why Lightning could not resume from checkpoint `path`, or None when it loads."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # zip, pickle and torch raise many types for a damaged file
        return f"{type(err).__name__}: {str(err)[:120]}"
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        return "not a Lightning checkpoint"
    return None
