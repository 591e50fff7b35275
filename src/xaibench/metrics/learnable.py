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

Inputs are checked as the ordinary metrics check them (`xaibench.checks`): images [B, C, H, W]
in the model's pixel range (in [0, 1] for ``perturb_input`` without a model), at least one;
targets one class index per image; masks [B, H, W] like the images; the explainer's maps one
finite map [H, W] per image at the input resolution; removal fractions in [0, 1]; counts
(``n_samples``, ``n_segments``) >= 1, ``radius`` / ``eps_min`` / ``compactness`` > 0, ROAD's
percentages in (0, 100] and ``noise`` >= 0.

``preset="harmony"`` (every class; the fine-tuner passes its config's preset) computes what
HARMONY's ``harmony_finetune/metric.py`` computes instead (docs/harmony.md lists each constant):

- Focus and RMA add HARMONY's 1e-9 to the denominator (RMA: to every pixel, so ``1e-9 x H x W``;
  ``IoULearnableMetric``), so a map without positive relevance scores 0, not NaN;
- ROAD's ``perturb_input`` removes ``floor(H x W x p / 100)`` pixels with p the evaluation
  percentage at index ``floor(u x len(percentages))`` (``ROADLearnableMetric.mask``; the original
  hard-codes 224 x 224 pixels, here the image's own size);
- IS (``ISLearnableMetric``): 20 copies with Gaussian noise (sigma 0.05) in the model's input space
  (inside xaibench's normalisation wrapper, where HARMONY's images live), every copy kept; maps
  divided by their maximum absolute value plus 1e-9; ratio ``sum|(e' - e) / (e + 1e-9)| /
  (sum|(x' - x) / (x + 1e-9)| + 1e-9)``, the maximum over the copies. The training term
  (`IS.objective`, HARMONY's ``AttributionSimilarityLearnableMetricTrainer``) divides the maps by
  their L1 norm plus 1e-9 and has no 1e-9 outside the input sum.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.checks import (
    DEFAULT_RANGE,
    check_count,
    check_images,
    check_maps,
    check_masks,
    check_number,
    check_targets,
    perturbed_inputs,
)
from xaibench.data.mosaics import tile_masks
from xaibench.errors import InputError
from xaibench.metrics.irof import irof
from xaibench.metrics.road import road
from xaibench.metrics.robustness import uniform_noise
from xaibench.models import Normalized
from xaibench.perturbation.engine import rank_features, superpixel_segments
from xaibench.perturbation.imputation import noisy_linear_impute
from xaibench.registry import Registry
from xaibench.seeding import make_generator

Explain = Callable[[Tensor, Tensor], Tensor]
LEARNABLE: Registry[type[LearnableMetric]] = Registry("learnable metric")
HARMONY_PERCENTAGES = tuple(range(5, 95, 9))  # ROAD's evaluation in HARMONY: 5, 14, ..., 86
PRESETS = ("xaibench", "harmony")
HARMONY_EPS = 1e-9  # every denominator of harmony_finetune/metric.py, trainer.py and utils.py
HARMONY_IS_SAMPLES, HARMONY_IS_SIGMA = 20, 0.05  # metric.py, ISLearnableMetric: nr_samples, randn * 0.05


def positive_share(maps: Tensor, masks: Tensor, eps: float | None = None) -> Tensor:
    """Differentiable ``sum(max(m, 0) in mask) / sum(max(m, 0))`` per map [B, H, W]; NaN without
    positive relevance (the gradient of defined entries is unaffected). With `eps` the denominator
    is ``sum(max(m, 0)) + eps`` (HARMONY's), and a map without positive relevance scores 0."""
    check_maps(maps, name="maps")
    check_masks(masks, maps.shape)
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(1)
    inside = (pos * masks.flatten(1).to(pos.dtype)).sum(1)
    if eps is not None:
        return inside / (total + eps)
    share = inside / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, share, torch.full_like(share, torch.nan))


def model_space(model: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor | float]:
    """(`inputs` as the network sees them, the per-channel scale from pixels to that space): inside
    xaibench's normalisation wrapper (`Normalized`) ``(x - mean) / std`` and ``1 / std``, else `inputs` and 1
    (images [B, C, H, W]; noisy copies may leave the pixel range, so it is not checked)."""
    check_images(inputs)
    if isinstance(model, Normalized):
        return (inputs - model.mean) / model.std, 1 / model.std
    return inputs, 1.0


def max_abs_normalise(maps: Tensor, eps: float) -> Tensor:
    """HARMONY's ``backprop_normalize_to_one``: each map divided by its maximum absolute value plus `eps`."""
    _check_normalise(maps, eps)
    return maps / (maps.flatten(1).abs().amax(1) + eps).view(-1, *([1] * (maps.ndim - 1)))


def l1_normalise_eps(maps: Tensor, eps: float) -> Tensor:
    """HARMONY's ``backprop_normalize``: each map divided by its L1 norm plus `eps`."""
    _check_normalise(maps, eps)
    return maps / (maps.flatten(1).abs().sum(1) + eps).view(-1, *([1] * (maps.ndim - 1)))


def _check_normalise(maps: Tensor, eps: float) -> None:
    if not isinstance(maps, Tensor) or maps.ndim < 2 or not maps.is_floating_point() or maps.shape[0] == 0:
        raise InputError(f"maps must be a non-empty float tensor [B, ...], got {getattr(maps, 'shape', type(maps).__name__)}")
    check_number(eps, "eps", 0.0, float("inf"), open_low=True)


def finite_mean(scores: Tensor) -> Tensor:
    """Mean of the defined (finite) scores; 0 with a graph when none is defined."""
    if not isinstance(scores, Tensor) or scores.ndim != 1 or not scores.is_floating_point():
        raise InputError(f"scores must be a float tensor [B], got {getattr(scores, 'shape', type(scores).__name__)}")
    keep = torch.isfinite(scores)
    return scores[keep].mean() if keep.any() else scores.nan_to_num(0.0).sum() * 0


def rows_where(fraction: Tensor, ranks: Tensor, num_features: Tensor) -> Tensor:
    """Removed [B, H, W]: features ranked below ``int(num_features * fraction)`` per image."""
    if ranks.ndim != 3 or fraction.shape != (ranks.shape[0],) or num_features.shape != (ranks.shape[0],):
        raise InputError(f"need fraction [B], ranks [B, H, W] and num_features [B], got {tuple(fraction.shape)}, "
                         f"{tuple(ranks.shape)} and {tuple(num_features.shape)}")
    check_number(fraction, "fraction")
    k = (num_features.double() * fraction.double()).long()
    return ranks < k[:, None, None]


class LearnableMetric:
    """Base: ``evaluate`` -> Tensor [B]; ``perturb_input`` for masked-similarity objectives.

    ``evaluate(model, inputs, targets, explain, masks, generator, reference)``: maps explain
    `targets`; ROAD and IROF compare the predictions / probabilities of `reference` (default: `targets`).
    """

    name: ClassVar[str] = ""  # the ordinary metric's registry name
    higher_is_better: ClassVar[bool] = True
    needs_masks: ClassVar[bool] = False
    objective: ClassVar[str] = "score"  # "score" (1 - metric), "masked" (probability ratio), "stability"

    def __init__(self, preset: str = "xaibench") -> None:
        if preset not in PRESETS:
            raise InputError(f"learnable metric preset must be one of {PRESETS}, got {preset!r}")
        self.preset = preset

    def perturb_input(self, inputs: Tensor, maps: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no input perturbation")

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor, explain: Explain,
                 masks: Tensor | None = None, generator: torch.Generator | None = None,
                 reference: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate")

    @staticmethod
    def fractions(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """HARMONY's removal fractions u ~ U[0.05, 0.95], one per image."""
        check_count(n, "n")
        _check_generator(generator)
        return torch.rand(n, generator=generator, device=device) * 0.9 + 0.05


def check_batch(model: nn.Module, inputs: Tensor, targets: Tensor | None = None, masks: Tensor | None = None) -> None:
    """The arguments of ``evaluate`` (see the module doc); targets and masks when given."""
    check_images(inputs, model=model)
    if targets is not None:
        with torch.no_grad():
            classes = int(model(inputs[:1]).shape[1])
        check_targets(targets, inputs.shape[0], classes, broadcast=False)
    if masks is not None:
        check_masks(masks, (inputs.shape[0], *inputs.shape[-2:]))


def explained(explain: Explain, inputs: Tensor, targets: Tensor) -> Tensor:
    """``explain(inputs, targets)``, checked: one finite map [H, W] per image at the input resolution."""
    maps = explain(inputs, targets)
    check_maps(maps, batch=inputs.shape[0], name="the explainer's maps")
    if maps.shape[-2:] != inputs.shape[-2:]:
        raise InputError(f"the explainer's maps are {tuple(maps.shape[-2:])} for images {tuple(inputs.shape[-2:])}: "
                         "learnable metrics need maps at the input resolution (an explainer with upsample=True)")
    return maps


def _check_perturbation(inputs: Tensor, maps: Tensor, fraction: Tensor | None) -> None:
    check_images(inputs, value_range=DEFAULT_RANGE)
    check_maps(maps.detach(), batch=inputs.shape[0], name="maps")
    if fraction is not None:
        if not isinstance(fraction, Tensor) or fraction.shape != (inputs.shape[0],):
            raise InputError(f"fraction must be a tensor [B] with one removal fraction per image (B = {inputs.shape[0]})")
        check_number(fraction, "fraction")


def _check_generator(generator: torch.Generator | None) -> None:
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                         f"{type(generator).__name__}")


def _register(*names: str):
    def deco(cls):
        for n in names:
            LEARNABLE.add(n, cls)
        return cls

    return deco


@_register("focus")
class Focus(LearnableMetric):
    name = "focus"

    def __init__(self, variant: str = "harmony", preset: str = "xaibench") -> None:
        super().__init__(preset)
        if variant not in ("harmony", "original"):
            raise InputError(f"focus variant must be 'harmony' or 'original', got {variant!r}")
        self.variant = variant

    def mosaics(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mosaics [B/4, C, H, W], their predicted classes [B/4], positive-tile masks [B/4, H, W])."""
        b, _, h, w = inputs.shape
        check_images(inputs, model=model)
        if b % 4:
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

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None, reference=None):
        eps = HARMONY_EPS if self.preset == "harmony" else None  # FocusLearnableMetric: / (sum + 1e-9)
        if self.variant == "original":
            if masks is None:
                raise InputError("focus variant 'original' needs the mosaics' target-tile masks (Mosaics.masks)")
            check_batch(model, inputs, targets, masks)
            return positive_share(explained(explain, inputs, targets), masks, eps)
        mosaic, predicted, positive = self.mosaics(model, inputs)
        return positive_share(explained(explain, mosaic, predicted), positive, eps)


@_register("relevance_mass_accuracy", "rma")
class RMA(LearnableMetric):
    name = "relevance_mass_accuracy"
    needs_masks = True

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None, reference=None):
        if masks is None:
            raise InputError("relevance_mass_accuracy needs masks (the data set's object masks)")
        check_batch(model, inputs, targets, masks)
        maps = explained(explain, inputs, targets)
        # IoULearnableMetric: sum(r * m) / sum(r + 1e-9), the 1e-9 added to every pixel
        eps = HARMONY_EPS * maps[0].numel() if self.preset == "harmony" else None
        return positive_share(maps, masks, eps)


@_register("road")
class ROAD(LearnableMetric):
    name = "road"
    objective = "masked"

    def __init__(self, percentages: Sequence[float] = HARMONY_PERCENTAGES, noise: float = 0.01,
                 preset: str = "xaibench") -> None:
        super().__init__(preset)
        percentages = tuple(percentages)
        if not percentages:
            raise InputError("percentages is empty: pass at least one removal percentage in (0, 100]")
        for p in percentages:
            check_number(p, "percentages", 0.0, 100.0, open_low=True)
        check_number(noise, "noise", 0.0, float("inf"))
        self.percentages, self.noise = percentages, noise

    def perturb_input(self, inputs, maps, generator, fraction: Tensor | None = None):
        """The top `fraction` [B] (default: HARMONY's draw) of the pixels removed, noisy linear
        imputation; preset ``harmony``: ``floor(H x W x p / 100)`` pixels, p the evaluation
        percentage at index ``floor(fraction x len(percentages))`` (``ROADLearnableMetric.mask``)."""
        _check_perturbation(inputs, maps, fraction)
        u = self.fractions(inputs.shape[0], generator, inputs.device) if fraction is None else fraction
        ranking = rank_features(maps.detach(), tuple(inputs.shape[-2:]), order="morf", resample="upsample")
        if self.preset == "harmony":
            pct = torch.tensor(self.percentages, dtype=torch.float64, device=inputs.device)
            p = pct[(u.double() * len(pct)).long().clamp(max=len(pct) - 1)]
            removed = ranking.ranks < torch.floor(ranking.num_features.double() * p / 100).long()[:, None, None]
        else:
            removed = rows_where(u, ranking.ranks, ranking.num_features)
        return noisy_linear_impute(inputs.detach(), removed, noise=self.noise, generator=generator)

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None, reference=None):
        check_batch(model, inputs, targets)
        maps = explained(explain, inputs, targets).detach()
        result = road(model, inputs, maps, targets if reference is None else reference,
                      percentages=self.percentages, noise=self.noise, lerf=False, seed=generator)
        return 1 - result.scores


@_register("irof")
class IROF(LearnableMetric):
    name = "irof"
    objective = "masked"

    def __init__(self, n_segments: int = 100, compactness: float = 10.0, preset: str = "xaibench") -> None:
        super().__init__(preset)
        check_number(compactness, "compactness", 0.0, float("inf"), open_low=True)
        self.n_segments, self.compactness = check_count(n_segments, "n_segments"), compactness

    def perturb_input(self, inputs, maps, generator, fraction: Tensor | None = None):
        """The top `fraction` [B] of the SLIC superpixels (mean attribution) set to the per-channel image mean."""
        _check_perturbation(inputs, maps, fraction)
        u = self.fractions(inputs.shape[0], generator, inputs.device) if fraction is None else fraction
        segments = superpixel_segments(inputs, n_segments=self.n_segments, compactness=self.compactness)
        ranking = rank_features(maps.detach(), tuple(inputs.shape[-2:]), granularity="superpixel", segments=segments,
                                resample="upsample")
        removed = rows_where(u, ranking.ranks, ranking.num_features)[:, None]
        x = inputs.detach()
        return torch.where(removed, x.mean(dim=(2, 3), keepdim=True), x)

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None, reference=None):
        check_batch(model, inputs, targets)
        maps = explained(explain, inputs, targets).detach()
        return irof(model, inputs, maps, targets if reference is None else reference, n_segments=self.n_segments,
                    compactness=self.compactness).extras["normalised"]


@_register("relative_input_stability", "is", "ris")
class IS(LearnableMetric):
    name = "relative_input_stability"
    higher_is_better = False
    objective = "stability"

    def __init__(self, radius: float = 0.02, n_samples: int | None = None, eps_min: float = 1e-6,
                 preset: str = "xaibench") -> None:
        super().__init__(preset)
        harmony = preset == "harmony"
        check_number(radius, "radius", 0.0, float("inf"), open_low=True)
        check_number(eps_min, "eps_min", 0.0, float("inf"), open_low=True)
        if n_samples is not None:
            check_count(n_samples, "n_samples")
        self.radius, self.eps_min = radius, eps_min
        self.n_samples = n_samples if n_samples is not None else HARMONY_IS_SAMPLES if harmony else 10
        self._noise = uniform_noise(radius)

    def perturb_input(self, inputs, maps=None, generator=None, model: nn.Module | None = None):
        """A noisy copy of each row: uniform in the L-inf ball of `radius`; preset ``harmony``: Gaussian
        noise of sigma 0.05 in the model's input space (`model_space`)."""
        check_images(inputs, model=model, value_range=DEFAULT_RANGE)
        gen = make_generator(generator, inputs.device)
        if self.preset == "xaibench":
            return self._noise(inputs.detach(), gen)
        scale = 1.0 if model is None else model_space(model, inputs)[1]
        noise = torch.randn(inputs.shape, generator=gen, device=inputs.device, dtype=inputs.dtype)
        return inputs.detach() + HARMONY_IS_SIGMA * noise / scale

    def ratio(self, x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, model: nn.Module | None = None) -> Tensor:
        """The evaluated ratio per row: ``||(e - e')/e|| / max(||(x - x')/x||, eps_min)`` (zero
        entries divide by eps_min); preset ``harmony``: ISLearnableMetric's (module doc)."""
        _check_pairs(x, xp, e, ep)
        if self.preset == "harmony":
            e, ep = max_abs_normalise(e, HARMONY_EPS), max_abs_normalise(ep, HARMONY_EPS)
            return _relative(e, ep).sum(1) / (_relative(*self._space(model, x, xp)).sum(1) + HARMONY_EPS)
        eps = self.eps_min
        change = ((e - ep) / (e + (e == 0) * eps)).flatten(1).norm(dim=1)
        moved = ((x - xp) / (x + (x == 0) * eps)).flatten(1).norm(dim=1)
        return change / moved.clamp_min(eps)

    def objective(self, x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, model: nn.Module | None = None) -> Tensor:
        """The training term per row: `ratio`; preset ``harmony``: the trainer's, maps L1-normalised
        (``AttributionSimilarityLearnableMetricTrainer.train``)."""
        _check_pairs(x, xp, e, ep)
        if self.preset == "xaibench":
            return self.ratio(x, xp, e, ep)
        e, ep = l1_normalise_eps(e, HARMONY_EPS), l1_normalise_eps(ep, HARMONY_EPS)
        return _relative(e, ep).sum(1) / _relative(*self._space(model, x, xp)).sum(1)

    @staticmethod
    def _space(model: nn.Module | None, x: Tensor, xp: Tensor) -> tuple[Tensor, Tensor]:
        return (x, xp) if model is None else (model_space(model, x)[0], model_space(model, xp)[0])

    def evaluate(self, model, inputs, targets, explain, masks=None, generator=None, reference=None):
        check_batch(model, inputs, targets)
        n = self.n_samples
        rows = inputs.repeat_interleave(n, dim=0)
        noisy = self.perturb_input(rows, generator=generator, model=model)
        t = targets.repeat_interleave(n)
        with torch.no_grad():
            keep = model(noisy).argmax(1) == model(rows).argmax(1)
        if self.preset == "harmony":  # ISLearnableMetric keeps every copy
            keep = torch.ones_like(keep)
        with perturbed_inputs():  # noisy copies may leave the pixel range
            noisy_maps = explained(explain, noisy, t)
        values = self.ratio(rows, noisy, explained(explain, inputs, targets).repeat_interleave(n, dim=0), noisy_maps,
                            model)
        values = torch.where(keep, values, torch.full_like(values, -torch.inf)).view(-1, n).amax(1)
        return torch.where(torch.isfinite(values), values, torch.full_like(values, torch.nan))


def _check_pairs(x: Tensor, xp: Tensor, e: Tensor, ep: Tensor) -> None:
    if not (x.shape == xp.shape and e.shape == ep.shape and x.shape[0] == e.shape[0]):
        raise InputError(f"need x, x' of one shape and e, e' of one shape with the same batch, got "
                         f"{tuple(x.shape)}, {tuple(xp.shape)}, {tuple(e.shape)}, {tuple(ep.shape)}")


def _relative(before: Tensor, after: Tensor) -> Tensor:
    """HARMONY's relative change ``|(after - before) / (before + 1e-9)|`` flattened per row [B, N]."""
    return ((after - before) / (before + HARMONY_EPS)).abs().flatten(1)


def learnable_metric(name: str, **params) -> LearnableMetric:
    """The learnable metric registered as `name` (close names suggested for unknown ones)."""
    cls = LEARNABLE.get(name)
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        takes = ", ".join(inspect.signature(cls).parameters) or "no parameters"
        raise InputError(f"learnable metric {name!r}: {err}; it takes {takes}") from None
    return cls(**params)
