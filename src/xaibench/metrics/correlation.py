"""Correlation faithfulness metrics: does removing features hurt the model as much as their
attributions say it should?

- `faithfulness_correlation` (Bhatt et al. 2020): random subsets of a fixed size.
- `sensitivity_n` (Ancona et al. 2018): random subsets of several sizes n, one correlation each.
- `faithfulness_estimate` (Alvarez-Melis & Jaakkola 2018): one group of features at a time, in
  descending attribution order (non-cumulative).
- `monotonicity_correlation` (Nguyen & Martinez 2020): Spearman correlation between group
  attributions and the mean squared change of the prediction when the group is perturbed.

Conventions (see `xaibench.metrics._subset_engine`): a feature is one cell of the attribution
map (one pixel with all its channels at input resolution); removed features take the `baseline`
values; the score is the `output` (softmax probability by default) of the class `targets`; signed
attributions are used unless ``abs=True``. A "drop" is ``score(x) - score(x_perturbed)``.
Correlations are computed in float64; a constant vector gives NaN with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.checks import check_positive_int
from xaibench.errors import InputError
from xaibench.metrics._subset_engine import (
    RANDOM_BASELINES,
    block_size,
    check_count,
    perturbed_scores,
    random_subsets,
    ranks_desc,
    validate,
)
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, nan_reasons, register_metric
from xaibench.passes import Passes
from xaibench.stats import pearson_rows, spearman_rows
from xaibench.perturbation.forward import class_scores
from xaibench.seeding import make_generator

_REQUIRES = ("model", "inputs", "attributions", "targets")
_UNDEFINED = "correlation undefined: attribution sums or score changes are constant over the perturbations"


def _prepare(
    model: nn.Module, inputs: Tensor, attributions: Tensor, targets: Tensor, output: str, abs: bool, max_batch: int
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Validate; return (targets, flat attributions [B, F] float on the inputs' device, block)."""
    t, _ = validate(model, inputs, attributions, targets, output, max_batch)
    attr = attributions.detach().to(inputs.device, torch.float32).flatten(1)
    return t, (attr.abs() if abs else attr), block_size(inputs, attributions)  # type: ignore[return-value]


def _result(
    info: MetricInfo, scores: Tensor, reason: str, seed: int | torch.Generator | None, **params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """MetricResult keyword arguments: float scores, NaN reasons and the parameters used."""
    params["baseline_params"] = dict(params["baseline_params"] or {})
    params["seed"] = seed if isinstance(seed, int) else None
    return dict(scores=scores.float(), info=info, reasons=nan_reasons(torch.isnan(scores), reason)), params


def _random_subset_correlations(
    model: nn.Module,
    inputs: Tensor,
    attr: Tensor,
    targets: Tensor,
    block: tuple[int, int],
    map_shape: tuple[int, int],
    sizes: list[int],
    nr_runs: int,
    *,
    baseline: str,
    baseline_params: Mapping[str, Any] | None,
    output: str,
    max_batch: int,
    seed: int | torch.Generator | None,
) -> Tensor:
    """Pearson correlation [B, len(sizes)] between subset attribution sums and score drops.

    Rows are ordered image-major, then size, then run; row keys come from one generator.
    """
    device = inputs.device
    n_sizes, n_feat = len(sizes), attr.shape[1]
    per_image = n_sizes * nr_runs
    n_rows = inputs.shape[0] * per_image
    size_of_row = torch.tensor(sizes, device=device).repeat_interleave(nr_runs)
    gen = make_generator(seed, device)
    sums = torch.empty(n_rows, dtype=torch.float32, device=device)

    def masks(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop, device=device)
        keys = torch.rand(stop - start, n_feat, generator=gen, device=device)
        subset = random_subsets(keys, size_of_row[rows % per_image])
        sums[start:stop] = (attr[rows // per_image] * subset).sum(dim=1)
        return subset.view(-1, *map_shape)

    base = class_scores(model, inputs, targets, output=output, max_batch=max_batch)
    scores = perturbed_scores(
        model, inputs, targets, n_rows, per_image, masks, block,
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch, generator=gen,
    )
    drops = (base.repeat_interleave(per_image) - scores).view(-1, n_sizes, nr_runs)
    return pearson_rows(sums.view(-1, nr_runs), drops.reshape(-1, nr_runs)).view(-1, n_sizes)


@register_metric(
    MetricInfo(
        name="faithfulness_correlation",
        category="faithfulness",
        higher_is_better=True,
        range=(-1.0, 1.0),
        requires=_REQUIRES,
        cost=Passes(forwards="nr_runs + 1"),
        references=(
            "Bhatt, Weller & Moura (2020). Evaluating and aggregating feature-based model explanations. IJCAI.",
        ),
        description="Pearson correlation, over nr_runs random subsets of subset_size features, between the "
        "subset's attribution sum and the drop of the target score when the subset is set to the baseline.",
        ranks_map=True,
    )
)
def faithfulness_correlation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    nr_runs: int = 100,
    subset_size: int | float = 0.1,
    baseline: str = "black",
    baseline_params: Mapping[str, Any] | None = None,
    abs: bool = False,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Faithfulness correlation of maps [B, h, w] for `inputs` [B, C, H, W] and `targets` [B].

    subset_size: number of features (int) or fraction of the features (float in (0, 1]).
    """
    t, attr, block = _prepare(model, inputs, attributions, targets, output, abs, max_batch)
    check_positive_int(nr_runs, "nr_runs")
    size = check_count(subset_size, attr.shape[1], "subset_size")
    scores = _random_subset_correlations(
        model, inputs, attr, t, block, tuple(attributions.shape[-2:]), [size], nr_runs,
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch, seed=seed,
    )[:, 0]
    common, params = _result(
        info_of(faithfulness_correlation), scores, _UNDEFINED, seed,
        nr_runs=nr_runs, subset_size=size, baseline=baseline, baseline_params=baseline_params, abs=abs,
        output=output, max_batch=max_batch,
    )
    return MetricResult(**common, params=params)


@register_metric(
    MetricInfo(
        name="sensitivity_n",
        category="faithfulness",
        higher_is_better=True,
        range=(-1.0, 1.0),
        requires=_REQUIRES,
        cost=Passes(forwards="len(subset_sizes) * nr_runs + 1"),
        references=(
            "Ancona, Ceolini, Oztireli & Gross (2018). Towards better understanding of gradient-based attribution "
            "methods for deep neural networks. ICLR.",
        ),
        description="For each subset size n, Pearson correlation over nr_runs random n-subsets between their "
        "attribution sum and the target score drop when they are set to the baseline; score = mean over n.",
        ranks_map=True,
    )
)
def sensitivity_n(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    subset_sizes: Sequence[int | float] = (0.01, 0.03, 0.1, 0.3, 0.8),
    nr_runs: int = 50,
    baseline: str = "black",
    baseline_params: Mapping[str, Any] | None = None,
    abs: bool = False,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Sensitivity-n curve ``curves`` [B, len(subset_sizes)] (one Pearson correlation per n) and its
    mean as ``scores``; ``extras["subset_size"]`` [B, len] holds the n of each column in features.

    subset_sizes: features (ints) or fractions of the features (floats in (0, 1]), log-spaced by default.
    A score is NaN when the correlation is undefined at any n (the curve shows which).
    """
    t, attr, block = _prepare(model, inputs, attributions, targets, output, abs, max_batch)
    check_positive_int(nr_runs, "nr_runs")
    if isinstance(subset_sizes, (int, float)) or len(subset_sizes) == 0:
        raise InputError(f"subset_sizes must be a non-empty sequence, got {subset_sizes!r}")
    sizes = [check_count(s, attr.shape[1], "subset_sizes entry") for s in subset_sizes]
    curves = _random_subset_correlations(
        model, inputs, attr, t, block, tuple(attributions.shape[-2:]), sizes, nr_runs,
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch, seed=seed,
    )
    scores = curves.mean(dim=1)
    common, params = _result(
        info_of(sensitivity_n), scores, _UNDEFINED + " for at least one n", seed,
        subset_sizes=sizes, nr_runs=nr_runs, baseline=baseline, baseline_params=baseline_params, abs=abs,
        output=output, max_batch=max_batch,
    )
    sizes_t = torch.tensor(sizes, device=inputs.device).expand(inputs.shape[0], -1).clone()
    return MetricResult(**common, params=params, curves=curves.float(), extras={"subset_size": sizes_t})


def _groups(attr: Tensor, k: int, descending: bool) -> tuple[int, Tensor, Tensor]:
    """Split features by attribution order into groups of `k`: (n_groups, group id [B, F],
    attribution sum per group [B, n_groups] float64). Ties keep feature-index order."""
    n_steps = math.ceil(attr.shape[1] / k)
    groups = ranks_desc(attr if descending else -attr) // k
    sums = torch.zeros(attr.shape[0], n_steps, dtype=torch.float64, device=attr.device)
    return n_steps, groups, sums.scatter_add_(1, groups, attr.double())


def _group_drops(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    groups: Tensor,
    n_steps: int,
    samples: int,
    block: tuple[int, int],
    map_shape: tuple[int, int],
    *,
    baseline: str,
    baseline_params: Mapping[str, Any] | None,
    output: str,
    max_batch: int,
    seed: int | torch.Generator | None,
) -> Tensor:
    """Score drops [B, n_steps, samples] when only feature group ``s`` (``groups == s``) is removed."""
    device = inputs.device
    per_image = n_steps * samples

    def masks(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop, device=device)
        step = (rows % per_image) // samples
        return (groups[rows // per_image] == step[:, None]).view(-1, *map_shape)

    base = class_scores(model, inputs, targets, output=output, max_batch=max_batch)
    scores = perturbed_scores(
        model, inputs, targets, inputs.shape[0] * per_image, per_image, masks, block,
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch,
        generator=make_generator(seed, device),
    )
    return (base.repeat_interleave(per_image) - scores).view(-1, n_steps, samples)


@register_metric(
    MetricInfo(
        name="faithfulness_estimate",
        category="faithfulness",
        higher_is_better=True,
        range=(-1.0, 1.0),
        requires=_REQUIRES,
        cost=Passes(forwards="ceil(features / features_in_step) + 1"),
        references=(
            "Alvarez-Melis & Jaakkola (2018). Towards robust interpretability with self-explaining neural "
            "networks. NeurIPS.",
        ),
        description="Features sorted by descending attribution are removed one group of features_in_step at a "
        "time (each group alone); Pearson correlation between group attribution sums and target score drops.",
        ranks_map=True,
    )
)
def faithfulness_estimate(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    features_in_step: int = 1,
    baseline: str = "black",
    baseline_params: Mapping[str, Any] | None = None,
    abs: bool = False,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Faithfulness estimate of maps [B, h, w]; the last group holds the remaining features.

    Ties in the attribution order are broken by feature index (row-major). `seed` only matters
    for random baselines.
    """
    t, attr, block = _prepare(model, inputs, attributions, targets, output, abs, max_batch)
    k = check_count(check_positive_int(features_in_step, "features_in_step"), attr.shape[1], "features_in_step")
    n_steps, groups, att_sums = _groups(attr, k, descending=True)
    drops = _group_drops(
        model, inputs, t, groups, n_steps, 1, block, tuple(attributions.shape[-2:]),
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch, seed=seed,
    )[:, :, 0]
    scores = pearson_rows(att_sums, drops)
    common, params = _result(
        info_of(faithfulness_estimate), scores, _UNDEFINED, seed,
        features_in_step=k, baseline=baseline, baseline_params=baseline_params, abs=abs, output=output,
        max_batch=max_batch,
    )
    return MetricResult(**common, params=params)


@register_metric(
    MetricInfo(
        name="monotonicity_correlation",
        category="faithfulness",
        higher_is_better=True,
        range=(-1.0, 1.0),
        requires=_REQUIRES,
        cost=Passes(forwards="ceil(features / features_in_step) * nr_samples + 1",
                    note="nr_samples = 1 for deterministic baselines"),
        references=(
            "Nguyen & Martinez (2020). On quantitative aspects of model interpretability. arXiv:2007.07584.",
        ),
        description="Spearman correlation between the attribution sum of each feature group (ascending order, "
        "features_in_step per group) and the mean squared change of the target score when that group alone is "
        "perturbed nr_samples times.",
        ranks_map=True,
    )
)
def monotonicity_correlation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    targets: Tensor,
    *,
    nr_samples: int = 100,
    features_in_step: int = 1,
    baseline: str = "uniform",
    baseline_params: Mapping[str, Any] | None = None,
    abs: bool = True,
    output: str = "softmax",
    max_batch: int = 256,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Monotonicity correlation of maps [B, h, w] (absolute attributions by default, as in Quantus).

    With a deterministic baseline all nr_samples perturbations of a group are the same image, so
    it is scored once. Ties in the order are broken by feature index; ranks use average ranks.
    """
    t, attr, block = _prepare(model, inputs, attributions, targets, output, abs, max_batch)
    check_positive_int(nr_samples, "nr_samples")
    k = check_count(check_positive_int(features_in_step, "features_in_step"), attr.shape[1], "features_in_step")
    samples = nr_samples if baseline in RANDOM_BASELINES else 1
    n_steps, groups, att_sums = _groups(attr, k, descending=False)
    drops = _group_drops(
        model, inputs, t, groups, n_steps, samples, block, tuple(attributions.shape[-2:]),
        baseline=baseline, baseline_params=baseline_params, output=output, max_batch=max_batch, seed=seed,
    )
    variation = drops.double().pow(2).mean(dim=2)
    scores = spearman_rows(att_sums, variation)
    common, params = _result(
        info_of(monotonicity_correlation), scores, _UNDEFINED, seed,
        nr_samples=samples, features_in_step=k, baseline=baseline, baseline_params=baseline_params, abs=abs,
        output=output, max_batch=max_batch,
    )
    return MetricResult(**common, params=params)
