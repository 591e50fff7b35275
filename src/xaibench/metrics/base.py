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

Two policies apply to every registered metric, in `register_metric` (so also to direct calls):

- a ``model`` in training mode is evaluated in eval mode and put back as it was, with a warning
  (`xaibench.checks.evaluation_mode`): scores equal the eval-mode scores, batch-norm statistics
  are left alone;
- a metric that ranks the map's features (``MetricInfo.ranks_map``: deletion, insertion, IROF,
  ROAD, AOPC, ...) is undefined for a constant map, which ranks no feature above another: its
  score, curve and per-image extras are NaN with the reason `CONSTANT_MAP` (as sparseness and
  the pointing game), not a number set by how ties are broken. ``order="random"`` uses no
  ranking and is exempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.checks import evaluation_mode
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
    ranks_map: bool = False  # scores rank the map's features: a constant map gives NaN (`CONSTANT_MAP`)

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
    """Register a metric function under ``info.name``; returned wrapped in the two policies of the
    module doc (training mode, constant maps), with its signature and ``info``."""

    def wrap(fn: Callable[..., MetricResult]) -> Callable[..., MetricResult]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> MetricResult:
            bound = signature.bind_partial(*args, **kwargs).arguments
            model = bound.get("model")
            with evaluation_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
                result = fn(*args, **kwargs)
            if info.ranks_map and bound.get("order", "morf") != "random":
                result = undefined_where(result, constant_maps(bound["attributions"]), CONSTANT_MAP)
            return result

        METRICS.add(info.name, Metric(run, info))
        run.info = info  # type: ignore[attr-defined]
        return run

    return wrap


CONSTANT_MAP = "constant map: it ranks no feature above another"


def constant_maps(attributions: Tensor) -> Tensor:
    """Bool [B]: maps [B, ...] whose values are all equal."""
    flat = attributions.detach().flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def undefined_where(result: MetricResult, undefined: Tensor, reason: str) -> MetricResult:
    """`result` with the scores, curves and per-image floating extras of the `undefined` images [B]
    set to NaN, and `reason` as their NaN reason (replacing any other)."""
    if not undefined.any():
        return result
    b = result.scores.shape[0]

    def blank(t: Tensor) -> Tensor:
        if not t.is_floating_point() or t.ndim == 0 or t.shape[0] != b:
            return t
        mask = undefined.to(t.device).view(-1, *[1] * (t.ndim - 1))
        return torch.where(mask, torch.full_like(t, float("nan")), t)

    old = result.reasons or (None,) * b
    reasons = tuple(reason if u else r for u, r in zip(undefined.tolist(), old))
    return dataclasses.replace(
        result, scores=blank(result.scores), curves=None if result.curves is None else blank(result.curves),
        reasons=reasons, extras={k: blank(v) for k, v in result.extras.items()},
    )
