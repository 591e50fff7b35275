"""Explainer base class, method registry and the channel-reduction / sign policies.

Conventions shared by every method:

- inputs are images in [0, 1] pixel space, [B, C, H, W]; targets are class indices [B] (an int is
  broadcast). The explained score is the model's output (logit) of the target class, except
  Score-CAM, whose channel weights are target-class softmax probabilities (as in its paper).
- ``explainer(inputs, targets)`` returns float32 maps [B, H, W] on the model's device:
  the raw attribution (`attribute`) is reduced over channels (`reduce`), its sign handled (`sign`)
  and, for layer-resolution methods, upsampled bilinearly to the input size (`upsample`).
- the model is explained in eval mode: one in training mode is switched to eval mode for the call
  and put back, with a warning (`xaibench.checks.evaluation_mode`); it is never modified.
- maps and raw attributions are detached from the autograd graph (`Explainer.differentiable`
  says when a method keeps it); images are checked against the model's pixel range
  (`xaibench.checks.check_images`).
- layer names are those of the user's network: xaibench's wrappers (the normalisation
  `load_model` prepends) add no prefix (`network`).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.checks import check_images, check_targets, evaluation_mode
from xaibench.devices import model_device
from xaibench.errors import InputError
from xaibench.models import unwrap
from xaibench.passes import Passes
from xaibench.registry import Registry

REDUCTIONS = ("sum", "abs_sum", "max_abs")
SIGNS = ("all", "positive", "absolute")
ARCHITECTURES = ("any", "cnn", "vit")


@dataclass(frozen=True)
class MethodInfo:
    """Registry entry of an explanation method.

    cost: passes per image as expressions of the method's parameters (`xaibench.passes.Passes`).
    resolution: ``"input"`` (maps at input resolution) or ``"layer"`` (native resolution of the
    explained layer, upsampled to the input by default).
    architectures: the networks the method applies to (`ARCHITECTURES`): ``"any"``, ``"cnn"``
    (spatial feature maps) or ``"vit"`` (timm vision transformers: attention or token methods).
    """

    name: str
    cls: type[Explainer]
    cost: Passes
    resolution: str
    description: str
    aliases: tuple[str, ...] = ()
    architectures: str = "any"

    @property
    def params(self) -> dict[str, tuple[Any, str]]:
        """Parameter name -> (effective default, description), in signature order."""
        sig = inspect.signature(self.cls.__init__)
        docs = self.cls.param_docs()
        effective = {"reduce": self.cls.default_reduce, "sign": self.cls.default_sign}
        return {
            n: (effective.get(n, p.default), docs.get(n, ""))
            for n, p in sig.parameters.items()
            if n not in ("self", "model")
        }


METHODS: Registry[MethodInfo] = Registry("method")


def register(name: str, *, cost: Passes, resolution: str, aliases: tuple[str, ...] = (), architectures: str = "any"):
    """Class decorator: register an `Explainer` subclass under `name` (and its aliases)."""
    if not isinstance(cost, Passes):
        raise TypeError(f"{name}: cost must be a Passes, e.g. Passes(forwards='steps', backwards='steps'), got {cost!r}")
    if architectures not in ARCHITECTURES:
        raise ValueError(f"architectures must be one of {ARCHITECTURES}, got {architectures!r}")

    def deco(cls: type[Explainer]) -> type[Explainer]:
        doc = inspect.getdoc(cls) or ""
        info = MethodInfo(name, cls, cost, resolution, doc.split("\n\n")[0].replace("\n", " "), aliases,
                          architectures)
        cls.name = name
        for key in (name, *aliases):
            METHODS.add(key, info)
        return cls

    return deco


def reduce_channels(attr: Tensor, reduce: str) -> Tensor:
    """[B, C, h, w] -> [B, h, w]: ``sum`` (signed), ``abs_sum`` (sum of |a|) or ``max_abs`` (max of |a|)."""
    if reduce == "sum":
        return attr.sum(dim=1)
    if reduce == "abs_sum":
        return attr.abs().sum(dim=1)
    return attr.abs().amax(dim=1)


def apply_sign(maps: Tensor, sign: str) -> Tensor:
    """``all`` keeps signed values, ``positive`` clamps negatives to 0, ``absolute`` takes |m|."""
    if sign == "positive":
        return maps.clamp(min=0)
    if sign == "absolute":
        return maps.abs()
    return maps


@contextlib.contextmanager
def no_inplace_relu(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``inplace=False`` on the model's ReLUs (module backward hooks need it)."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


# Captum's notices about what it does on purpose (hooks set and removed, inputs made to require grad).
_CAPTUM_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting backward hooks on ReLU activations",
    r"Setting forward, backward hooks and attributes on non-linear",
    r"You are providing multiple inputs for Lime / Kernel SHAP",
)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's routine UserWarnings (listed in `_CAPTUM_NOTICES`); others still show."""
    with warnings.catch_warnings():
        for pattern in _CAPTUM_NOTICES:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def warn_without_relu(explainer: Explainer, model: nn.Module, same_as: str | None) -> None:
    """Warn (and record `same_as` on `explainer`) when `model` has no ``nn.ReLU`` module: rules that
    modify the ReLU backward pass (guided backprop, deconvolution) then never apply."""
    if any(isinstance(m, nn.ReLU) for m in model.modules()):
        return
    explainer.same_as = same_as
    equal = f"its maps equal those of {same_as!r} with the same reduce and sign" if same_as else \
        "its guided part is the plain gradient"
    warnings.warn(f"method {explainer.name!r}: the model has no nn.ReLU module (GELU, or ReLUs called as "
                  f"functions), so its modified ReLU backward pass never applies; {equal}", UserWarning,
                  stacklevel=3)


def network(model: nn.Module) -> nn.Module:
    """The user's network inside xaibench's wrappers (`xaibench.models.Normalized` / `Logits`);
    layer names, given and reported, are its ``named_modules()`` names."""
    return unwrap(model)


def record_forward(model: nn.Module, inputs: Tensor, select: Callable[[nn.Module], bool]
                   ) -> list[tuple[str, Any]]:
    """(name, output) of each call of a selected sub-module of the user's network (`network`, its
    root excluded) during one no-grad forward of `model`, in order."""
    seen: list[tuple[str, Any]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, out)))
             for n, m in network(model).named_modules() if n and select(m)]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


class Explainer:
    """Base class: validation, channel reduction, sign policy and upsampling.

    Subclasses implement `_attribute(inputs, targets) -> Tensor [B, C', h, w]` and set the class
    defaults `default_reduce` / `default_sign`; `PARAMS` documents their own parameters.
    """

    name: ClassVar[str] = ""
    default_reduce: ClassVar[str] = "sum"
    default_sign: ClassVar[str] = "all"
    PARAMS: ClassVar[dict[str, str]] = {}
    COMMON: ClassVar[dict[str, str]] = {
        "reduce": "channel reduction: 'sum' | 'abs_sum' | 'max_abs'",
        "sign": "sign policy: 'all' (signed) | 'positive' (negatives -> 0) | 'absolute'",
        "max_batch": "most model rows evaluated at once when the method expands the batch",
        "seed": "int or torch.Generator controlling every random draw",
    }

    def __init__(self, model: nn.Module, *, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        reduce = self.default_reduce if reduce is None else reduce
        sign = self.default_sign if sign is None else sign
        if reduce not in REDUCTIONS:
            raise InputError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if sign not in SIGNS:
            raise InputError(f"sign must be one of {SIGNS}, got {sign!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive int, got {max_batch!r}")
        self.model = model
        self.reduce = reduce
        self.sign = sign
        self.max_batch = max_batch
        self.params: dict[str, Any] = {"reduce": reduce, "sign": sign, "max_batch": max_batch}
        self.differentiable = False  # True: maps keep their autograd graph (detached otherwise)
        self.same_as: str | None = None  # a method whose maps this one equals on this model, if any
        self._num_classes: int | None = None

    @classmethod
    def param_docs(cls) -> dict[str, str]:
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            docs.update(getattr(klass, "COMMON", {}))
            docs.update(klass.__dict__.get("PARAMS", {}))
        return docs

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def _validate(self, inputs: Tensor, targets: Tensor | int | list[int]) -> tuple[Tensor, Tensor]:
        check_images(inputs, model=self.model)
        inputs = inputs.to(self.device)
        if self._num_classes is None:
            with torch.no_grad():
                out = self.model(inputs[:1])
            if out.ndim != 2:
                raise InputError(f"the model must return logits [B, classes], got {tuple(out.shape)}")
            self._num_classes = int(out.shape[1])
        t = check_targets(targets, inputs.shape[0], self._num_classes).to(self.device)
        return inputs, t

    def attribute(self, inputs: Tensor, targets: Tensor | int | list[int]) -> Tensor:
        """Raw attribution [B, C', h, w] (C' = C for gradient methods, 1 for CAMs), detached from
        the autograd graph unless `differentiable` (the one place where maps are detached)."""
        with evaluation_mode(self.model):
            inputs, t = self._validate(inputs, targets)
            with quiet_captum():
                raw = self._attribute(inputs, t)
        return raw if self.differentiable else raw.detach()

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def _resize(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        return maps

    def __call__(self, inputs: Tensor, targets: Tensor | int | list[int]) -> Tensor:
        """Maps [B, H, W] float32: `attribute`, then channel reduction, sign policy and resizing."""
        raw = self.attribute(inputs, targets)
        maps = apply_sign(reduce_channels(raw.float(), self.reduce), self.sign)
        return self._resize(maps, (inputs.shape[2], inputs.shape[3]))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}, {args})"


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (align_corners=False) of [B, h, w] maps to `size`."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
