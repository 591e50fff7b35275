"""Learnable metrics: the five metrics of the HARMONY study in a form a model can be trained on.

A `LearnableMetric` takes a differentiable explainer (``explain(inputs, targets) -> maps [B, H, W]``,
e.g. ``xaibench.explainer("gradcam", model, differentiable=True, sign="positive")``) and gives
``evaluate(...) -> Tensor [B]``; ``higher_is_better`` says the direction, ``perturb_input`` builds
the perturbed images of the masked-similarity objectives. Evaluated without gradient each equals
xaibench's ordinary metric (tested side by side):

- ``focus`` (`Focus`): HARMONY's variant by default. A batch of B images (B divisible by 4) gives
  B/4 mosaics: image i, B/4 + i, B/2 + i, 3B/4 + i downsampled x0.5 (bilinear) into the top-left,
  top-right, bottom-left, bottom-right tiles. The mosaic is explained for its predicted class; the
  positive tile is the one whose full-size image gives the highest softmax probability of that
  class. Focus = positive relevance in that tile / all positive relevance = ordinary ``focus``
  with that tile as the mask. ``variant="original"``: inputs are mosaics of `build_mosaics` with
  their target-tile masks (two tiles of the target class), the ordinary ``focus``. Differentiable.
- ``relevance_mass_accuracy`` (`RMA`): positive relevance inside the mask / all positive
  relevance (ordinary ``relevance_mass_accuracy``). Differentiable.
- ``road`` (`ROAD`): ``perturb_input`` removes the top u of the pixels (u in [0.05, 0.95] per
  image) with ROAD's noisy linear imputation; ``evaluate`` is 1 - ordinary ROAD MoRF accuracy over
  HARMONY's percentages 5, 14, ..., 86 (the share of removals that change the prediction; higher
  is better). Not differentiable (the training objective is the masked probability ratio).
- ``irof`` (`IROF`): ``perturb_input`` fills the top u of the SLIC superpixels (ranked by mean
  attribution) with the image's per-channel mean; ``evaluate`` is the ordinary IROF score over the
  number of superpixels (``extras["normalised"]``). Not differentiable.
- ``relative_input_stability`` (`IS`): max over `n_samples` noisy copies (uniform in the
  L-inf ball of `radius`) that keep the predicted class of ``||(e - e')/e|| / max(||(x - x')/x||,
  eps_min)``; lower is better; differentiable (ordinary ``relative_input_stability``).

Undefined scores (no positive relevance, every copy changed the class) are NaN, as in the ordinary
metrics; `finite_mean` averages the defined ones for a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.checks import perturbed_inputs
from xaibench.data.mosaics import tile_masks
from xaibench.errors import InputError
from xaibench.metrics.irof import irof
from xaibench.metrics.road import road
from xaibench.metrics.robustness import uniform_noise
from xaibench.perturbation.engine import rank_features, superpixel_segments
from xaibench.perturbation.imputation import noisy_linear_impute
from xaibench.registry import Registry
from xaibench.seeding import make_generator

Explain = Callable[[Tensor, Tensor], Tensor]
LEARNABLE: Registry[type[LearnableMetric]] = Registry("learnable metric")
HARMONY_PERCENTAGES = tuple(range(5, 95, 9))  # ROAD's evaluation in HARMONY: 5, 14, ..., 86


def positive_share(maps: Tensor, masks: Tensor) -> Tensor:
    """Differentiable ``sum(max(m, 0) in mask) / sum(max(m, 0))`` per map [B, H, W]; NaN without
    positive relevance (the gradient of defined entries is unaffected)."""
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(1)
    share = (pos * masks.flatten(1).to(pos.dtype)).sum(1) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, share, torch.full_like(share, torch.nan))


def finite_mean(scores: Tensor) -> Tensor:
    """Mean of the defined (finite) scores; 0 with a graph when none is defined."""
    keep = torch.isfinite(scores)
    return scores[keep].mean() if keep.any() else scores.nan_to_num(0.0).sum() * 0


def rows_where(fraction: Tensor, ranks: Tensor, num_features: Tensor) -> Tensor:
    """Removed [B, H, W]: features ranked below ``int(num_features * fraction)`` per image."""
    k = (num_features.double() * fraction.double()).long()
    return ranks < k[:, None, None]


class LearnableMetric:
    """Base: ``evaluate`` -> Tensor [B]; ``perturb_input`` for masked-similarity objectives."""

    name: ClassVar[str] = ""  # the ordinary metric's registry name
    higher_is_better: ClassVar[bool] = True
    needs_masks: ClassVar[bool] = False
    objective: ClassVar[str] = "score"  # "score" (1 - metric), "masked" (probability ratio), "stability"

    def perturb_input(self, inputs: Tensor, maps: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no input perturbation")

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor, explain: Explain,
                 masks: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def fractions(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """HARMONY's removal fractions u ~ U[0.05, 0.95], one per image."""
        return torch.rand(n, generator=generator, device=device) * 0.9 + 0.05


def _register(*names: str):
    def deco(cls):
        for n in names:
            LEARNABLE.add(n, cls)
        return cls

    return deco


@_register("focus")
class Focus(LearnableMetric):
    name = "focus"

    def __init__(self, variant: str = "harmony") -> None:
        if variant not in ("harmony", "original"):
            raise InputError(f"focus variant must be 'harmony' or 'original', got {variant!r}")
        self.variant = variant

    def mosaics(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mosaics [B/4, C, H, W], their predicted classes [B/4], positive-tile masks [B/4, H, W])."""
        b, _, h, w = inputs.shape
        if b % 4 or b == 0:
            raise InputError(f"HARMONY's Focus builds mosaics of four images: the batch size must be divisible by 4, got {b}")
        if h % 2 or w % 2:
            raise InputError(f"HARMONY's Focus needs even image sizes, got {h}x{w}")
        m = b // 4
        small = F.interpolate(inputs, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        tiles = small.view(4, m, *small.shape[1:])
        mosaic = torch.cat([torch.cat([tiles[0], tiles[1]], dim=3), torch.cat([tiles[2], tiles[3]], dim=3)], dim=2)
        with torch.no_grad():
            predicted = model(mosaic).argmax(1)
            probs = model(inputs).softmax(1).view(4, m, -1)
            tile_probs = probs.gather(2, predicted.view(1, m, 1).expand(4, m, 1))[..., 0].T  # [m, 4]
        positive = F.one_hot(tile_probs.argmax(1), 4)
        return mosaic, predicted, tile_masks(positive, (h, w))

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None):
        if self.variant == "original":
            if masks is None:
                raise InputError("focus variant 'original' needs the mosaics' target-tile masks (Mosaics.masks)")
            return positive_share(explain(inputs, targets), masks)
        mosaic, predicted, positive = self.mosaics(model, inputs)
        return positive_share(explain(mosaic, predicted), positive)


@_register("relevance_mass_accuracy", "rma")
class RMA(LearnableMetric):
    name = "relevance_mass_accuracy"
    needs_masks = True

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None):
        if masks is None:
            raise InputError("relevance_mass_accuracy needs masks (the data set's object masks)")
        return positive_share(explain(inputs, targets), masks)


@_register("road")
class ROAD(LearnableMetric):
    name = "road"
    objective = "masked"

    def __init__(self, percentages: Sequence[float] = HARMONY_PERCENTAGES, noise: float = 0.01) -> None:
        self.percentages, self.noise = tuple(percentages), noise

    def perturb_input(self, inputs, maps, generator, fraction: Tensor | None = None):
        """The top `fraction` [B] (default: HARMONY's draw) of the pixels removed, noisy linear imputation."""
        u = self.fractions(inputs.shape[0], generator, inputs.device) if fraction is None else fraction
        ranking = rank_features(maps.detach(), tuple(inputs.shape[-2:]), order="morf", resample="upsample")
        removed = rows_where(u, ranking.ranks, ranking.num_features)
        return noisy_linear_impute(inputs.detach(), removed, noise=self.noise, generator=generator)

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None):
        maps = explain(inputs, targets).detach()
        result = road(model, inputs, maps, targets, percentages=self.percentages, noise=self.noise, lerf=False,
                      seed=generator)
        return 1 - result.scores


@_register("irof")
class IROF(LearnableMetric):
    name = "irof"
    objective = "masked"

    def __init__(self, n_segments: int = 100, compactness: float = 10.0) -> None:
        self.n_segments, self.compactness = n_segments, compactness

    def perturb_input(self, inputs, maps, generator, fraction: Tensor | None = None):
        """The top `fraction` [B] of the SLIC superpixels (mean attribution) set to the per-channel image mean."""
        u = self.fractions(inputs.shape[0], generator, inputs.device) if fraction is None else fraction
        segments = superpixel_segments(inputs, n_segments=self.n_segments, compactness=self.compactness)
        ranking = rank_features(maps.detach(), tuple(inputs.shape[-2:]), granularity="superpixel", segments=segments,
                                resample="upsample")
        removed = rows_where(u, ranking.ranks, ranking.num_features)[:, None]
        x = inputs.detach()
        return torch.where(removed, x.mean(dim=(2, 3), keepdim=True), x)

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None):
        maps = explain(inputs, targets).detach()
        return irof(model, inputs, maps, targets, n_segments=self.n_segments, compactness=self.compactness).extras["normalised"]


@_register("relative_input_stability", "is", "ris")
class IS(LearnableMetric):
    name = "relative_input_stability"
    higher_is_better = False
    objective = "stability"

    def __init__(self, radius: float = 0.02, n_samples: int = 10, eps_min: float = 1e-6) -> None:
        self.radius, self.n_samples, self.eps_min = radius, n_samples, eps_min
        self._noise = uniform_noise(radius)

    def perturb_input(self, inputs, maps=None, generator=None):
        return self._noise(inputs.detach(), make_generator(generator, inputs.device))

    def ratio(self, x: Tensor, xp: Tensor, e: Tensor, ep: Tensor) -> Tensor:
        """``||(e - e')/e|| / max(||(x - x')/x||, eps_min)`` per row (zero entries divide by eps_min)."""
        eps = self.eps_min
        change = ((e - ep) / (e + (e == 0) * eps)).flatten(1).norm(dim=1)
        moved = ((x - xp) / (x + (x == 0) * eps)).flatten(1).norm(dim=1)
        return change / moved.clamp_min(eps)

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None):
        n = self.n_samples
        rows = inputs.repeat_interleave(n, dim=0)
        noisy = self.perturb_input(rows, generator=generator)
        t = targets.repeat_interleave(n)
        with torch.no_grad():
            keep = model(noisy).argmax(1) == model(rows).argmax(1)
        with perturbed_inputs():  # noisy copies may leave the pixel range
            noisy_maps = explain(noisy, t)
        values = self.ratio(rows, noisy, explain(inputs, targets).repeat_interleave(n, dim=0), noisy_maps)
        values = torch.where(keep, values, torch.full_like(values, -torch.inf)).view(-1, n).amax(1)
        return torch.where(torch.isfinite(values), values, torch.full_like(values, torch.nan))


def learnable_metric(name: str, **params) -> LearnableMetric:
    """The learnable metric registered as `name` (close names suggested for unknown ones)."""
    return LEARNABLE.get(name)(**params)
