"""Device names from users (CLI flags, configs) to `torch.device`, with errors that list what exists.

`resolve_device(None)` or ``"auto"`` is the first CUDA GPU if one is visible, else the CPU.
Anything else must name a device torch knows *and* this machine has: ``--device gpu`` or
``--device cuda`` on a machine without a GPU is an `InputError` listing `available_devices()`.
"""

from __future__ import annotations

import torch
from torch import nn

from xaibench.config import suggest
from xaibench.errors import InputError

# Device types a user may name (torch knows more, e.g. "meta", which never runs a model).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps"}


def _backend_count(kind: str) -> int:
    if kind == "cpu":
        return 1
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return int(backend is not None and backend.is_available())
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return int(module.device_count())


def available_devices() -> list[str]:
    """The devices of this machine: ``cpu``, then ``cuda:0`` ... , ``mps``, ``xpu:0`` ... where present."""
    names = ["cpu"]
    for kind in DEVICE_TYPES[1:]:
        count = _backend_count(kind)
        names += [kind] if kind == "mps" and count else [f"{kind}:{i}" for i in range(count)]
    return names


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The `torch.device` named by `spec` after checking this machine has it.

    None or ``"auto"``: ``cuda:0`` if a GPU is visible, else ``cpu``. Raises `InputError` naming
    the value, the closest device type and the available devices.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return torch.device("cuda", 0) if _backend_count("cuda") else torch.device("cpu")
    available = ", ".join(available_devices())
    text = str(spec).strip()
    kind = text.split(":", 1)[0].lower()
    if kind not in DEVICE_TYPES:
        alias = _ALIASES.get(kind)
        hint = f" Did you mean {alias!r}?" if alias else suggest(kind, DEVICE_TYPES, n=1)
        raise InputError(f"unknown device {text!r}.{hint} Available on this machine: {available} (or 'auto').")
    try:
        device = torch.device(text.lower())
    except RuntimeError as err:
        raise InputError(f"invalid device {text!r} ({err}). Available on this machine: {available}.") from None
    count = _backend_count(device.type)
    if count == 0:
        why = " (this torch has no CUDA support)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise InputError(f"device {text!r} is not available: no {device.type} device on this machine{why}. "
                         f"Available: {available}.")
    if device.type != "cpu" and device.index is not None and device.index >= count:
        raise InputError(f"device {text!r} is not available: {device.type} has {count} device(s). Available: {available}.")
    return device


__all__ = ["DEVICE_TYPES", "available_devices", "resolve_device"]


def model_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """Device of the model's first parameter or buffer (`fallback` for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(fallback)
