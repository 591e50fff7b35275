"""The rest of pytorch-grad-cam's CAM family: HiResCAM, XGrad-CAM, Eigen-CAM, Ablation-CAM and FullGrad.

Same machinery as `xaibench.explainers.cam` (target layer, token reshaping, bilinear upsampling);
A = activations [K, h, w] of the layer, g = dS/dA for the target logit S. Every map is
``ReLU(...)`` as in pytorch-grad-cam, without its min-max scaling (``scale_cam_image``): its maps are
``minmax(upsample(map))`` of these (bilinear upsampling is linear, so scaling before or after it
gives the same map).

- HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)``, element-wise.
- XGrad-CAM (Fu et al. 2020): ``w_k = sum_hw(g_k A_k) / sum_hw(A_k)`` (0 where ``sum_hw(A_k) = 0``),
  ``ReLU(sum_k w_k A_k)``.
- Eigen-CAM (Muhammad & Yeasin 2020): the projection of the centred activations [h*w, K] on their
  first right singular vector, ``ReLU`` of it. Class-agnostic. The singular vector's sign is not
  defined by the SVD: it is chosen so that the projection correlates positively with the channel
  sum of the activations (pytorch-grad-cam keeps whatever sign LAPACK returns).
- Ablation-CAM (Desai & Ramaswamy 2020): ``w_k = (S - S_k) / S`` with S_k the target logit when
  channel k of the layer is set to 0 (for token layers: feature k of every token),
  ``ReLU(sum_k w_k A_k)``. The B*K ablated forwards run in chunks of `max_batch` rows.
- FullGrad (Srinivas & Fleuret 2019): ``psi(|x * dS/dx|) + sum_layers sum_c psi(|b_c * dS/dz_c|)``
  over every ``Conv2d`` with a bias and every ``BatchNorm2d`` (bias ``beta - mu gamma / sqrt(var + eps)``),
  z the layer's output; ``psi`` min-max scales each channel of each image to [0, 1] (``(m - min) /
  (max - min + 1e-7)``, as pytorch-grad-cam) before the bilinear upsampling. Convolutional networks
  only: a vision transformer's biases act on tokens (InputError).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.explainers.base import Explainer, no_inplace_relu, register, upsample
from xaibench.explainers.cam import CAMExplainer, relu_cam, vit_module
from xaibench.passes import Passes


@register("hirescam", cost=Passes(forwards="1", backwards="1"), resolution="layer")
class HiResCAMExplainer(CAMExplainer):
    """HiResCAM (Draelos & Carin 2020): ReLU(sum_k dS/dA_k * A_k), gradients kept per position."""

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets)
        return relu_cam(grads, acts)


@register("xgradcam", cost=Passes(forwards="1", backwards="1"), resolution="layer")
class XGradCAMExplainer(CAMExplainer):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_hw(g_k A_k) / sum_hw(A_k), map ReLU(sum_k w_k A_k)."""

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        acts, grads = self._activations_and_grads(inputs, targets)
        total = acts.sum(dim=(2, 3))
        weights = (grads * acts).sum(dim=(2, 3)) / torch.where(total != 0, total, torch.ones_like(total))
        return relu_cam(weights, acts)


def first_component(acts: Tensor) -> Tensor:
    """Projection [B, h, w] of the centred activations [B, K, h, w] (positions as samples) on their
    first principal axis, signed to correlate positively with the channel sum."""
    b, k, h, w = acts.shape
    x = acts.flatten(2).transpose(1, 2)  # [B, hw, K]
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ vh[:, 0, :, None])[..., 0]  # [B, hw]
    total = acts.sum(dim=1).flatten(1)
    sign = torch.where((proj * (total - total.mean(1, keepdim=True))).sum(1) < 0, -1.0, 1.0)
    return (proj * sign[:, None].to(proj.dtype)).view(b, h, w)


@register("eigencam", cost=Passes(forwards="1"), resolution="layer")
class EigenCAMExplainer(CAMExplainer):
    """Eigen-CAM (Muhammad & Yeasin 2020): ReLU of the activations' first principal component.

    Class-agnostic (the target is ignored); sign oriented towards the channel sum. No gradients.
    """

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            _, out = self._forward(inputs)
            return F.relu(first_component(self._spatial(out, inputs).float()))[:, None]


@register("ablationcam", cost=Passes(forwards="1 + K", note="K = channels of the layer, e.g. 512 for ResNet-18 layer4"),
          resolution="layer")
class AblationCAMExplainer(CAMExplainer):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (S - S_k) / S, the relative drop of the target logit
    when channel k is zeroed; map ReLU(sum_k w_k A_k). B*K ablated forwards in chunks of `max_batch`."""

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            logits, out = self._forward(inputs)
            acts = self._spatial(out, inputs)
            b, k = acts.shape[:2]
            score = logits.gather(1, targets[:, None])[:, 0]
            rows_img = torch.arange(b, device=inputs.device).repeat_interleave(k)
            rows_ch = torch.arange(k, device=inputs.device).repeat(b)
            ablated = torch.empty(b * k, device=inputs.device, dtype=logits.dtype)
            channel_dim = 1 if out.ndim == 4 else out.ndim - 1
            module = self._module(inputs)
            for start in range(0, b * k, self.max_batch):
                i = rows_img[start:start + self.max_batch]
                keep = torch.ones(len(i), k, device=inputs.device, dtype=out.dtype)
                keep[torch.arange(len(i), device=inputs.device), rows_ch[start:start + self.max_batch]] = 0
                shape = [len(i)] + [1] * (out.ndim - 1)
                shape[channel_dim] = k
                hook = module.register_forward_hook(lambda _m, _i, o, keep=keep.view(shape): o * keep)
                try:
                    ablated[start:start + self.max_batch] = self.model(inputs[i]).gather(1, targets[i][:, None])[:, 0]
                finally:
                    hook.remove()
            weights = (score[:, None] - ablated.view(b, k)) / score[:, None]
            return relu_cam(weights, acts)


def bias_layers(model: nn.Module) -> list[tuple[nn.Module, Tensor]]:
    """(module, effective bias [C]) of every Conv2d with a bias and every BatchNorm2d of `model`."""
    found = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            found.append((m, m.bias.detach()))
        elif isinstance(m, nn.BatchNorm2d):
            weight = m.weight.detach() if m.weight is not None else torch.ones_like(m.running_mean)
            bias = m.bias.detach() if m.bias is not None else torch.zeros_like(m.running_mean)
            found.append((m, bias - m.running_mean * weight / torch.sqrt(m.running_var + m.eps)))
    return found


def _minmax_channels(x: Tensor) -> Tensor:
    """Scale each [h, w] map of [B, C, h, w] to [0, 1]: (x - min) / (max - min + 1e-7)."""
    x = x - x.amin(dim=(2, 3), keepdim=True)
    return x / (x.amax(dim=(2, 3), keepdim=True) + 1e-7)


@register("fullgrad", cost=Passes(forwards="1", backwards="1"), resolution="input", architectures="cnn")
class FullGradExplainer(Explainer):
    """FullGrad (Srinivas & Fleuret 2019): input-gradient and bias-gradient maps, each channel scaled
    to [0, 1] and upsampled, summed. Raw attribution [B, 1, H, W] (non-negative). CNNs only."""

    def __init__(self, model: nn.Module, *, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        if vit_module(model) is not None:
            raise InputError("fullgrad needs spatial bias maps (Conv2d / BatchNorm2d); a vision transformer's "
                             "biases act on tokens: use a CAM or a transformer method ('attention_rollout')")
        self._layers = bias_layers(model)
        if not self._layers:
            raise InputError("fullgrad: the model has no Conv2d with a bias and no BatchNorm2d")

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        outs: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m, _ in self._layers]
        try:
            with no_inplace_relu(self.model), torch.enable_grad():
                x = inputs.detach().requires_grad_(True)
                score = self.model(x).gather(1, targets[:, None]).sum()
                grads = torch.autograd.grad(score, [x, *outs])
        finally:
            for h in hooks:
                h.remove()
        size = (inputs.shape[2], inputs.shape[3])
        total = _minmax_channels((x.detach() * grads[0]).abs()).sum(1)
        for (_, bias), g in zip(self._layers, grads[1:], strict=True):
            total = total + upsample(_minmax_channels((bias[None, :, None, None] * g).abs()).sum(1), size)
        return total[:, None]
