"""Training for reliable benchmarks (Gomez & Mouchère): losses, calibration, FP / AP batches, the trainer.

Public API: `train` (a config -> a model file, its log and config beside it), `TrainResult`,
`TrainConfig`, `parse_train_config`, `load_train_config`; the functional pieces live in
`xaibench.training.losses`, `.calibration`, `.perturbations` and `.selection`. The engine
(PyTorch Lightning) is imported on first use of `train`, so the config and the pieces stay light.
See docs/training.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from xaibench.training.config import SETTINGS, TrainConfig, load_train_config, parse_train_config

_ENGINE = ("train", "TrainResult")


def __getattr__(name: str) -> Any:
    if name in _ENGINE:
        return getattr(importlib.import_module("xaibench.training.engine"), name)
    raise AttributeError(f"module 'xaibench.training' has no attribute {name!r}")


__all__ = ["SETTINGS", "TrainConfig", "TrainResult", "load_train_config", "parse_train_config", "train"]
