"""Relevance propagation through zennit: excitation backprop, contrastive LRP epsilon-plus, and the
guided-backprop rule used when maps must carry gradient.

zennit attaches rules to layer types (a *composite*) after *canonizers* reshape the network
(batch norm merged into the preceding convolution for VGG-style sequences, ResNet blocks made
explicit). ``canonizer``: ``"auto"`` (torchvision VGG -> zennit's VGG canonizer, torchvision
ResNet -> its ResNet canonizer, anything else: none), ``"vgg"``, ``"resnet"`` or ``"none"``.

- ``excitation_backprop`` (Zhang et al. 2018): zennit's ``ExcitationBackprop`` composite, the
  relevance of the target's one-hot output.
- ``lrp_epsilon_plus``: zennit's ``EpsilonPlus`` composite, contrastive as in HARMONY: the
  relevance of the target minus the relevance of all logits (an all-ones output), each
  L1-normalised per image.

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

CANONIZERS = ("auto", "vgg", "resnet", "none")


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
    grad_out = outputs.to(inputs.dtype).requires_grad_(create_graph)
    attributor = zennit("attribution").Gradient(model, composite, create_graph=create_graph)
    with no_inplace_relu(model), torch.enable_grad(), attributor as attr:
        _, relevance = attr(x, grad_out)
    return relevance


class ZennitExplainer(Explainer):
    """Shared machinery: a composite built per call with the canonizers of `canonizer`."""

    PARAMS = {"canonizer": "zennit canonizers: 'auto' (VGG / ResNet by class), 'vgg', 'resnet' or 'none'"}
    composite_name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, canonizer: str = "auto", reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        canonizers(model, canonizer)  # validate now
        self.canonizer = canonizer
        self.params.update(canonizer=canonizer)

    def composite(self) -> Any:
        return getattr(zennit("composites"), self.composite_name)(canonizers=canonizers(self.model, self.canonizer))

    def relevance(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        return zennit_relevance(self.model, self.composite(), inputs, outputs, self.differentiable)

    def _onehot(self, inputs: Tensor, targets: Tensor) -> Tensor:
        assert self._num_classes is not None  # set by _validate
        return torch.nn.functional.one_hot(targets, self._num_classes).to(inputs.dtype)


@register("excitation_backprop", cost="1 forward + 1 backward", resolution="input")
class ExcitationBackpropExplainer(ZennitExplainer):
    """Excitation backprop (Zhang et al. 2018) through zennit: relevance of the target's one-hot output."""

    composite_name = "ExcitationBackprop"

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.relevance(inputs, self._onehot(inputs, targets))


@register("lrp_epsilon_plus", cost="2 forwards + 2 backwards", resolution="input", aliases=("lrp",))
class LRPEpsilonPlusExplainer(ZennitExplainer):
    """Contrastive LRP epsilon-plus (HARMONY): relevance of the target minus that of all logits, each
    L1-normalised per image (zennit's EpsilonPlus composite)."""

    composite_name = "EpsilonPlus"

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        target = self.relevance(inputs, self._onehot(inputs, targets))
        everything = self.relevance(inputs, torch.ones_like(self._onehot(inputs, targets)))
        return l1_normalise(target) - l1_normalise(everything)


def l1_normalise(relevance: Tensor) -> Tensor:
    """`relevance` [B, ...] divided by its per-image L1 norm (images without relevance stay 0)."""
    norm = relevance.flatten(1).abs().sum(1).view(-1, *([1] * (relevance.ndim - 1)))
    return relevance / torch.where(norm > 0, norm, torch.ones_like(norm))
