"""Infidelity (Yeh et al. 2019), with the definition and scaling of ``captum.metrics.infidelity``.

For perturbations ``I`` of an image ``x`` (``x_I = x - I``), with ``dot = sum(attr * I)`` over all
pixels and channels and ``diff = f(x) - f(x - I)``:

- ``normalize=False``: ``infidelity = mean_I (dot - diff)^2``
- ``normalize=True``: ``beta = sum(dot * diff) / sum(dot^2)`` (``beta = sum(dot * diff)`` when the
  denominator is 0, as Captum's ``safe_div``), ``infidelity = mean_I (beta * dot - diff)^2``;
  invariant to the scale of the attributions.

Conventions: maps [B, h, w] are broadcast over channels (and over the pixel block of a feature
for low-resolution maps), so ``dot`` treats a pixel's attribution as applying to each of its
channels; ``f`` is the `output` of class `targets` (logit by default, as Captum's forward function
returns logits). Lower is better; 0 means the attributions predict every output change exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from xaibench.checks import check_positive_int
from xaibench.errors import InputError
from xaibench.metrics._subset_engine import block_size, to_pixels, validate
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, register_metric
from xaibench.passes import Passes
from xaibench.perturbation.forward import class_scores
from xaibench.seeding import make_generator

PerturbFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]
"""``perturb(inputs [M, C, H, W], generator) -> (perturbation I, perturbed inputs x - I)``."""


def gaussian_perturbation(std: float) -> PerturbFn:
    """Perturbation ``I ~ N(0, std^2)`` i.i.d. per pixel and channel, perturbed input ``x - I``.

    The normal draws are made from ``torch.rand`` (Box-Muller), so on CPU they do not depend on
    how the rows are chunked. Perturbed images are not clipped to [0, 1] (clipping would break
    ``x_I = x - I``).
    """
    if not std > 0:
        raise InputError(f"std must be > 0, got {std}")

    def perturb(inputs: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        u = torch.rand((inputs.shape[0], 2, *inputs.shape[1:]), generator=generator, device=inputs.device)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u lies in (0, 1]
        noise = (std * radius * torch.cos(2.0 * math.pi * u[:, 1])).to(inputs.dtype)
        return noise, inputs - noise

    return perturb


@register_metric(
    MetricInfo(
        name="infidelity",
        category="faithfulness",
        higher_is_better=False,
        range=(0.0, float("inf")),
        requires=("model", "inputs", "attributions", "targets"),
        cost=Passes(forwards="n_perturb_samples + 1"),
        references=(
            "Yeh, Hsieh, Suggala, Inouye & Ravikumar (2019). On the (in)fidelity and sensitivity of "
            "explanations. NeurIPS.",
        ),
        description="Expected squared error between attribution-weighted perturbations sum(attr * I) and the "
        "output change f(x) - f(x - I), over n_perturb_samples perturbations (Gaussian noise by default); "
        "normalize=True rescales the attributions optimally first, as Captum.",
    )
)
def infidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    perturb_func: PerturbFn | None = None,
    std: float = 0.05,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    output: str = "logit",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Infidelity of maps [B, h, w] for `inputs` [B, C, H, W], `targets` [B].

    perturb_func: see `PerturbFn`; called on chunks of at most `max_batch` rows ordered
    image-major (the `n_perturb_samples` copies of image 0, then of image 1, ...), as Captum's
    ``repeat_interleave`` expansion. Default: `gaussian_perturbation(std)`.
    """
    t, _ = validate(model, inputs, attributions, targets, output, max_batch)
    check_positive_int(n_perturb_samples, "n_perturb_samples")
    perturb = gaussian_perturbation(std) if perturb_func is None else perturb_func
    block = block_size(inputs, attributions)
    attr = attributions.detach().to(inputs.device, inputs.dtype)
    gen = make_generator(seed, inputs.device)
    k = n_perturb_samples
    n_rows = inputs.shape[0] * k
    base = class_scores(model, inputs, t, output=output, max_batch=max_batch)
    dots = torch.empty(n_rows, dtype=torch.float64, device=inputs.device)
    diffs = torch.empty_like(dots)
    for start in range(0, n_rows, max_batch):
        stop = min(start + max_batch, n_rows)
        image = torch.arange(start, stop, device=inputs.device) // k
        perturbation, perturbed = perturb(inputs[image], gen)
        if perturbation.shape != inputs[image].shape or perturbed.shape != perturbation.shape:
            raise InputError(
                f"perturb_func must return (perturbation, perturbed) shaped {tuple(inputs[image].shape)}, got "
                f"{tuple(perturbation.shape)} and {tuple(perturbed.shape)}"
            )
        dots[start:stop] = (to_pixels(attr[image], block) * perturbation).flatten(1).sum(dim=1).double()
        scores = class_scores(model, perturbed, t[image], output=output, max_batch=max_batch)
        diffs[start:stop] = (base[image] - scores).double()
    dots, diffs = dots.view(-1, k), diffs.view(-1, k)
    if normalize:
        s_aa, s_ad, s_dd = dots.pow(2).sum(1), (dots * diffs).sum(1), diffs.pow(2).sum(1)
        beta = s_ad / torch.where(s_aa != 0, s_aa, 1.0)
        values = (beta * beta * s_aa - 2 * beta * s_ad + s_dd) / k
    else:
        values = (dots - diffs).pow(2).mean(dim=1)
    params = dict(perturb_func="gaussian" if perturb_func is None else getattr(perturb_func, "__name__", "custom"),
                  std=std, n_perturb_samples=k, normalize=normalize, output=output, max_batch=max_batch,
                  seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=values.float(), info=info_of(infidelity), params=params)
