"""Class activation maps: Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM and Guided Grad-CAM.

A batched torch implementation: a forward hook captures the target layer's activations A
[B, K, h, w] and `torch.autograd.grad` gives dS/dA for the target logits S (summed over the
batch; with the model in eval mode each image's score depends on its own row only). Vision
transformer tokens [B, P + h*w, D] are reshaped to [B, D, h, w] after dropping the P prefix
(class / register) tokens.

Target layer: by default the last module whose output is a 4-D feature map with a spatial size
above 1x1 (outermost module when several return the same tensor: ``layer4`` of a ResNet); for timm
VisionTransformer models the first norm of the last block (``blocks.-1.norm1``: after the final
block only the class token reaches the head, so patch tokens there have zero gradient).
Override with ``layer="layer4"``: a name from the network's ``named_modules()``; for models from
`load_model` the names of the network inside its normalisation wrapper (no ``net.`` prefix).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from torch import Tensor, nn

from xaibench.config import suggest
from xaibench.errors import InputError
from xaibench.explainers.base import (
    Explainer,
    network,
    no_inplace_relu,
    record_forward,
    register,
    upsample,
    warn_without_relu,
)
from xaibench.passes import Passes


def vit_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the first timm-style vision transformer inside `model`, if any."""
    for name, m in network(model).named_modules():
        if hasattr(m, "blocks") and hasattr(m, "patch_embed") and hasattr(m, "num_prefix_tokens"):
            return name, m
    return None


def find_layer(model: nn.Module, inputs: Tensor) -> str:
    """Name of the default CAM layer of `model` for images like `inputs` (see the module doc)."""
    vit = vit_module(model)
    if vit is not None:
        prefix = f"{vit[0]}." if vit[0] else ""
        return f"{prefix}blocks.{len(vit[1].blocks) - 1}.norm1"
    seen = record_forward(model, inputs[:1], lambda m: True)
    maps = [(n, o) for n, o in seen if isinstance(o, Tensor) and o.ndim == 4]
    spatial = [(n, o) for n, o in maps if o.shape[2] * o.shape[3] > 1] or maps
    if not spatial:
        raise InputError("no module of the model returns a 4-D feature map; pass layer=<module name>")
    name, out = spatial[-1]
    # Containers finish after their children: keep the outermost module returning the same tensor.
    for n, o in reversed(seen):
        if o is out and n.count(".") < name.count("."):
            name = n
    return name


def token_grid(tokens: Tensor, size: tuple[int, int], what: str) -> Tensor:
    """Patch tokens [B, n, D] as [B, D, h, w], h * w = n with h / w the aspect ratio of `size` (H, W)."""
    n = tokens.shape[1]
    h = max(1, round((n * size[0] / size[1]) ** 0.5))
    w = n // h
    if h * w != n:
        raise InputError(f"cannot arrange the {n} tokens of {what} on a grid")
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The layer called `name` in the user's network (`network`); an unknown name lists the closest."""
    modules = dict(network(model).named_modules())
    if name not in modules or not name:
        raise InputError(f"the model has no layer {name!r}.{suggest(name, [n for n in modules if n], n=5, cutoff=0.4)}")
    return modules[name]


class CAMExplainer(Explainer):
    """Shared machinery: layer lookup, activation capture, token reshaping, upsampling."""

    PARAMS = {
        "layer": "name of the explained module (None: found automatically, see docs)",
        "upsample": "upsample bilinearly to the input size (False: the layer's native resolution)",
    }

    def __init__(self, model: nn.Module, *, layer: str | None = None, upsample: bool = True,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        if layer is not None:
            get_module(model, layer)
        self.layer = layer
        self.upsample = bool(upsample)
        vit = vit_module(model)
        self._prefix_tokens = int(vit[1].num_prefix_tokens) if vit is not None else 0
        self.params.update(layer=layer, upsample=upsample)

    def _module(self, inputs: Tensor) -> nn.Module:
        if self.layer is None:
            self.layer = find_layer(self.model, inputs)
        return get_module(self.model, self.layer)

    def _spatial(self, out: Tensor, inputs: Tensor) -> Tensor:
        """Layer output as [B, K, h, w]: 4-D maps unchanged, tokens [B, T, D] reshaped."""
        if out.ndim == 4:
            return out
        if out.ndim != 3:
            raise InputError(f"layer {self.layer!r} returns shape {tuple(out.shape)}; need [B,K,h,w] or [B,T,D]")
        return token_grid(out[:, self._prefix_tokens:], (inputs.shape[2], inputs.shape[3]), f"layer {self.layer!r}")

    def _forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, raw layer output) of one forward pass."""
        store: list[Tensor] = []
        hook = self._module(inputs).register_forward_hook(lambda _m, _i, out: store.append(out))
        try:
            logits = self.model(inputs)
        finally:
            hook.remove()
        if not store or not isinstance(store[0], Tensor):
            raise InputError(f"layer {self.layer!r} did not return a tensor in the forward pass")
        return logits, store[0]

    def _activations_and_grads(self, inputs: Tensor, targets: Tensor, create_graph: bool = False
                               ) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
            logits, out = self._forward(x)
            score = logits.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(score, out, create_graph=create_graph)
        return self._spatial(out, inputs), self._spatial(grad, inputs)

    def _resize(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        return upsample(maps, size) if self.upsample else maps


def relu_cam(weights: Tensor, acts: Tensor) -> Tensor:
    """ReLU(sum_k w_k A_k) as [B, 1, h, w]; `weights` [B, K] or elementwise [B, K, h, w]."""
    if weights.ndim == 2:
        weights = weights[:, :, None, None]
    return F.relu((weights * acts).sum(dim=1, keepdim=True))


@register("gradcam", cost=Passes(forwards="1", backwards="1"), resolution="layer")
class GradCAMExplainer(CAMExplainer):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean_hw(dS/dA_k) A_k) at the target layer.

    Raw attribution [B, 1, h, w] (non-negative). With ``create_graph=True`` the map keeps its
    autograd graph (to the model parameters and the input) so losses on it can be trained through.
    """

    PARAMS = {"create_graph": "keep the graph of the map (differentiable Grad-CAM)"}

    def __init__(self, model: nn.Module, *, layer: str | None = None, upsample: bool = True,
                 create_graph: bool = False, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, layer=layer, upsample=upsample, reduce=reduce, sign=sign, max_batch=max_batch)
        self.create_graph = bool(create_graph)
        self.differentiable = self.create_graph
        self.params.update(create_graph=create_graph)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets, self.create_graph)
        return relu_cam(grads.mean(dim=(2, 3)), acts)


@register("gradcam_plus_plus", cost=Passes(forwards="1", backwards="1"), resolution="layer", aliases=("gradcam++",))
class GradCAMPlusPlusExplainer(CAMExplainer):
    """Grad-CAM++ (Chattopadhay et al. 2018) with the closed-form alpha of an exponential score.

    alpha = g^2 / (2 g^2 + sum_hw(A) g^3) (1 where the denominator is 0), w_k = sum_hw alpha ReLU(g),
    map = ReLU(sum_k w_k A_k); g = dS/dA for the target logit S. Raw attribution [B, 1, h, w].
    """

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets)
        g2 = grads.pow(2)
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(grads)).sum(dim=(2, 3))
        return relu_cam(weights, acts)


@register("layercam", cost=Passes(forwards="1", backwards="1"), resolution="layer")
class LayerCAMExplainer(CAMExplainer):
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(dS/dA_k) * A_k), weights per position."""

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets)
        return relu_cam(F.relu(grads), acts)


@register("scorecam", cost=Passes(forwards="1 + K", note="K = channels of the layer, e.g. 512 for ResNet-18 layer4"),
          resolution="layer")
class ScoreCAMExplainer(CAMExplainer):
    """Score-CAM (Wang et al. 2020): channel weights are the target softmax probability of the input
    masked by each upsampled, min-max normalised activation channel; map = ReLU(sum_k w_k A_k).

    The B*K masks and masked inputs are built and scored in chunks of `max_batch` rows. Channels that are constant
    over the image give a zero mask. No gradients. Raw attribution [B, 1, h, w].
    """

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            _, out = self._forward(inputs)
            acts = self._spatial(out, inputs)
            b, k = acts.shape[:2]
            rows_img = torch.arange(b, device=inputs.device).repeat_interleave(k)
            rows_ch = torch.arange(k, device=inputs.device).repeat(b)
            weights = torch.empty(b * k, device=inputs.device, dtype=acts.dtype)
            for start in range(0, b * k, self.max_batch):
                i = rows_img[start:start + self.max_batch]
                c = rows_ch[start:start + self.max_batch]
                masks = F.interpolate(acts[i, c][:, None], size=inputs.shape[2:], mode="bilinear",
                                      align_corners=False)
                lo = masks.amin(dim=(2, 3), keepdim=True)
                span = masks.amax(dim=(2, 3), keepdim=True) - lo
                masks = torch.where(span > 0, (masks - lo) / torch.where(span > 0, span, 1), 0)
                weights[start:start + self.max_batch] = self.model(inputs[i] * masks).softmax(1).gather(
                    1, targets[i][:, None]).squeeze(1)
            return relu_cam(weights.view(b, k), acts)


@register("guided_gradcam", cost=Passes(forwards="2", backwards="2"), resolution="input")
class GuidedGradCAMExplainer(CAMExplainer):
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop times the Grad-CAM map upsampled
    bilinearly to the input. Raw attribution [B, C, H, W]; default map: max over channels of |a|.
    """

    default_reduce = "max_abs"

    def __init__(self, model: nn.Module, *, layer: str | None = None, reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, layer=layer, upsample=True, reduce=reduce, sign=sign, max_batch=max_batch)
        del self.params["upsample"]
        warn_without_relu(self, model, None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets)
        cam = upsample(relu_cam(grads.mean(dim=(2, 3)), acts)[:, 0], inputs.shape[2:])
        with no_inplace_relu(self.model):
            guided = GuidedBackprop(self.model).attribute(inputs, target=targets)
        return guided * cam[:, None]

    def _resize(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        return maps

