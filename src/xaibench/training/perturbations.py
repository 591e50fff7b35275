"""Training-time perturbations of Gomez & Mouchère: faithfulness (FP) and adversarial (AP) batches.

FP: the explanation of an image is the model's own last feature map, ``|sum over channels|`` at
feature resolution (`feature_saliency`). Each image gets one of the four perturbations of the
faithfulness metrics, drawn uniformly (`FP_KINDS`):

- ``dauc``: the top-k map cells removed cumulatively onto black, k uniform in [0, h*w) (the image
  row k of DAUC / deletion correlation, ``steps = h*w``, cells ranked at native resolution);
- ``iauc``: the top-k cells revealed on the blurred image (``box_blur``, kernel 11: IAUC / insertion
  correlation);
- ``ad``: the salient part kept with the metric's soft mask (``x * m``, black elsewhere: AD);
- ``add``: the salient part removed (``x * (1 - m)``: ADD).

Every image is built by the perturbation engine's own code (`xaibench.perturbation.images`), so the
model trains on exactly what the metrics show it.

AP: `pgd_attack`, L-inf PGD in pixel space [0, 1] (no random start), batched: ``steps`` signed
gradient steps of size ``step`` on the cross-entropy, projected onto the ``eps`` ball and [0, 1].
The model runs in eval mode during the attack (no batch-norm statistics updated, no dropout), as
torchattacks does; no parameter gradient is accumulated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.perturbation.engine import Ranking, rank_features
from xaibench.perturbation.images import soft_mask, step_images

FP_KINDS = ("dauc", "iauc", "ad", "add")
IAUC_BASELINE = "box_blur"  # the default baseline of insertion_correlation (IAUC)


def feature_saliency(features: Tensor) -> Tensor:
    """``|sum over channels|`` [B, h, w] of feature maps [B, K, h, w], detached."""
    if features.ndim != 4:
        raise InputError(f"feature maps must have shape [B, K, h, w], got {tuple(features.shape)}")
    return features.detach().float().sum(1).abs()


def _rows(ranking: Ranking, idx: Tensor) -> Ranking:
    return Ranking(ranking.ranks[idx], ranking.num_features[idx], ranking.sorted_scores[idx])


def fp_images(inputs: Tensor, saliency: Tensor, kinds: Tensor, k: Tensor) -> Tensor:
    """Perturbed images [B, C, H, W] of `inputs` given saliency maps [B, h, w], the perturbation of
    each image (`kinds` [B], indices into `FP_KINDS`) and the cell count `k` [B] for dauc / iauc."""
    x = inputs.detach()
    size = tuple(x.shape[-2:])
    ranking = rank_features(saliency, size, order="morf", resample="rank_native")
    out = torch.empty_like(x)
    kinds = kinds.to(x.device)
    k = k.to(x.device)
    for code, kind in enumerate(FP_KINDS):
        idx = (kinds == code).nonzero().flatten()
        if idx.numel() == 0:
            continue
        if kind in ("dauc", "iauc"):
            mode, baseline = ("delete", "black") if kind == "dauc" else ("insert", IAUC_BASELINE)
            out[idx] = step_images(x[idx], _rows(ranking, idx), k[idx], mode=mode, baseline=baseline)
        else:
            m = soft_mask(saliency[idx], size)
            out[idx] = x[idx] * (m if kind == "ad" else 1.0 - m)
    return out


def draw_fp(saliency: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(kinds [B], k [B]) drawn on the CPU from `generator`: a uniform perturbation per image and k
    uniform in [0, h*w)."""
    b, h, w = saliency.shape
    kinds = torch.randint(len(FP_KINDS), (b,), generator=generator)
    k = torch.randint(h * w, (b,), generator=generator)
    return kinds, k


def pgd_attack(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    eps: float = 1 / 255,
    step: float = 2 / 255,
    steps: int = 4,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> Tensor:
    """Adversarial images [B, C, H, W] in [0, 1] with ``|x_adv - x| <= eps`` (see module doc)."""
    if eps <= 0 or step <= 0 or steps < 1:
        raise InputError(f"PGD needs eps > 0, step > 0 and steps >= 1, got {eps}, {step}, {steps}")
    x = inputs.detach()
    delta = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(model(x + delta), targets)
                (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    finally:
        model.train(was_training)
    return (x + delta).detach()
