"""Model-independent sanity baselines: seeded uniform noise and the image's edge magnitude."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.explainers.base import Explainer, register
from xaibench.passes import Passes
from xaibench.seeding import make_generator


@register("random", cost=Passes(note="1 forward once, to learn the number of classes"), resolution="input")
class RandomExplainer(Explainer):
    """Uniform noise in [0, 1), drawn from a generator seeded by `seed` (ignores model and image).

    The generator advances with each call: a fresh explainer with the same seed repeats the
    sequence. Raw attribution [B, 1, H, W].
    """

    def __init__(self, model: nn.Module, *, seed: int | torch.Generator | None = 0,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.seed = seed
        self.generator: torch.Generator | None = seed if isinstance(seed, torch.Generator) else None
        self.params.update(seed=seed if isinstance(seed, int) else None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if self.generator is None:
            self.generator = make_generator(self.seed, inputs.device)
        b, _, h, w = inputs.shape
        noise = torch.rand(b, 1, h, w, generator=self.generator, device=self.generator.device)
        return noise.to(inputs.device)


@register("sobel", cost=Passes(note="1 forward once, to learn the number of classes"), resolution="input")
class SobelExplainer(Explainer):
    """Edge magnitude sqrt(Gx^2 + Gy^2) of each channel (3x3 Sobel, replicate padding).

    Ignores model and target. Raw attribution [B, C, H, W] (non-negative); default map: sum over channels.
    """

    def __init__(self, model: nn.Module, *, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        b, c, h, w = inputs.shape
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=inputs.device)
        kernels = torch.stack([gx, gx.T])[:, None].to(inputs.dtype)
        padded = F.pad(inputs.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
        grads = F.conv2d(padded, kernels)
        return grads.pow(2).sum(dim=1).sqrt().reshape(b, c, h, w)
