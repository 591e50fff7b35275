"""Robustness: how much an explanation changes when the input is perturbed slightly.

Every metric here re-explains perturbed copies of the inputs. Shared conventions:

- ``explainer`` is any callable ``(inputs [M, C, H, W], targets [M]) -> maps [M, h, w]`` bound to
  ``model``; every copy is explained for the same target class as its original image.
- Each image gets `n_samples` perturbed copies. The ``B * n_samples`` copies are ordered
  image-major (all copies of image 0, then of image 1, ...), built and explained in chunks of at
  most `max_batch` rows, so memory is bounded by `max_batch`, not by ``B * n_samples``.
- Perturbations come from ``perturb_func(rows [M, C, H, W], generator) -> perturbed rows``, called
  once per chunk with one generator seeded by `seed` (`xaibench.seeding.make_generator`).
  `uniform_noise` and `gaussian_noise` draw with ``torch.rand``, so on CPU the draws do not depend
  on `max_batch`. Perturbed images are not clipped unless stated (Captum and Quantus do not clip).
- Norms are Frobenius norms over the whole map (or image, all channels), in float64.
- ``keep_prediction=True`` ignores copies whose predicted class (argmax of the model's output)
  differs from the original's; a score is NaN (with a reason) when no copy is left.
- Per-copy values are returned in ``extras["samples"]`` [B, n_samples] (NaN for ignored copies).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_maps, check_targets, perturbed_inputs
from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, register_metric
from xaibench.metrics.infidelity import gaussian_perturbation
from xaibench.passes import Passes
from xaibench.seeding import make_generator

PerturbFn = Callable[[Tensor, torch.Generator], Tensor]
"""``perturb(rows [M, C, H, W], generator) -> perturbed rows [M, C, H, W]``."""

RowStat = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]
"""``stat(x, x_perturbed, e, e_perturbed, logits, logits_perturbed) -> Tensor [M]`` (float64)."""

_YEH = (
    "Yeh, Hsieh, Suggala, Inouye & Ravikumar (2019). On the (in)fidelity and sensitivity of explanations. "
    "NeurIPS.",
)
_AGARWAL = (
    "Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik & Lakkaraju (2022). Rethinking stability for "
    "attribution-based explanations. arXiv:2203.06877.",
)


def uniform_noise(radius: float) -> PerturbFn:
    """``x + u`` with ``u`` uniform in the L-infinity ball of `radius` (Captum's default perturbation)."""
    if not radius > 0:
        raise InputError(f"radius must be > 0, got {radius}")

    def perturb(rows: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(rows.shape, generator=generator, device=rows.device, dtype=rows.dtype)
        return rows + (2 * u - 1) * radius

    return perturb


def gaussian_noise(std: float, clip: bool = False) -> PerturbFn:
    """``x + n`` with ``n ~ N(0, std^2)`` i.i.d. per pixel and channel; `clip` clamps to [0, 1].
    ``std=0`` leaves the rows unchanged (no draws)."""
    if not std >= 0:
        raise InputError(f"the noise standard deviation must be >= 0, got {std}")
    draw = gaussian_perturbation(std) if std > 0 else None

    def perturb(rows: Tensor, generator: torch.Generator) -> Tensor:
        noisy = rows.clone() if draw is None else draw(rows, generator)[1]  # rows - noise; the noise is symmetric
        return noisy.clamp(0, 1) if clip else noisy

    return perturb


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def explain_chunked(explainer: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor,
                    max_batch: int, *, finite: bool = True) -> Tensor:
    """Explain `inputs` in chunks of at most `max_batch`; returns detached maps [B, h, w].

    The explainer's maps are checked exactly as `attributions` are (`check_maps`: floating point,
    [B, h, w], one per image, finite). ``finite=False`` lets NaN / Inf through (maps of a
    randomised model may overflow; the randomisation checks score them NaN with a reason).
    """
    out = []
    for start in range(0, inputs.shape[0], max_batch):
        chunk = inputs[start:start + max_batch]
        maps = explainer(chunk, targets[start:start + max_batch])
        check_maps(maps, chunk.shape[0], name="the explainer's maps", finite=finite)
        out.append(maps.detach())
    return torch.cat(out)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).double()


def perturbed_rows(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    stat: RowStat,
    *,
    n_samples: int,
    perturb: PerturbFn,
    seed: int | torch.Generator | None,
    max_batch: int,
    need_logits: bool = False,
    keep_prediction: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Explain `n_samples` perturbed copies of every image and reduce each copy with `stat`.

    Returns (values [B, n_samples] float64 with NaN for ignored copies, original maps [B, h, w],
    targets [B]).
    """
    check_images(inputs, model=model)
    _positive(n_samples, "n_samples")
    _positive(max_batch, "max_batch")
    logits = torch.cat([_logits(model, inputs[s:s + max_batch]) for s in range(0, inputs.shape[0], max_batch)])
    t = check_targets(targets, inputs.shape[0], logits.shape[1]).to(inputs.device)
    maps = explain_chunked(explainer, inputs, t, max_batch)
    gen = make_generator(seed, inputs.device)
    n_rows = inputs.shape[0] * n_samples
    values = torch.empty(n_rows, dtype=torch.float64, device=inputs.device)
    for start in range(0, n_rows, max_batch):
        stop = min(start + max_batch, n_rows)
        image = torch.arange(start, stop, device=inputs.device) // n_samples
        x = inputs[image]
        xp = perturb(x, gen)
        if xp.shape != x.shape:
            raise InputError(f"perturb_func must return rows shaped {tuple(x.shape)}, got {tuple(xp.shape)}")
        with perturbed_inputs():  # noisy copies of checked images may leave the pixel range
            ep = explain_chunked(explainer, xp, t[image], max_batch)
        if ep.shape != (stop - start, *maps.shape[1:]):
            raise InputError(f"maps of perturbed inputs have shape {tuple(ep.shape[1:])}, expected "
                             f"{tuple(maps.shape[1:])}")
        hp = _logits(model, xp) if need_logits or keep_prediction else None
        row = stat(x.double(), xp.double(), maps[image].double(), ep.double(), logits[image], hp)
        if keep_prediction:
            assert hp is not None
            row = torch.where(hp.argmax(1) == logits[image].argmax(1), row, torch.nan)
        values[start:stop] = row
    return values.view(-1, n_samples), maps, t


def _norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1)


def _reduce(values: Tensor, how: str, undefined: Tensor, reason: str) -> tuple[Tensor, tuple[str | None, ...] | None]:
    """Max or mean over the defined copies; NaN where no copy is defined or `undefined` is set."""
    none_left = torch.isnan(values).all(dim=1)
    if how == "max":
        score = torch.where(none_left, torch.nan, values.nan_to_num(nan=-torch.inf).amax(dim=1))
    else:
        score = values.nanmean(dim=1)
    score = torch.where(undefined, torch.nan, score)
    reasons = [
        reason if u else ("no perturbed copy is usable (each changed the predicted class or equalled the input)" if n else None)
        for u, n in zip(undefined.tolist(), none_left.tolist())
    ]
    return score.float(), tuple(reasons) if any(reasons) else None


def _sensitivity(how: str, model: nn.Module, inputs: Tensor, targets: Tensor,
                 explainer: Callable[[Tensor, Tensor], Tensor], radius: float, n_samples: int, normalize: bool,
                 perturb_func: PerturbFn | None, keep_prediction: bool, max_batch: int,
                 seed: int | torch.Generator | None, info: MetricInfo) -> MetricResult:
    perturb = uniform_noise(radius) if perturb_func is None else perturb_func

    def stat(x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, h: Tensor | None, hp: Tensor | None) -> Tensor:
        return _norm(ep - e)

    values, maps, _ = perturbed_rows(model, inputs, targets, explainer, stat, n_samples=n_samples, perturb=perturb,
                                     seed=seed, max_batch=max_batch, keep_prediction=keep_prediction)
    undefined = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    if normalize:
        ref = _norm(maps.double())
        undefined = ref == 0
        values = values / torch.where(undefined, 1.0, ref)[:, None]
    scores, reasons = _reduce(values, how, undefined, "the explanation is all zeros, so a relative change is undefined")
    params = dict(radius=radius if perturb_func is None else None, n_samples=n_samples, normalize=normalize,
                  perturb_func="uniform" if perturb_func is None else getattr(perturb_func, "__name__", "custom"),
                  keep_prediction=keep_prediction, max_batch=max_batch, seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=info, params=params, reasons=reasons, extras={"samples": values.float()})


_SENS_REQUIRES = ("model", "inputs", "targets", "explainer")


@register_metric(MetricInfo(
    name="max_sensitivity", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(forwards="n_samples + 1", explanations="n_samples + 1"), references=_YEH,
    description="Largest change ||e(x + u) - e(x)|| of the explanation over n_samples perturbations u uniform in an "
    "L-inf ball of radius `radius`, divided by ||e(x)|| when normalize=True (as Captum's sensitivity_max and "
    "Quantus' MaxSensitivity).",
))
def max_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    normalize: bool = True,
    perturb_func: PerturbFn | None = None,
    keep_prediction: bool = False,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Max-sensitivity (Yeh et al. 2019): ``max_u ||e(x + u) - e(x)||_F [/ ||e(x)||_F]``. Lower is better.

    Defaults are Captum's ``sensitivity_max`` (radius 0.02, 10 samples, normalised). An all-zero
    original map with ``normalize=True`` gives NaN (Captum divides by 1 instead).
    """
    return _sensitivity("max", model, inputs, targets, explainer, radius, n_samples, normalize, perturb_func,
                        keep_prediction, max_batch, seed, info_of(max_sensitivity))


@register_metric(MetricInfo(
    name="avg_sensitivity", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(forwards="n_samples + 1", explanations="n_samples + 1"), references=_YEH,
    description="Mean change ||e(x + u) - e(x)|| of the explanation over n_samples perturbations u uniform in an "
    "L-inf ball of radius `radius`, divided by ||e(x)|| when normalize=True (as Quantus' AvgSensitivity).",
))
def avg_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    normalize: bool = True,
    perturb_func: PerturbFn | None = None,
    keep_prediction: bool = False,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Average sensitivity (Yeh et al. 2019): the mean instead of the max of `max_sensitivity`. Lower is better."""
    return _sensitivity("mean", model, inputs, targets, explainer, radius, n_samples, normalize, perturb_func,
                        keep_prediction, max_batch, seed, info_of(avg_sensitivity))


@register_metric(MetricInfo(
    name="local_lipschitz", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(forwards="n_samples + 1", explanations="n_samples + 1"),
    references=("Alvarez-Melis & Jaakkola (2018). On the robustness of interpretability methods. "
                "arXiv:1806.08049.",),
    description="Local Lipschitz estimate: max over n_samples Gaussian perturbations x' of "
    "||e(x') - e(x)||_2 / ||x' - x||_2 (as Quantus' LocalLipschitzEstimate).",
))
def local_lipschitz(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    std: float = 0.1,
    n_samples: int = 10,
    normalise: bool = False,
    perturb_func: PerturbFn | None = None,
    keep_prediction: bool = False,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Local Lipschitz estimate ``max_x' ||e(x') - e(x)||_2 / ||x' - x||_2``. Lower is better.

    Default perturbation: Gaussian noise of `std` (0.1, Quantus' default), not clipped.
    normalise: divide every map (original and perturbed) by its max |value| first (all-zero maps
    unchanged), Quantus' default ``normalise_by_max``; off by default (maps as the explainer
    returns them). A copy equal to its original gives NaN for that copy.
    """
    perturb = gaussian_noise(std) if perturb_func is None else perturb_func

    def by_max(m: Tensor) -> Tensor:
        peak = m.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
        return m / torch.where(peak > 0, peak, 1.0) if normalise else m

    def stat(x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, h: Tensor | None, hp: Tensor | None) -> Tensor:
        dx = _norm(xp - x)
        return _norm(by_max(ep) - by_max(e)) / torch.where(dx > 0, dx, torch.nan)

    values, _, _ = perturbed_rows(model, inputs, targets, explainer, stat, n_samples=n_samples, perturb=perturb,
                                  seed=seed, max_batch=max_batch, keep_prediction=keep_prediction)
    undefined = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    scores, reasons = _reduce(values, "max", undefined, "")
    params = dict(std=std if perturb_func is None else None, n_samples=n_samples, normalise=normalise,
                  perturb_func="gaussian" if perturb_func is None else getattr(perturb_func, "__name__", "custom"),
                  keep_prediction=keep_prediction, max_batch=max_batch, seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=info_of(local_lipschitz), params=params,
                        reasons=reasons, extras={"samples": values.float()})


def _relative(e: Tensor, ep: Tensor, eps_min: float) -> Tensor:
    """``||(e - e') / e||_F`` with zero entries of `e` replaced by `eps_min` (Agarwal et al.; Quantus)."""
    return _norm((e - ep) / (e + (e == 0) * eps_min))


def _stability(kind: str, model: nn.Module, inputs: Tensor, targets: Tensor,
               explainer: Callable[[Tensor, Tensor], Tensor], radius: float, n_samples: int, eps_min: float,
               perturb_func: PerturbFn | None, keep_prediction: bool, max_batch: int,
               seed: int | torch.Generator | None, info: MetricInfo) -> MetricResult:
    perturb = uniform_noise(radius) if perturb_func is None else perturb_func
    if not eps_min > 0:
        raise InputError(f"eps_min must be > 0, got {eps_min}")

    def stat(x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, h: Tensor | None, hp: Tensor | None) -> Tensor:
        if kind == "input":
            denom = _norm((x - xp) / (x + (x == 0) * eps_min))
        else:
            assert h is not None and hp is not None
            denom = _norm(h - hp)
        return _relative(e, ep, eps_min) / denom.clamp_min(eps_min)

    values, _, _ = perturbed_rows(model, inputs, targets, explainer, stat, n_samples=n_samples, perturb=perturb,
                                  seed=seed, max_batch=max_batch, need_logits=kind == "output",
                                  keep_prediction=keep_prediction)
    undefined = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    scores, reasons = _reduce(values, "max", undefined, "")
    params = dict(radius=radius if perturb_func is None else None, n_samples=n_samples, eps_min=eps_min,
                  perturb_func="uniform" if perturb_func is None else getattr(perturb_func, "__name__", "custom"),
                  keep_prediction=keep_prediction, max_batch=max_batch, seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=info, params=params, reasons=reasons, extras={"samples": values.float()})


@register_metric(MetricInfo(
    name="relative_input_stability", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(forwards="n_samples + 1", explanations="n_samples + 1"), references=_AGARWAL,
    description="Relative input stability: max over perturbations x' that keep the predicted class of "
    "||(e - e')/e|| / max(||(x - x')/x||, eps_min) (as Quantus' RelativeInputStability).",
))
def relative_input_stability(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    eps_min: float = 1e-6,
    perturb_func: PerturbFn | None = None,
    keep_prediction: bool = True,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """RIS (Agarwal et al. 2022). Relative changes divide element-wise; zero entries divide by `eps_min`.

    Lower is better. Copies that change the predicted class are left out of the max (the paper's
    feasible set); the score is NaN only when every copy changed it.
    """
    return _stability("input", model, inputs, targets, explainer, radius, n_samples, eps_min, perturb_func,
                      keep_prediction, max_batch, seed, info_of(relative_input_stability))


@register_metric(MetricInfo(
    name="relative_output_stability", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(forwards="n_samples + 1", explanations="n_samples + 1"), references=_AGARWAL,
    description="Relative output stability: max over perturbations x' that keep the predicted class of "
    "||(e - e')/e|| / max(||h(x) - h(x')||, eps_min) with h the logits (as Quantus' RelativeOutputStability).",
))
def relative_output_stability(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    eps_min: float = 1e-6,
    perturb_func: PerturbFn | None = None,
    keep_prediction: bool = True,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """ROS (Agarwal et al. 2022): as `relative_input_stability` with the L2 change of the model's
    output vector (all classes, as returned by the model) in the denominator. Lower is better."""
    return _stability("output", model, inputs, targets, explainer, radius, n_samples, eps_min, perturb_func,
                      keep_prediction, max_batch, seed, info_of(relative_output_stability))


def minmax01(maps: Tensor) -> Tensor:
    """Per-map ``(m - min) / (max(m - min) + 1e-8)``: the [0, 1] heatmaps autotimm's explainers return."""
    flat = maps.flatten(1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (shifted.amax(dim=1, keepdim=True) + 1e-8)).view_as(maps)


@register_metric(MetricInfo(
    name="noise_stability", category="robustness", higher_is_better=False, range=(0.0, float("inf")),
    requires=_SENS_REQUIRES, cost=Passes(explanations="n_samples + 1"),
    references=("autotimm.interpretation.ExplanationMetrics.sensitivity_n",),
    description="Mean absolute change of the min-max normalised map (in [0, 1]; normalise=False: the map as "
    "returned) under Gaussian noise of std noise_level, averaged over n_samples noisy copies; autotimm's "
    "'sensitivity_n' score.",
))
def noise_stability(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    noise_level: float = 0.15,
    n_samples: int = 50,
    clip: bool = False,
    normalise: bool = True,
    perturb_func: PerturbFn | None = None,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """autotimm's noise sensitivity: ``mean_n mean_pixels |m(x + n) - m(x)|`` with ``m`` min-max normalised.

    Defaults are autotimm's (``noise_level=0.15``, 50 samples, noisy images not clipped as in
    autotimm 0.7.x; ``clip=True`` clamps them to [0, 1] as earlier autotimm versions did).
    ``normalise=True`` normalises the maps as autotimm's explainers do (`minmax01`);
    ``normalise=False`` compares them as the explainer returns them (the autotimm facade, whose
    explainers normalise themselves). ``noise_level=0`` explains unchanged copies (0 for a
    deterministic explainer). Lower is better. extras: ``std`` (population std over the copies),
    ``max_change`` and the per-copy ``samples``.
    """
    perturb = gaussian_noise(noise_level, clip=clip) if perturb_func is None else perturb_func
    scale = minmax01 if normalise else (lambda m: m)

    def stat(x: Tensor, xp: Tensor, e: Tensor, ep: Tensor, h: Tensor | None, hp: Tensor | None) -> Tensor:
        return (scale(ep) - scale(e)).abs().flatten(1).mean(dim=1)

    values, _, _ = perturbed_rows(model, inputs, targets, explainer, stat, n_samples=n_samples, perturb=perturb,
                                  seed=seed, max_batch=max_batch)
    params = dict(noise_level=noise_level if perturb_func is None else None, n_samples=n_samples, clip=clip,
                  normalise=normalise,
                  perturb_func="gaussian" if perturb_func is None else getattr(perturb_func, "__name__", "custom"),
                  max_batch=max_batch, seed=seed if isinstance(seed, int) else None)
    extras = {"std": values.std(dim=1, correction=0).float(), "max_change": values.amax(dim=1).float(),
              "samples": values.float()}
    return MetricResult(scores=values.mean(dim=1).float(), info=info_of(noise_stability),
                        params=params, extras=extras)
