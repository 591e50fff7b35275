"""Planned cost of a run: the declared passes of methods and metrics, evaluated per image.

Methods (`MethodInfo.cost`) and metrics (`MetricInfo.cost`) declare their passes per image as
`xaibench.passes.Passes`: one expression of their parameters per kind of pass, e.g.
``Passes(forwards="steps + 1")`` or ``Passes(forwards="n_samples + 1", explanations="n_samples + 1")``.
`evaluate_cost` turns them into a `Cost` (forwards, backwards and explanations per image) with
the parameters' values; `method_cost` and `metric_cost` look the passes up and fill in the
parameters (the function's defaults updated by the given ones) and the sizes a count may name:

- ``H``, ``W``: the image size; ``F`` and ``features``: H * W (pixel features);
- ``S``: ``n_segments`` (superpixels); ``L``: the number of layers a randomisation randomises
  (`randomised_layers`, needs the model); ``K``: the channels of a CAM layer (unknown here).

A count that names something unknown is left out and listed in `Cost.unknown`, so an
estimate is never silently complete. `pair_cost` expands a metric's explanations into the
method's passes; `Cost.units` weighs a backward pass as two forwards (its usual FLOP ratio), the
unit of `plan_costs` and of the progress bar's time estimate.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from xaibench.passes import KINDS, Passes

BACKWARD_UNITS = 2.0  # a backward pass costs about two forwards
NO_PASS_UNITS = 0.01  # a metric without model passes still takes some time


@dataclass(frozen=True)
class Cost:
    """Passes per image: forwards, backwards and explanations (each an explanation by the method)."""

    forwards: float = 0.0
    backwards: float = 0.0
    explanations: float = 0.0
    unknown: tuple[str, ...] = field(default=())

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.forwards + other.forwards, self.backwards + other.backwards,
                    self.explanations + other.explanations, self.unknown + other.unknown)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.forwards * factor, self.backwards * factor, self.explanations * factor, self.unknown)

    @property
    def units(self) -> float:
        """Forward-pass equivalents (explanations are not expanded: see `pair_cost`)."""
        return max(self.forwards + BACKWARD_UNITS * self.backwards, NO_PASS_UNITS)

    def __str__(self) -> str:
        parts = [f"{_num(v)} {name}" for v, name in ((self.forwards, "fwd"), (self.backwards, "bwd"),
                                                        (self.explanations, "expl")) if v]
        text = " + ".join(parts) or "no model passes"
        return text + (f" (+ unknown: {'; '.join(self.unknown)})" if self.unknown else "")


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def evaluate_cost(passes: Passes, env: Mapping[str, Any]) -> Cost:
    """The `Cost` of declared `Passes` with the names in `env` (parameters and sizes); a count that
    names something unknown is left out and listed in `Cost.unknown`."""
    counts = passes.evaluate(env)
    unknown = tuple(f"{getattr(passes, kind)} {kind}" for kind in KINDS if counts[kind] is None)
    return Cost(*(counts[kind] or 0.0 for kind in KINDS), unknown)


def _params(fn: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of `fn`'s keyword parameters, updated by `params`."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(params)
    out = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    out.update(params)
    return out


def _sizes(image_size: tuple[int, int] | None) -> dict[str, Any]:
    if image_size is None:
        return {}
    h, w = image_size
    return {"H": h, "W": w, "F": h * w, "features": h * w}


def randomised_layers(model: nn.Module, layers: Sequence[str] | str | None) -> int:
    """How many steps a model parameter randomisation of `model` takes with `layers`."""
    from xaibench.metrics.randomisation import randomisable_layers

    return len(randomisable_layers(model, layers))


def method_cost(method: str, params: Mapping[str, Any] | None = None, *,
                image_size: tuple[int, int] | None = None) -> Cost:
    """Passes per image of explaining with `method` (registry name) and `params`."""
    from xaibench.explainers import METHODS
    from xaibench.runner.config import method_factory

    entry = METHODS.get(method)
    env = {**_params(method_factory(entry), params or {}), **_sizes(image_size)}
    return evaluate_cost(entry.cost, env)


def metric_cost(metric: str, params: Mapping[str, Any] | None = None, *,
                image_size: tuple[int, int] | None = None, model: nn.Module | None = None) -> Cost:
    """Passes per image of `metric` (registry name) with `params`; explanations not yet expanded."""
    from xaibench.metrics import METRICS

    entry = METRICS.get(metric)
    env = {**_params(entry.fn, params or {}), **_sizes(image_size)}
    env.setdefault("S", env.get("n_segments"))
    if model is not None and "L" in entry.info.cost.names():
        try:
            env["L"] = randomised_layers(model, env.get("layers"))
        except Exception:  # a bad layer name is reported when the metric runs; here it is unknown
            pass
    return evaluate_cost(entry.info.cost, env)


def pair_cost(method: Cost, metric: Cost) -> Cost:
    """Passes per image of a metric scoring a method: the metric's own passes plus its
    explanations, each costing the method's passes."""
    own = Cost(metric.forwards, metric.backwards, 0.0, metric.unknown)
    return own + method.scaled(metric.explanations)


@dataclass(frozen=True)
class PlannedCost:
    """The planned cost of one step of a run, per image: maps of a method or a metric on all methods."""

    kind: str  # "maps" or "metric"
    label: str  # method or metric label of the config
    name: str  # registry name
    per_image: Cost  # summed over the methods for a metric
    units: float  # forward-pass equivalents per image, explanations expanded


def plan_costs(cfg: Any, *, image_size: tuple[int, int] | None = None,
               model: nn.Module | None = None) -> list[PlannedCost]:
    """The planned cost of every method's maps and of every metric (over all methods) of a
    `RunConfig`, per image."""
    methods = {m.label: method_cost(m.method, m.params, image_size=image_size) for m in cfg.methods}
    rows = [PlannedCost("maps", m.label, m.method, methods[m.label], methods[m.label].units) for m in cfg.methods]
    for metric in cfg.metrics:
        own = metric_cost(metric.metric, metric.params, image_size=image_size, model=model)
        pairs = [pair_cost(c, own) for c in methods.values()]
        total = sum(pairs[1:], pairs[0])
        rows.append(PlannedCost("metric", metric.label, metric.metric, total, sum(p.units for p in pairs)))
    return rows


def step_units(cfg: Any, *, image_size: tuple[int, int] | None = None,
               model: nn.Module | None = None) -> dict[tuple[str, str | None], float]:
    """Forward-pass equivalents per image of each step (method, metric) of a shard; metric None = maps."""
    methods = {m.label: method_cost(m.method, m.params, image_size=image_size) for m in cfg.methods}
    out: dict[tuple[str, str | None], float] = {(label, None): c.units for label, c in methods.items()}
    for metric in cfg.metrics:
        own = metric_cost(metric.metric, metric.params, image_size=image_size, model=model)
        for label, c in methods.items():
            out[(label, metric.label)] = pair_cost(c, own).units
    return out


def format_plan(rows: Sequence[PlannedCost], n_images: int) -> str:
    """A few lines: the planned passes per image of each step and its share of the run."""
    total = sum(r.units for r in rows) or 1.0
    width = max(len(r.label) for r in rows) + 7
    lines = [f"planned cost for {n_images} images (per image; fwd = forward, bwd = backward pass, "
             f"expl = explanation):"]
    for r in sorted(rows, key=lambda r: -r.units):
        what = f"{'maps ' if r.kind == 'maps' else ''}{r.label}"
        lines.append(f"  {what:<{width}} {r.units:10.1f} fwd-equiv  {100 * r.units / total:5.1f} %   {r.per_image}")
    lines.append(f"  {'total':<{width}} {total:10.1f} fwd-equiv per image, {total * n_images:.4g} for the run")
    return "\n".join(lines)
