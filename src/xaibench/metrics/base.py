"""The common shape of every metric: `MetricResult` out, `MetricInfo` metadata, one registry.

A metric is a plain function whose keyword arguments come from a fixed vocabulary, so the runner
can call any metric by name:

- ``model``: ``nn.Module`` returning logits [B, classes] (eval mode, on its device)
- ``inputs``: images [B, C, H, W] on the model's device
- ``attributions``: maps [B, h, w] (any resolution; metrics state how they resample)
- ``targets``: class indices [B] (the class the maps explain)
- ``masks``: human masks [B, H, W] bool
- ``explainer``: callable ``(inputs, targets) -> maps [B, H, W]`` bound to ``model``
- ``labels``: true classes [B]

Everything else is a parameter with a default. ``MetricInfo.requires`` lists the vocabulary
words a metric takes; `Metric.score` calls a registered metric by name with them (and with
``seed`` and ``max_batch`` where it takes them).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from xaibench.errors import InputError
from xaibench.passes import Passes
from xaibench.registry import Registry

VOCABULARY = ("model", "inputs", "attributions", "targets", "masks", "explainer", "labels")
CATEGORIES = ("faithfulness", "localisation", "robustness", "randomisation", "complexity")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata a metric declares about itself."""

    name: str
    category: str
    higher_is_better: bool
    range: tuple[float, float]
    requires: tuple[str, ...]
    cost: Passes  # passes per image as expressions of the parameters, e.g. Passes(forwards="steps + 1")
    references: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; use one of {CATEGORIES}")
        if not isinstance(self.cost, Passes):
            raise TypeError(f"{self.name}: cost must be a Passes, e.g. Passes(forwards='steps + 1'), got {self.cost!r}")
        unknown = set(self.requires) - set(VOCABULARY)
        if unknown:
            raise ValueError(f"{self.name}: requires {sorted(unknown)} outside the vocabulary {VOCABULARY}")


@dataclass(frozen=True)
class MetricResult:
    """What every metric returns.

    scores:  Tensor [B] float; NaN where the score is undefined, with the reason in `reasons`.
    curves:  Tensor [B, K+1] where the metric has a curve (scores after 0..K perturbation steps).
    reasons: per-image reason for each NaN score (``None`` where the score is defined).
    extras:  further per-image tensors (e.g. ``final_drop``, per-layer similarities).
    info:    the metric's metadata; `params` the parameters actually used.
    """

    scores: Tensor
    info: MetricInfo
    params: dict[str, Any] = field(default_factory=dict)
    curves: Tensor | None = None
    reasons: tuple[str | None, ...] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    def mean(self) -> float:
        """Mean over the images whose score is defined (NaN if none is)."""
        return float(torch.nanmean(self.scores.double())) if self.scores.numel() else float("nan")

    def __repr__(self) -> str:
        n_nan = int(torch.isnan(self.scores).sum())
        return f"MetricResult({self.name}: mean={self.mean():.4g} over {self.scores.numel()} images, {n_nan} NaN)"


def metric_params(local_vars: dict[str, Any]) -> dict[str, Any]:
    """A metric's own parameters: its arguments (``locals()`` on entry) minus the shared vocabulary."""
    return {k: v for k, v in local_vars.items() if k not in VOCABULARY}


def nan_reasons(undefined: Tensor, reason: str) -> tuple[str | None, ...] | None:
    """Per-image reasons for a bool mask of undefined scores; ``None`` when all are defined."""
    flags = undefined.flatten().tolist()
    return tuple(reason if f else None for f in flags) if any(flags) else None


@dataclass(frozen=True)
class Metric:
    """A registered metric: the function and its metadata."""

    fn: Callable[..., MetricResult]
    info: MetricInfo

    def __call__(self, **kwargs: Any) -> MetricResult:
        return self.fn(**kwargs)

    def takes(self, name: str) -> bool:
        """Whether the function has a parameter `name`."""
        return name in _parameters(self.fn)

    def score(self, words: Mapping[str, Any], params: Mapping[str, Any] | None = None, *,
              seed: int | None = None, max_batch: int | None = None) -> MetricResult:
        """The metric called by name: the vocabulary words it requires, taken from `words` (others
        are ignored), `seed` and `max_batch` where the function takes them and `params` does not set
        them, then its own `params`. The one way the runner, the streaming classes and the
        metric-human agreement call a registered metric."""
        params = dict(params or {})
        missing = [w for w in self.info.requires if words.get(w) is None]
        if missing:
            raise InputError(f"metric {self.info.name!r} needs {', '.join(missing)}")
        kwargs = {w: words[w] for w in self.info.requires}
        for key, value in (("seed", seed), ("max_batch", max_batch)):
            if value is not None and key not in params and self.takes(key):
                kwargs[key] = value
        return self.fn(**kwargs, **params)


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


METRICS: Registry[Metric] = Registry("metric")


def info_of(fn: Callable[..., MetricResult]) -> MetricInfo:
    """The `MetricInfo` that `register_metric` attached to a metric function."""
    info = getattr(fn, "info", None)
    if not isinstance(info, MetricInfo):
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is not a registered metric function")
    return info


def register_metric(info: MetricInfo) -> Callable[[Callable[..., MetricResult]], Callable[..., MetricResult]]:
    """Register a metric function under ``info.name``; the function is returned unchanged."""

    def wrap(fn: Callable[..., MetricResult]) -> Callable[..., MetricResult]:
        METRICS.add(info.name, Metric(fn, info))
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return wrap
