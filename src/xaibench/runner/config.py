"""Benchmark configuration: one TOML file, validated up front, hashed to identify the run.

Layout (every key except ``[model] spec``, ``[data] spec``, one method and one metric is optional)::

    name = "digits"              # title shown in the report
    seed = 0                     # the one seed: data subset, explainer noise, metric draws
    device = "cpu"               # not part of the config hash (a run may resume elsewhere)
    target = "predicted"         # class explained: "predicted" (model's argmax) or "label"
    shard_size = 32              # images per shard (unit of work, resume and caching)
    explain_batch = 32           # images per explainer call
    max_batch = 256              # passed to every metric that takes ``max_batch``

    [resources]                  # optional: one shard task's resources on a distributed executor (Ray);
    cpus = 1                     # like device, not part of the hash. gpus (default: 1 per task on CUDA,
                                 # else 0), memory (bytes)

    [model]
    spec = "builtin:digits-cnn"  # + optional weights, num_classes

    [data]
    spec = "builtin:digits"      # + optional split ("test"), n (all), seed (run seed), image_size,
                                 #   on_error ("raise"; "skip" drops unreadable images, as load_dataset)

    [methods.ig]                 # table name = label in the results
    method = "integrated_gradients"   # registry name; defaults to the table name
    steps = 16                   # every other key is a parameter of the method

    [metrics.rma_square]
    metric = "relevance_mass_accuracy"  # registry name; defaults to the table name
    mask = "square"              # which human mask (metrics that take masks); dataset default otherwise
    # every other key is a parameter of the metric, checked against its signature

A few runner defaults differ from the function's (`RUNNER_DEFAULTS`: model_parameter_randomisation
randomises the top-level blocks, ``layers = "blocks"``); they are written into the canonical config.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xaibench.config import REQUIRED, Schema, check_params, config_hash, entries, load_toml, lookup, section
from xaibench.errors import InputError

TARGET_POLICIES = ("predicted", "label")

_TOP: Schema = {
    "name": ((str,), ""),
    "seed": ((int,), 0),
    "device": ((str,), "cpu"),
    "resources": ((dict,), None),
    "target": ((str,), "predicted"),
    "shard_size": ((int,), 32),
    "explain_batch": ((int,), 32),
    "max_batch": ((int,), 256),
    "model": ((dict,), REQUIRED),
    "data": ((dict,), REQUIRED),
    "methods": ((dict,), REQUIRED),
    "metrics": ((dict,), REQUIRED),
}
_MODEL: Schema = {
    "spec": ((str,), REQUIRED),
    "weights": ((str,), None),
    "num_classes": ((int,), None),
}
# Resources of one shard task for distributed executors (Ray); like the device, not part of the hash.
_RESOURCES: Schema = {
    "cpus": ((float,), 1.0),
    "gpus": ((float,), None),  # None: one GPU per task when the device is CUDA, else none
    "memory": ((int,), None),  # bytes
}
_DATA: Schema = {
    "spec": ((str,), REQUIRED),
    "split": ((str,), "test"),
    "n": ((int,), None),
    "seed": ((int,), None),
    "image_size": ((int,), None),
    "on_error": ((str,), "raise"),
}
ON_ERROR = ("raise", "skip")
# Keys of the metric function that the runner supplies itself (a config may still set them).
RUNNER_SUPPLIED = ("seed", "max_batch")
# Where a benchmark needs another default than the function's (which stays the reference
# implementation's): metric -> parameter -> value, filled into the canonical config (and hash).
RUNNER_DEFAULTS: dict[str, dict[str, Any]] = {
    # every layer of a ResNet-18 is 41 explanations per image; the top-level blocks are 11
    "model_parameter_randomisation": {"layers": "blocks"},
}


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method of a run: the label used in results, registry name and parameters."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a run: label (alias) used in results, registry name, mask name and parameters."""

    label: str
    metric: str
    mask: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """A validated benchmark configuration. `raw` is the canonical dict the hash is computed from."""

    raw: dict[str, Any]
    name: str
    seed: int
    device: str
    target: str
    shard_size: int
    explain_batch: int
    max_batch: int
    model: dict[str, Any]
    data: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    metrics: tuple[MetricSpec, ...]
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return config_hash(self.raw)

    def with_device(self, device: str | None) -> RunConfig:
        """The same run on another device (the device is not part of the hash)."""
        if device is None:
            return self
        raw = copy.deepcopy(self.raw)
        raw["device"] = device
        return parse_config(raw)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a benchmark config file (TOML)."""
    return load_toml(path, parse_config)


def method_factory(entry: Any) -> Any:
    """The callable whose signature lists a method's parameters (class, factory or function)."""
    for attr in ("factory", "cls", "fn"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def parse_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a config dict (as read from TOML) and return the `RunConfig`.

    Errors name the offending key (``config [metrics.rma].mask: ...``) and suggest close names.
    """
    from xaibench.explainers import METHODS
    from xaibench.metrics import METRICS
    from xaibench.metrics.base import VOCABULARY

    if not isinstance(raw, Mapping):
        raise InputError(f"config must be a table, got {type(raw).__name__}")
    top = section("", raw, _TOP)
    if top["target"] not in TARGET_POLICIES:
        raise InputError(f"config target: must be one of {TARGET_POLICIES}, got {top['target']!r}")
    for key in ("shard_size", "explain_batch", "max_batch"):
        if top[key] < 1:
            raise InputError(f"config {key}: must be >= 1, got {top[key]}")
    model = section("[model].", top["model"], _MODEL)
    data = section("[data].", top["data"], _DATA)
    if data["n"] is not None and data["n"] < 1:
        raise InputError(f"config [data].n: must be >= 1, got {data['n']}")
    if data["seed"] is None:
        data["seed"] = top["seed"]
    if data["on_error"] not in ON_ERROR:
        raise InputError(f"config [data].on_error: must be one of {ON_ERROR}, got {data['on_error']!r}")
    if data["image_size"] is not None and data["image_size"] < 1:
        raise InputError(f"config [data].image_size: must be >= 1, got {data['image_size']}")
    resources = section("[resources].", top["resources"] or {}, _RESOURCES)
    for key, low in (("cpus", 0.0), ("gpus", 0.0), ("memory", 0)):
        value = resources[key]
        if value is not None and (value < low or (key != "gpus" and value == low)):
            raise InputError(f"config [resources].{key}: must be {'>= 0' if key == 'gpus' else '> 0'}, got {value}")

    methods: list[MethodSpec] = []
    canon_methods: dict[str, Any] = {}
    for label, where, name, params in entries(top["methods"], "methods", "method"):
        entry = lookup(where, METHODS, name)
        check_params(where, method_factory(entry), params, skip=("model", "self"))
        methods.append(MethodSpec(label, name, params))
        canon_methods[label] = {"method": name, **params}

    metrics: list[MetricSpec] = []
    canon_metrics: dict[str, Any] = {}
    for label, where, name, params in entries(top["metrics"], "metrics", "metric"):
        mask = params.pop("mask", None)
        entry = lookup(where, METRICS, name)
        if mask is not None:
            if not isinstance(mask, str):
                raise InputError(f"config {where}.mask: expected str, got {type(mask).__name__}")
            if "masks" not in entry.info.requires:
                raise InputError(f"config {where}.mask: metric {name!r} does not use human masks")
        check_params(where, entry.fn, params, skip=VOCABULARY)
        params = {**RUNNER_DEFAULTS.get(entry.info.name, {}), **params}
        metrics.append(MetricSpec(label, name, mask, params))
        canon_metrics[label] = {"metric": name, "mask": mask, **params}

    canonical = {
        **{k: top[k] for k in ("name", "seed", "device", "target", "shard_size", "explain_batch", "max_batch")},
        "model": model,
        "data": data,
        "methods": canon_methods,
        "metrics": canon_metrics,
        "resources": resources,
    }
    # Canonical = what JSON would give back (tuples -> lists), so hashes survive a round trip.
    canonical = json.loads(json.dumps(canonical))
    return RunConfig(
        raw=canonical,
        name=top["name"],
        seed=top["seed"],
        device=top["device"],
        target=top["target"],
        shard_size=top["shard_size"],
        explain_batch=top["explain_batch"],
        max_batch=top["max_batch"],
        model=model,
        data=data,
        methods=tuple(methods),
        metrics=tuple(metrics),
        resources=resources,
    )
