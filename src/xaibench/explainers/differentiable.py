"""Differentiable attribution: ``explainer(name, model, differentiable=True)``.

The maps keep their autograd graph (second-order gradients, ``create_graph``) to the model's
weights, so a loss on them trains the model (HARMONY's metric fine-tuning). Same parameters and,
without gradient, the same maps as the ordinary methods (tested side by side):

- ``gradcam``, ``gradcam_plus_plus``, ``layercam``: the CAM code with ``create_graph``;
- ``saliency``, ``input_x_gradient``: ``torch.autograd.grad`` of the target logit with ``create_graph``;
- ``guided_backprop``: zennit's guided-backprop rule on ``nn.ReLU`` (the ordinary method is Captum's);
- ``excitation_backprop``, ``lrp_epsilon_plus``: zennit with ``create_graph`` (see `explainers.lrp`).

With ``init="logit"`` (and ``contrast="logits"``) the output relevance is computed from the logits
with their graph, so the maps' gradient includes the path through the start, as in HARMONY's
attributors (which start from ``output * one_hot`` of the same forward's logits).

HARMONY's post-processing is the common explainer parameters: ``sign="positive"`` (clamp at 0)
and upsampling to the input (bilinear).
"""

from __future__ import annotations

import torch
from torch import Tensor

from xaibench.errors import InputError
from xaibench.explainers import cam, gradient, lrp
from xaibench.explainers.base import Explainer, MethodInfo


class _Graph:
    """Mixin: maps keep their graph (the base class's one switch, `Explainer.differentiable`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.differentiable = True  # type: ignore[attr-defined]


class _CAMGraph(_Graph):
    def _activations_and_grads(self, inputs: Tensor, targets: Tensor, create_graph: bool = False
                               ) -> tuple[Tensor, Tensor]:
        return super()._activations_and_grads(inputs, targets, True)  # type: ignore[misc]


def input_gradient(model: torch.nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(inputs as differentiated, d logit_target / d inputs) with the graph kept."""
    x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        score = model(x).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
    return x, grad


class GradCAM(_CAMGraph, cam.GradCAMExplainer):
    pass


class GradCAMPlusPlus(_CAMGraph, cam.GradCAMPlusPlusExplainer):
    pass


class LayerCAM(_CAMGraph, cam.LayerCAMExplainer):
    pass


class Saliency(_Graph, gradient.SaliencyExplainer):
    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return input_gradient(self.model, inputs, targets)[1]


class InputXGradient(_Graph, gradient.InputXGradientExplainer):
    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x, grad = input_gradient(self.model, inputs, targets)
        return x * grad


class GuidedBackprop(_Graph, gradient.GuidedBackpropExplainer):
    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        assert self._num_classes is not None  # set by _validate
        start = torch.nn.functional.one_hot(targets, self._num_classes).to(inputs.dtype)
        if self.init == "logit":  # z_y one-hot with the logits' graph (HARMONY's start)
            with torch.enable_grad():
                start = self.model(inputs) * start
        return lrp.zennit_relevance(self.model, lrp.zennit("composites").GuidedBackprop(), inputs, start,
                                    create_graph=True)


class ExcitationBackprop(_Graph, lrp.ExcitationBackpropExplainer):
    pass


class LRPEpsilonPlus(_Graph, lrp.LRPEpsilonPlusExplainer):
    pass


DIFFERENTIABLE: dict[str, type[Explainer]] = {
    "gradcam": GradCAM,
    "gradcam_plus_plus": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "saliency": Saliency,
    "input_x_gradient": InputXGradient,
    "guided_backprop": GuidedBackprop,
    "excitation_backprop": ExcitationBackprop,
    "lrp_epsilon_plus": LRPEpsilonPlus,
}


def differentiable_class(info: MethodInfo) -> type[Explainer]:
    """The differentiable variant of a registered method; other methods raise `InputError`."""
    if info.name not in DIFFERENTIABLE:
        raise InputError(f"method {info.name!r} has no differentiable mode; methods with one: {', '.join(DIFFERENTIABLE)}")
    return DIFFERENTIABLE[info.name]
