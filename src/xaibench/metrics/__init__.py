"""Metrics: functional, batched, tensors in and `MetricResult` out. See `xaibench.metrics.base`."""

from __future__ import annotations

import importlib
import pkgutil

from xaibench.metrics.base import METRICS, MetricInfo, MetricResult, register_metric

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

globals().update({name: entry.fn for name, entry in METRICS.items()})

__all__ = ["METRICS", "MetricInfo", "MetricResult", "register_metric", *(name for name, _ in METRICS.items())]
