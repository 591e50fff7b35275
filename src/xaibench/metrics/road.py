"""ROAD: RemOve And Debias (Rong et al., 2022) with noisy linear imputation.

For each percentage p in `percentages`, the ``int(H * W * p / 100)`` most (MoRF) or least
(LeRF) relevant pixels are removed and imputed with ROAD's noisy linear imputation
(`xaibench.perturbation.imputation`: an exact band Cholesky solve per image on CPU for small
images, batched conjugate gradients in torch otherwise; seeded noise of standard deviation
`noise`; ``noise=0`` turns it off). Each percentage is applied to the original
image (not on top of the previous one), as in ROAD and Quantus.

Curves [B, P+1] (MoRF; step 0 = unperturbed) hold ``output`` of the target: ``"correct"``
(default: 1 if the arg-max class is the target, as ROAD's accuracy and Quantus) or a score
(``"softmax"``, ``"logit"``). Score: the mean of the MoRF curve over the P percentages (the
per-image version of Quantus's per-percentage accuracy; lower is better). With ``lerf=True``
(default) also ``extras["lerf"]`` [B, P+1], ``extras["lerf_score"]`` and ``extras["gap"]``
= LeRF score - MoRF score (higher is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, metric_params, register_metric
from xaibench.passes import Passes
from xaibench.perturbation.engine import perturbation_curves, prepare, rank_features
from xaibench.perturbation.imputation import linear_impute
from xaibench.seeding import make_generator

DEFAULT_PERCENTAGES = tuple(range(1, 100, 2))


def _impute(
    x: Tensor, removed: Tensor, base: Tensor, *, noise: float, generator: torch.Generator, tol: float,
    solve_batch: int | None,
) -> Tensor:
    step = solve_batch or (x.shape[0] if x.is_cuda else 8)
    if solve_batch is None and not x.is_cuda:
        # one call: the CPU solver batches its iterative solves by 8 itself, exact ones need no split
        out = linear_impute(x, removed, tol=tol)
    else:
        out = torch.cat([linear_impute(x[i : i + step], removed[i : i + step], tol=tol)
                         for i in range(0, x.shape[0], step)])
    if noise > 0:  # drawn piece by piece of `step` images, as `noisy_linear_impute` on each piece
        eps = torch.cat([torch.randn(out[i : i + step].shape, generator=generator, device=out.device, dtype=out.dtype)
                         for i in range(0, x.shape[0], step)])
        out = torch.where(removed[:, None], out + noise * eps, out)
    return out


@register_metric(
    MetricInfo(
        name="road",
        category="faithfulness",
        higher_is_better=False,
        range=(0.0, 1.0),
        requires=("model", "inputs", "attributions", "targets"),
        cost=Passes(forwards="(len(percentages) + 1) * (2 if lerf else 1)",
                    note="+ one sparse solve per perturbed image"),
        references=(
            "Rong, Leemann, Borisov, Kasneci, Kasneci. A Consistent and Efficient Evaluation Strategy for "
            "Attribution Methods. ICML 2022.",
        ),
        description="Accuracy after removing MoRF (and LeRF) pixels with noisy linear imputation.",
        ranks_map=True,
    )
)
def road(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    noise: float = 0.01,
    lerf: bool = True,
    output: str = "correct",
    resample: str = "upsample",
    tol: float = 1e-6,
    max_batch: int = 64,
    solve_batch: int | None = None,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """ROAD MoRF score (lower is better), LeRF curve and gap in extras; see the module doc.

    `solve_batch`: images per imputation call within a chunk of `max_batch` (None: 8 on CPU,
    where the iterative solves' small working sets stay in cache, the whole chunk on CUDA); the
    noise is drawn call by call, so it depends on `max_batch` and `solve_batch`.
    """
    params = metric_params(locals()) | {"percentages": [float(p) for p in percentages]}
    pct = torch.as_tensor(list(percentages), dtype=torch.float64)
    if pct.numel() == 0 or (pct < 0).any() or (pct > 100).any():
        raise InputError(f"percentages must be a non-empty list of values in [0, 100], got {list(percentages)}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    x, a, t = prepare(model, inputs, attributions, targets)
    h, w = x.shape[-2:]
    n_pixels = h * w
    counts = torch.cat([torch.zeros(1, dtype=torch.long), (n_pixels * pct / 100).long()])
    counts = counts.to(x.device).expand(x.shape[0], -1)
    gen = make_generator(seed, x.device)
    imputer = partial(_impute, noise=noise, generator=gen, tol=tol, solve_batch=solve_batch)
    curves = {}
    for order in ("morf", "lerf") if lerf else ("morf",):
        ranking = rank_features(a, (h, w), order=order, resample=resample)
        curves[order] = perturbation_curves(
            model, x, t, ranking, counts, mode="delete", cumulative=True, imputer=imputer, output=output,
            max_batch=max_batch, seed=gen,
        )
    morf_score = curves["morf"][:, 1:].double().mean(dim=1).float()
    extras: dict[str, Tensor] = {}
    if lerf:
        lerf_score = curves["lerf"][:, 1:].double().mean(dim=1).float()
        extras = {"lerf": curves["lerf"], "lerf_score": lerf_score, "gap": lerf_score - morf_score}
    return MetricResult(morf_score, info_of(road), params, curves["morf"], extras=extras)
