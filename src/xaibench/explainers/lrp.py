"""Relevance propagation through zennit: excitation backprop, contrastive LRP epsilon-plus, and the
guided-backprop rule used when maps must carry gradient.

zennit attaches rules to layer types (a *composite*) after *canonizers* reshape the network
(batch norm merged into the preceding convolution for VGG-style sequences, ResNet blocks made
explicit). ``canonizer``: ``"auto"`` (torchvision VGG -> zennit's VGG canonizer, torchvision
ResNet -> its ResNet canonizer, anything else: none), ``"vgg"``, ``"resnet"`` or ``"none"``.

- ``excitation_backprop`` (Zhang et al. 2018): zennit's ``ExcitationBackprop`` composite, the
  relevance of the target's output (``contrast="none"`` by default).
- ``lrp_epsilon_plus``: zennit's ``EpsilonPlus`` composite, contrastive (``contrast="ones"`` by
  default): the relevance of the target minus the relevance of all logits (an all-ones output),
  each L1-normalised per image.

Two parameters shape the output relevance (`RelevanceStart`): ``init`` is the target's
(``"onehot"``: 1 at the target; ``"logit"``: the target's logit z_y there, as HARMONY's
attributors seed the backward pass) and ``contrast`` what is subtracted (``"none"``; ``"ones"``:
an all-ones output; ``"logits"``: the logit vector z itself, HARMONY's contrastive excitation
backprop and LRP epsilon-plus), each relevance L1-normalised per image before the difference
(``"logits"`` divides by the L1 norm plus HARMONY's 1e-9, which matters where z_y is near 0).

With ``differentiable`` (``explainer(name, model, differentiable=True)``) zennit runs with
``create_graph``: the maps keep their graph through the activations to the weights; the
rule-modified weights inside zennit's hooks (e.g. the positive part of a layer's weights) are
constants of that graph, as in HARMONY's training. Raw attribution [B, C, H, W]; default map:
the signed channel sum.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.explainers.base import Explainer, network, no_inplace_relu, register
from xaibench.passes import Passes

CANONIZERS = ("auto", "vgg", "resnet", "none")
HARMONY_L1_EPS = 1e-9  # harmony_finetune/utils.py, backprop_normalize: / (L1 norm + 1e-9)


def zennit(module: str) -> Any:
    """``zennit.<module>``, or an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(f"zennit.{module}")
    except ImportError as err:
        raise ImportError("this method needs zennit: pip install 'xaibench[lrp]'") from err


def canonizers(model: nn.Module, name: str) -> list[Any]:
    """zennit canonizers for `model` by name (`CANONIZERS`; ``auto`` looks at the network's class)."""
    tv = zennit("torchvision")
    if name not in CANONIZERS:
        raise InputError(f"canonizer must be one of {CANONIZERS}, got {name!r}")
    if name == "auto":
        import torchvision.models as tvm

        net = network(model)
        name = "vgg" if isinstance(net, tvm.VGG) else "resnet" if isinstance(net, tvm.ResNet) else "none"
    return {"vgg": [tv.VGGCanonizer()], "resnet": [tv.ResNetCanonizer()], "none": []}[name]


def zennit_relevance(model: nn.Module, composite: Any, inputs: Tensor, outputs: Tensor, create_graph: bool) -> Tensor:
    """Relevance [B, C, H, W] of `inputs` for the output relevance `outputs` [B, classes] under a
    zennit composite. With `create_graph` the output relevance itself requires grad, so zennit
    keeps the graph from the top layer on (it decides per layer from its incoming gradient)."""
    x = inputs.detach().requires_grad_(True)
    grad_out = outputs.to(inputs.dtype)
    if not grad_out.requires_grad:  # a start computed from the logits keeps their graph
        grad_out = grad_out.requires_grad_(create_graph)
    attributor = zennit("attribution").Gradient(model, composite, create_graph=create_graph)
    with no_inplace_relu(model), torch.enable_grad(), attributor as attr:
        _, relevance = attr(x, grad_out)
    return relevance


class RelevanceStart:
    """Mixin: the output relevance a backward pass starts from (``init``) and the optional
    contrast (module doc). Needs `_num_classes` (set by `Explainer._validate`) and `relevance`."""

    INITS: ClassVar[tuple[str, ...]] = ("onehot", "logit")
    CONTRASTS: ClassVar[tuple[str, ...]] = ("none", "ones", "logits")
    PARAMS = {"init": "output relevance of the target: 'onehot' (1) or 'logit' (its logit z_y, HARMONY's)"}
    model: nn.Module
    differentiable: bool
    _num_classes: int | None

    def _check_start(self, init: str, contrast: str) -> None:
        if init not in self.INITS:
            raise InputError(f"init must be one of {self.INITS}, got {init!r}")
        if contrast not in self.CONTRASTS:
            raise InputError(f"contrast must be one of {self.CONTRASTS}, got {contrast!r}")
        self.init, self.contrast = init, contrast

    def relevance(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, inputs: Tensor) -> Tensor:
        """The model's logits; with their graph when the maps keep theirs (the start then carries it)."""
        with torch.set_grad_enabled(self.differentiable):
            return self.model(inputs)

    def started(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Relevance [B, C, H, W] from the target's start, minus the contrast's (each L1-normalised)."""
        assert self._num_classes is not None  # set by _validate
        start = torch.nn.functional.one_hot(targets, self._num_classes).to(inputs.dtype)
        z = self.logits(inputs) if self.init == "logit" or self.contrast == "logits" else None
        target = self.relevance(inputs, start * z if self.init == "logit" else start)
        if self.contrast == "none":
            return target
        other = torch.ones_like(start) if self.contrast == "ones" else z
        eps = HARMONY_L1_EPS if self.contrast == "logits" else 0.0
        return l1_normalise(target, eps) - l1_normalise(self.relevance(inputs, other), eps)


class ZennitExplainer(RelevanceStart, Explainer):
    """Shared machinery: a composite built per call with the canonizers of `canonizer`."""

    PARAMS = {
        "canonizer": "zennit canonizers: 'auto' (VGG / ResNet by class), 'vgg', 'resnet' or 'none'",
        "contrast": "relevance subtracted: 'none', 'ones' (all logits) or 'logits' (the logit vector, HARMONY's)",
    }
    composite_name: ClassVar[str] = ""
    default_contrast: ClassVar[str] = "none"

    def __init__(self, model: nn.Module, *, canonizer: str = "auto", init: str = "onehot",
                 contrast: str | None = None, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        canonizers(model, canonizer)  # validate now
        self._check_start(init, self.default_contrast if contrast is None else contrast)
        self.canonizer = canonizer
        self.params.update(canonizer=canonizer, init=self.init, contrast=self.contrast)

    def composite(self) -> Any:
        return getattr(zennit("composites"), self.composite_name)(canonizers=canonizers(self.model, self.canonizer))

    def relevance(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        return zennit_relevance(self.model, self.composite(), inputs, outputs, self.differentiable)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.started(inputs, targets)


@register("excitation_backprop", cost=Passes(forwards="1", backwards="1", note="contrast: 2 forwards, 2 backwards"),
          resolution="input")
class ExcitationBackpropExplainer(ZennitExplainer):
    """Excitation backprop (Zhang et al. 2018) through zennit: relevance of the target's output;
    ``contrast="logits"`` with ``init="logit"`` is HARMONY's contrastive excitation backprop."""

    composite_name = "ExcitationBackprop"


@register("lrp_epsilon_plus", cost=Passes(forwards="2", backwards="2"), resolution="input", aliases=("lrp",))
class LRPEpsilonPlusExplainer(ZennitExplainer):
    """Contrastive LRP epsilon-plus: relevance of the target minus that of all logits, each
    L1-normalised per image (zennit's EpsilonPlus composite); ``contrast="logits"`` with
    ``init="logit"`` is HARMONY's (the logit vector subtracted)."""

    composite_name = "EpsilonPlus"
    default_contrast = "ones"


def l1_normalise(relevance: Tensor, eps: float = 0.0) -> Tensor:
    """`relevance` [B, ...] divided by its per-image L1 norm plus `eps` (images without relevance stay 0)."""
    norm = relevance.flatten(1).abs().sum(1).view(-1, *([1] * (relevance.ndim - 1))) + eps
    return relevance / torch.where(norm > 0, norm, torch.ones_like(norm))
