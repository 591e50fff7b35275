"""Streaming explanation metrics for training loops: one torchmetrics `Metric` class per registered metric.

``xaibench.streaming.Deletion(method="gradcam", steps=16)`` is a `torchmetrics.Metric` whose
``update(model=, inputs=, targets=, ...)`` scores a batch with the registered function
(`xaibench.metrics.deletion`, never a second implementation) and accumulates the scores; ``compute()``
is the mean over the images whose score is defined, so it equals
``xaibench.metrics.deletion(...).mean()`` on all the images at once. The classes are generated from
the `METRICS` registry (names in CamelCase: ``PointingGame``, ``RelevanceMassAccuracy``,
``MaxSensitivity``, ...); `streaming_metric(name)` finds one by its registry name.

- ``update`` takes the metric vocabulary as keywords (``model``, ``inputs``, ``attributions``,
  ``targets``, ``masks``, ``explainer``, ``labels``). Maps and explainers that are not passed are made
  from the ``method`` given to the constructor (``xaibench.explainer(method, model, **method_params)``).
  It works inside Lightning's validation loop (no grad, inference mode): gradients are switched on
  and inference tensors copied for the explainer.
- States are sums (``total``, ``count``, ``undefined``) with ``dist_reduce_fx="sum"``: constant memory,
  and torchmetrics' DDP sync gives every process the mean over all processes' images.
- ``bootstrap=B`` adds a percentile bootstrap interval of the mean (``reliability.bootstrap_ci``)
  and ``compute()`` returns ``{"mean", "low", "high"}``. It needs the per-image scores: a
  ``"cat"`` state of 8 bytes per image (gathered from every process at ``compute``), the one state
  that grows with the data. The scores are sorted before resampling, so the interval does not
  depend on how the images were split across processes. Curves are never accumulated.
- Undefined scores (NaN with a reason in the metric's result) are counted in ``undefined`` and
  their reasons kept per process (``nan_reasons``: reason -> number of images). When no image
  has a defined score, ``compute()`` is NaN with a warning that says why (`nan_reason`).
- Arguments are checked where they are given: the constructor's parameters against the metric's
  signature, ``bootstrap`` (0 or >= 2), ``level`` in (0, 1), ``seed`` an int; ``update``'s model an
  ``nn.Module`` and the tensors as the metric function checks them (one error, naming the argument).
- Randomised metrics (``max_sensitivity``, ...) draw with the constructor's ``seed`` on every batch
  (unless the parameters set ``seed``), so a batch's scores do not depend on what came before it:
  not on batch order, resets, ``forward`` versus ``update``, or the number of processes.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xaibench.checks import check_count, check_number
from xaibench.config import suggest
from xaibench.errors import InputError
from xaibench.metrics import METRICS
from xaibench.metrics.base import VOCABULARY

# Keyword arguments of `torchmetrics.Metric.__init__` (distributed sync and placement of the states).
TORCHMETRICS_KWARGS = (
    "compute_on_cpu",
    "dist_sync_on_step",
    "process_group",
    "dist_sync_fn",
    "distributed_available_fn",
    "sync_on_compute",
    "compute_with_cache",
)


class ExplanationMetric(Metric):
    """Base of the generated classes: a registered metric, accumulated over batches (see the module docstring).

    method / method_params: explanation method that makes the maps (and the explainer of robustness
    metrics) when ``update`` is not given them. bootstrap / level / seed: bootstrap resamples of the
    interval (0 = no interval), its level and seed (also the base seed of randomised metrics).
    Other keywords are the metric's parameters (checked against its signature) or torchmetrics'
    ``Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    metric_name: ClassVar[str] = ""
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        method: str | None = None,
        method_params: dict[str, Any] | None = None,
        *,
        bootstrap: int = 0,
        level: float = 0.95,
        seed: int = 0,
        **params: Any,
    ) -> None:
        entry = METRICS.get(self.metric_name)
        own = {k: params.pop(k) for k in list(params) if k in TORCHMETRICS_KWARGS}
        super().__init__(**own)
        allowed = [n for n in inspect.signature(entry.fn).parameters if n not in VOCABULARY]
        for key in params:
            if key not in allowed:
                hint = suggest(key, allowed + list(TORCHMETRICS_KWARGS))
                raise InputError(
                    f"{type(self).__name__}: unknown parameter {key!r}.{hint} "
                    f"Metric {self.metric_name!r} takes: {', '.join(allowed) or 'none'}."
                )
        check_count(bootstrap, "bootstrap", 0)
        if bootstrap == 1:
            raise InputError(f"{type(self).__name__}: bootstrap must be 0 (no interval) or >= 2, got {bootstrap}")
        check_number(level, "level", 0.0, 1.0, open_low=True)
        if level == 1:
            raise InputError(f"{type(self).__name__}: level must be in (0, 1), e.g. 0.95, got {level}")
        check_count(seed, "seed", 0)
        if method_params is not None and not isinstance(method_params, dict):
            raise InputError(f"method_params must be a dict of the method's parameters, got {type(method_params).__name__}")
        if method is not None:
            from xaibench.explainers import METHODS

            METHODS.get(method)  # unknown names fail here, with suggestions
        self.entry = entry
        self.method = method
        self.method_params = dict(method_params or {})
        self.params = params
        self.bootstrap = int(bootstrap)
        self.level = float(level)
        self.seed = int(seed)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("undefined", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        if self.bootstrap:
            self.add_state("scores", [], dist_reduce_fx="cat")
        self.nan_reasons: Counter[str] = Counter()

    def update(
        self,
        model: nn.Module | None = None,
        inputs: Tensor | None = None,
        attributions: Tensor | None = None,
        targets: Tensor | None = None,
        masks: Tensor | None = None,
        explainer: Any = None,
        labels: Tensor | None = None,
    ) -> None:
        """Score one batch with the registered function and add its scores to the states."""
        given = {
            "model": model,
            "inputs": inputs,
            "attributions": attributions,
            "targets": targets,
            "masks": masks,
            "explainer": explainer,
            "labels": labels,
        }
        if model is not None and not isinstance(model, nn.Module):
            raise InputError(f"{type(self).__name__}.update: model must be a torch.nn.Module, got {type(model).__name__}")
        for word in ("inputs", "attributions", "targets", "masks", "labels"):
            if given[word] is not None and not isinstance(given[word], (Tensor, int)):
                raise InputError(f"{type(self).__name__}.update: {word} must be a torch.Tensor, got "
                                 f"{type(given[word]).__name__}")
        requires = self.entry.info.requires
        needs_method = ("attributions" in requires and attributions is None) or (
            "explainer" in requires and explainer is None
        )
        if needs_method and (self.method is None or model is None or inputs is None or targets is None):
            raise InputError(
                f"{type(self).__name__}.update: pass the maps (attributions=) or give the metric a "
                "method (method='gradcam') and pass model, inputs and targets"
            )
        missing = [w for w in requires if given[w] is None and not (needs_method and w in ("attributions", "explainer"))]
        if missing:
            raise InputError(f"{type(self).__name__}.update: metric {self.metric_name!r} needs {', '.join(missing)}")
        if "explainer" in requires or needs_method:
            # Explanations need gradients, also inside a validation loop's inference mode.
            with torch.inference_mode(False), torch.enable_grad():
                given = {k: _usable(v) for k, v in given.items()}
                if needs_method:
                    from xaibench.explainers import explainer as make_explainer

                    made = make_explainer(self.method, model, **self.method_params)
                    if "explainer" in requires and explainer is None:
                        given["explainer"] = made
                    if "attributions" in requires and attributions is None:
                        given["attributions"] = made(given["inputs"], given["targets"]).detach()
                result = self.entry.score(given, self.params, seed=self.seed)
        else:
            result = self.entry.score(given, self.params, seed=self.seed)
        scores = result.scores.detach().to(self.total.device, torch.float64).flatten()
        nan = torch.isnan(scores)
        n_nan = nan.sum()
        self.total.add_(torch.nansum(scores))  # in place: no module attribute assignment per batch
        self.count.add_(scores.numel() - n_nan)
        self.undefined.add_(n_nan)
        if self.bootstrap:
            self.scores.append(scores[~nan])
        self.nan_reasons.update(r or "undefined (no reason given)" for r, n in
                                zip(result.reasons or (None,) * len(nan), nan.tolist()) if n)

    def reset(self) -> None:
        super().reset()
        self.nan_reasons = Counter()

    @property
    def nan_reason(self) -> str | None:
        """Why ``compute()`` is NaN (no defined score: how many images, and their reasons), else None."""
        if self.count > 0:
            return None
        if self.undefined == 0:
            return "no image was scored: call update() first"
        counts = "; ".join(f"{n} x {r}" for r, n in self.nan_reasons.most_common())
        return f"every score is undefined ({int(self.undefined)} images: {counts or 'reasons on other processes'})"

    def compute(self) -> Tensor | dict[str, Tensor]:
        """Mean of the defined scores (NaN if none); with ``bootstrap``, ``{"mean", "low", "high"}``."""
        if self.count > 0:
            mean = self.total / self.count
        else:
            warnings.warn(f"{type(self).__name__}.compute() is NaN: {self.nan_reason}", UserWarning, stacklevel=2)
            mean = torch.full_like(self.total, float("nan"))
        if not self.bootstrap:
            return mean
        low = high = torch.full_like(mean, float("nan"))
        empty = isinstance(self.scores, list) and not self.scores  # a list before sync, a tensor after
        scores = self.total.new_zeros(0) if empty else dim_zero_cat(self.scores)
        if scores.numel() >= 2:
            from xaibench.reliability import MeanStatistic, bootstrap_ci

            values = torch.sort(scores.cpu()).values.numpy()
            ci = bootstrap_ci(
                MeanStatistic(), values, n_boot=self.bootstrap, level=self.level, seed=self.seed, method="percentile"
            )
            low, high = (torch.tensor(v, dtype=torch.float64, device=mean.device) for v in (ci.low, ci.high))
        return {"mean": mean, "low": low, "high": high}


def _usable(value: Any) -> Any:
    """An inference-mode tensor copied into a normal one (autograd refuses inference tensors)."""
    return value.clone() if isinstance(value, Tensor) and value.is_inference() else value


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _make(name: str) -> type[ExplanationMetric]:
    info = METRICS.get(name).info
    cls_name = _class_name(name)
    doc = (
        f"Streaming `xaibench.metrics.{name}` ({info.category}; "
        f"{'higher' if info.higher_is_better else 'lower'} is better): mean over batches. "
        f"Cost per image: {info.cost}. See `ExplanationMetric` for the arguments."
    )
    attrs = {
        "metric_name": name,
        "higher_is_better": info.higher_is_better,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": cls_name,
    }
    return type(cls_name, (ExplanationMetric,), attrs)


CLASSES: dict[str, type[ExplanationMetric]] = {name: _make(name) for name, _ in METRICS.items()}
globals().update({cls.__name__: cls for cls in CLASSES.values()})


def streaming_metric(name: str) -> type[ExplanationMetric]:
    """The streaming class of a registered metric name (unknown names fail with suggestions)."""
    return CLASSES[METRICS.get(name).info.name]


__all__ = ["CLASSES", "ExplanationMetric", "streaming_metric", *(cls.__name__ for cls in CLASSES.values())]
