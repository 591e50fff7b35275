"""Training configuration: one TOML file, validated up front (as the runner's), hashed to identify the model.

Layout (every key except ``[model] spec`` and ``[data] spec`` is optional)::

    seed = 0                   # the one seed: init, split, batch order, FP draws, label permutation
    device = "auto"            # "auto", "cpu", "cuda", "cuda:1" (not part of the hash)
    devices = 1                # > 1: several GPUs, Lightning's DDP strategy
    setting = "baseline"       # baseline, fp, ap, fl, fp+ap, fl+fp, fl+ap, fl+fp+ap (Gomez & Mouchere)
    interpolation = 10         # i of the loss weights (clean, masked) = (2 - 0.1 i, 0.1 i); FP settings only
    epochs = 10
    batch_size = 64
    optimizer = "sgd"          # "sgd" (momentum, nesterov off) or "adam"
    lr = 0.01
    momentum = 0.9             # sgd only
    weight_decay = 0.0
    schedule = "constant"      # "constant", "cosine" (per step, to 0) or "onecycle" (per step)
    warmup = 0.25              # onecycle: fraction of the steps spent rising to lr
    patience = 0               # early stopping on validation accuracy after this many epochs without gain (0: off)
    selection = "accuracy+ece" # "accuracy+ece", "gomez" (the paper's code), "accuracy" (best validation accuracy) or "last"
    label_permutation = false  # train on labels permuted with the seed (Adebayo's data randomisation test)
    num_workers = 0            # data-loader worker processes
    precision = "32-true"      # Lightning precision: "32-true", "16-mixed", "bf16-mixed"
    feature_layer = ""         # FP: module whose output is the explanation ("": the default CAM layer)
    ap_eps = 0.00392156862745098   # AP: PGD L-inf radius (1/255), step (2/255) and steps
    ap_step = 0.00784313725490196
    ap_steps = 4

    [model]
    spec = "builtin:digits-cnn"   # any load_model spec; builtin: = the architecture, randomly initialised
    num_classes = 10              # default: the data set's number of classes (torchvision / timm heads)
    weights = "pretrained"        # optional: start from these weights (a path or "pretrained"); default random init

    [data]
    spec = "builtin:digits"
    split = "train"               # the split trained on; the validation images are carved out of it
    val_fraction = 0.1            # seeded, stratified by nothing (a uniform subset); 0 = no validation
    image_size = 32               # optional resize + centre crop
    n = 500                       # optional: a seeded subset of the split (before the validation split)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from xaibench.config import REQUIRED, CanonicalConfig, Schema, load_toml, section, suggest
from xaibench.errors import InputError, UnknownNameError

# Setting name -> the set of parts: FL (adaptive focal loss), FP (faithfulness perturbations), AP (adversarial).
SETTINGS: dict[str, frozenset[str]] = {
    "baseline": frozenset(),
    "fp": frozenset({"fp"}),
    "ap": frozenset({"ap"}),
    "fl": frozenset({"fl"}),
    "fp+ap": frozenset({"fp", "ap"}),
    "fl+fp": frozenset({"fl", "fp"}),
    "fl+ap": frozenset({"fl", "ap"}),
    "fl+fp+ap": frozenset({"fl", "fp", "ap"}),
}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "onecycle")
SELECTIONS = ("accuracy+ece", "gomez", "accuracy", "last")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")  # Lightning's names

_TOP: Schema = {
    "seed": ((int,), 0),
    "device": ((str,), "auto"),
    "devices": ((int,), 1),
    "setting": ((str,), "baseline"),
    "interpolation": ((int,), 10),
    "epochs": ((int,), 10),
    "batch_size": ((int,), 64),
    "optimizer": ((str,), "sgd"),
    "lr": ((float,), 0.01),
    "momentum": ((float,), 0.9),
    "weight_decay": ((float,), 0.0),
    "schedule": ((str,), "constant"),
    "warmup": ((float,), 0.25),
    "patience": ((int,), 0),
    "selection": ((str,), "accuracy+ece"),
    "label_permutation": ((bool,), False),
    "num_workers": ((int,), 0),
    "precision": ((str,), "32-true"),
    "feature_layer": ((str,), ""),
    "ap_eps": ((float,), 1 / 255),
    "ap_step": ((float,), 2 / 255),
    "ap_steps": ((int,), 4),
    "model": ((dict,), REQUIRED),
    "data": ((dict,), REQUIRED),
}
_MODEL: Schema = {
    "spec": ((str,), REQUIRED),
    "num_classes": ((int,), None),
    "weights": ((str,), None),
}
_DATA: Schema = {
    "spec": ((str,), REQUIRED),
    "split": ((str,), "train"),
    "val_fraction": ((float,), 0.1),
    "image_size": ((int,), None),
    "n": ((int,), None),
}


@dataclass(frozen=True)
class TrainConfig(CanonicalConfig):
    """A validated training configuration (see `CanonicalConfig`)."""

    UNHASHED: ClassVar[tuple[str, ...]] = ("device", "num_workers")  # do not change the trained weights

    @property
    def parts(self) -> frozenset[str]:
        """The setting's parts: a subset of {"fl", "fp", "ap"}."""
        return SETTINGS[self.raw["setting"]]

    @property
    def loss_weights(self) -> tuple[float, float]:
        """(clean, masked) weights: (2 - 0.1 i, 0.1 i) with FP, (1, 0) without."""
        if "fp" not in self.parts:
            return 1.0, 0.0
        i = self.raw["interpolation"]
        return 2.0 - 0.1 * i, 0.1 * i


def _choice(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise UnknownNameError(f"config {key}: unknown value {value!r}.{suggest(value, allowed)} "
                               f"Allowed: {', '.join(allowed)}.")


def _setting(value: str) -> str:
    """The canonical setting name: case and the order of the parts do not matter (``ap+fl`` = ``fl+ap``)."""
    parts = frozenset(p.strip() for p in value.lower().split("+"))
    for name, known in SETTINGS.items():
        if parts == known or (name == "baseline" and parts == {"baseline"}):
            return name
    _choice("setting", value, list(SETTINGS))
    raise AssertionError  # unreachable: _choice raised


def _positive(where: str, value: int | float, minimum: float = 1) -> None:
    if value < minimum:
        raise InputError(f"config {where}: must be >= {minimum}, got {value}")


def _floats(table: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Integers given for float keys become floats (``lr = 1`` and ``lr = 1.0`` hash alike)."""
    return {k: float(v) if schema[k][0] == (float,) and v is not None else v for k, v in table.items()}


def parse_train_config(raw: Mapping[str, Any]) -> TrainConfig:
    """Validate a config dict (as read from TOML); errors name the key and suggest close names."""
    if not isinstance(raw, Mapping):
        raise InputError(f"config must be a table, got {type(raw).__name__}")
    top = _floats(section("", raw, _TOP), _TOP)
    top["model"] = section("[model].", top["model"], _MODEL)
    top["data"] = _floats(section("[data].", top["data"], _DATA), _DATA)
    top["setting"] = _setting(top["setting"])
    _choice("optimizer", top["optimizer"], OPTIMIZERS)
    _choice("schedule", top["schedule"], SCHEDULES)
    _choice("selection", top["selection"], SELECTIONS)
    _choice("precision", top["precision"], PRECISIONS)
    kind, _, index = top["device"].partition(":")
    if kind not in ("auto", "cpu", "cuda", "gpu") or (index and (kind in ("auto", "cpu") or not index.isdigit())):
        raise InputError(f"config device: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {top['device']!r}")
    for key in ("epochs", "batch_size", "devices", "ap_steps"):
        _positive(key, top[key])
    for key in ("patience", "num_workers"):
        _positive(key, top[key], 0)
    if not 0 <= top["seed"] < 2**32:
        raise InputError(f"config seed: must be in [0, 2**32) (NumPy's and Lightning's range), got {top['seed']}")
    for key in ("lr", "ap_eps", "ap_step"):
        if not top[key] > 0:
            raise InputError(f"config {key}: must be > 0, got {top[key]}")
    for key in ("momentum", "weight_decay"):
        _positive(key, top[key], 0)
    if not 0 <= top["interpolation"] <= 20:
        raise InputError(f"config interpolation: must be in 0..20 (weights (2 - 0.1 i, 0.1 i)), got {top['interpolation']}")
    if not 0 < top["warmup"] < 1:
        raise InputError(f"config warmup: must be in (0, 1), got {top['warmup']}")
    data = top["data"]
    if not 0 <= data["val_fraction"] < 1:
        raise InputError(f"config [data].val_fraction: must be in [0, 1), got {data['val_fraction']}")
    if data["val_fraction"] == 0 and top["selection"] != "last":
        raise InputError(f"config selection = {top['selection']!r} needs validation images: set [data].val_fraction "
                         "> 0, or selection = 'last'")
    if data["val_fraction"] == 0 and top["patience"] > 0:
        raise InputError("config patience: early stopping needs validation images ([data].val_fraction > 0)")
    for key in ("image_size", "n"):
        if data[key] is not None:
            _positive(f"[data].{key}", data[key])
    if top["model"]["num_classes"] is not None:
        _positive("[model].num_classes", top["model"]["num_classes"])
    # Canonical = what JSON gives back, so the hash survives a round trip through train.toml.
    return TrainConfig(json.loads(json.dumps(top)))


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML training config."""
    return load_toml(path, parse_train_config, "training config")


def as_train_config(config: TrainConfig | Mapping[str, Any] | str | Path) -> TrainConfig:
    """A `TrainConfig` from itself, a dict (validated) or a TOML path."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return parse_train_config(copy.deepcopy(dict(config)))
    return load_train_config(config)
