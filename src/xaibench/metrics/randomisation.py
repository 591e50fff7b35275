"""Randomisation sanity checks: an explanation should change when the model or the class does.

- `model_parameter_randomisation` (Adebayo et al. 2018): randomise the model's layers one after
  the other and compare each new explanation with the original one.
- `random_logit` (Sixt et al. 2020): compare the explanation of the target class with the
  explanation of a random other class.

Scores are similarities (lower is better: a method that passes produces different maps). The
similarity is computed by `xaibench.metrics.similarity` after the same preprocessing on both maps:
``absolute`` takes ``|map|``, ``normalise`` divides each map by its own max ``|value|`` (all-zero
maps unchanged; Quantus' ``normalise_by_max`` divides by the max over the whole batch). `model` is modified in place while a check runs and
its weights (the whole ``state_dict``, buffers included) are ALWAYS restored afterwards, also when
the explainer raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_targets
from xaibench.errors import InputError
from xaibench.metrics import similarity as sim
from xaibench.metrics.base import MetricInfo, MetricResult, nan_reasons, register_metric
from xaibench.metrics.robustness import explain_chunked
from xaibench.seeding import make_generator

Similarity = Callable[[Tensor, Tensor], Tensor]
Randomiser = Callable[[nn.Module, torch.Generator], None]
"""``randomise(layer, generator)`` re-draws the parameters of one layer in place."""

SIMILARITIES: dict[str, Similarity] = {"spearman": sim.spearman, "pearson": sim.pearson, "ssim": sim.ssim}
ORDERS = ("top_down", "bottom_up", "independent")


def _similarity(similarity: str | Similarity) -> Similarity:
    if callable(similarity):
        return similarity
    if similarity not in SIMILARITIES:
        raise InputError(f"similarity must be one of {sorted(SIMILARITIES)} or a callable, got {similarity!r}")
    return SIMILARITIES[similarity]


def _prepare(maps: Tensor, absolute: bool, normalise: bool) -> Tensor:
    out = maps.abs() if absolute else maps
    if normalise:
        peak = out.flatten(1).abs().amax(dim=1).view(-1, *[1] * (out.ndim - 1))
        out = out / torch.where(peak > 0, peak, 1.0)
    return out


def _targets(model: nn.Module, inputs: Tensor, targets: Tensor | int) -> tuple[Tensor, int]:
    check_images(inputs)
    with torch.no_grad():
        n_classes = int(model(inputs[:1]).shape[1])
    return check_targets(targets, inputs.shape[0], n_classes).to(inputs.device), n_classes


def reset_randomiser(layer: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise `layer` with its own ``reset_parameters()`` (PyTorch's default init, as Quantus),
    under a seed drawn from `generator`; the global RNG state is left untouched."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = sorted({p.device.index or 0 for p in layer.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        layer.reset_parameters()  # type: ignore[operator]


def normal_randomiser(layer: nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter of `layer` (not of its children) with standard normal draws, as
    autotimm's ``model_parameter_randomization_test`` does for all parameters."""
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=generator, device=generator.device).to(p.device, p.dtype))


RANDOMISERS: dict[str, Randomiser] = {"reset": reset_randomiser, "normal": normal_randomiser}


def randomisable_layers(model: nn.Module, layers: Sequence[str] | str | None = None) -> list[tuple[str, nn.Module]]:
    """Modules with a ``reset_parameters`` method, in ``named_modules`` order (input to output for
    sequential models), as Quantus enumerates them; `layers` selects some of them by name."""
    found = [(n, m) for n, m in model.named_modules() if callable(getattr(m, "reset_parameters", None))]
    if layers == "blocks":
        return _blocks(model)
    if layers is not None:
        names = {n for n, _ in found}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise InputError(f"layers {unknown} are not randomisable modules of the model; choose from {sorted(names)}")
        found = [(n, m) for n, m in found if n in set(layers)]
    if not found:
        raise InputError("the model has no layer with parameters to randomise")
    return found


def _resettable(module: nn.Module) -> bool:
    return callable(getattr(module, "reset_parameters", None))


def _blocks(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """``layers="blocks"``: the top-level blocks of the network, each randomised as a whole.

    Below single-child wrappers, every child holding a randomisable layer is a block, and the
    items of a child that is an ``nn.Sequential`` / ``nn.ModuleList`` are (ResNet-18: conv1, bn1,
    the 8 residual blocks and fc, 11 steps instead of 41 layers; a timm ViT: the patch embedding,
    each transformer block, the final norm and the head)."""
    prefix = ""
    while not list(root.parameters(recurse=False)):
        kids = [(n, m) for n, m in root.named_children() if next(m.parameters(), None) is not None]
        if len(kids) != 1:
            break
        prefix, root = f"{prefix}{kids[0][0]}.", kids[0][1]
    found = []
    for name, child in root.named_children():
        items = list(child.named_children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else [("", child)]
        found += [(prefix + name + (f".{sub}" if sub else ""), m) for sub, m in items
                  if any(_resettable(part) for part in m.modules())]
    if not found:
        raise InputError("the model has no layer with parameters to randomise")
    return found


def _parts(layer: nn.Module) -> list[nn.Module]:
    """The randomisable layers of a step: the layer itself, or every randomisable layer of a block."""
    return [layer] if _resettable(layer) else [m for m in layer.modules() if _resettable(m)]


@register_metric(MetricInfo(
    name="model_parameter_randomisation", category="randomisation", higher_is_better=False, range=(-1.0, 1.0),
    requires=("model", "inputs", "targets", "explainer"), cost="L + 1 explanations for L layers (2 with skip_layers)",
    references=("Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018). Sanity checks for saliency maps. "
                "NeurIPS.",),
    description="Similarity between the original explanation and the explanations after randomising the model's "
    "layers (cascading top-down / bottom-up, or each layer independently); per-layer curve in `curves`, score = "
    "mean over layers (or the last one); extras['passed'] applies a threshold.",
))
def model_parameter_randomisation(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    order: str = "top_down",
    similarity: str | Similarity = "spearman",
    absolute: bool = True,
    normalise: bool = True,
    score: str = "mean",
    threshold: float = 0.5,
    layers: Sequence[str] | str | None = None,
    skip_layers: bool = False,
    randomise: str | Randomiser = "reset",
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Model parameter randomisation test (MPRT). Lower similarity is better.

    order: ``"top_down"`` randomises cumulatively from the output layer down, ``"bottom_up"`` from
    the input layer up, ``"independent"`` randomises each layer alone (the others original).
    Layers: `randomisable_layers` (every one, those named in `layers`, or ``layers="blocks"``:
    the top-level blocks, each randomised as a whole). curves: [B, L] similarity after each step, in the order
    randomised (``skip_layers=True``: only after the last step, [B, 1], as Quantus' option).
    score: ``"mean"`` over the curve (NaN entries ignored), or ``"last"`` entry (the fully
    randomised model for cascading orders; Quantus' return_last_correlation).
    extras["passed"]: cascading orders pass when the last similarity is < `threshold`; the
    independent order passes when every layer's is. Also ``maps`` (original) and
    ``randomised_maps`` (after the last step), raw as returned by the explainer.
    randomise: ``"reset"`` (`reset_randomiser`), ``"normal"`` (`normal_randomiser`) or a callable.
    """
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, got {order!r}")
    if score not in ("mean", "last"):
        raise InputError(f"score must be 'mean' or 'last', got {score!r}")
    if skip_layers and order == "independent":
        raise InputError("skip_layers needs a cascading order ('top_down' or 'bottom_up')")
    if isinstance(randomise, str):
        if randomise not in RANDOMISERS:
            raise InputError(f"randomise must be one of {sorted(RANDOMISERS)} or a callable, got {randomise!r}")
        randomise = RANDOMISERS[randomise]
    compare = _similarity(similarity)
    t, _ = _targets(model, inputs, targets)
    chosen = randomisable_layers(model, layers)
    if order == "top_down":
        chosen = chosen[::-1]
    gen = make_generator(seed, inputs.device)
    original = explain_chunked(explainer, inputs, t, max_batch)
    to_reference = sim.against(compare, _prepare(original, absolute, normalise))  # reference ranked once
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    columns: list[Tensor] = []
    randomised = original
    try:
        for i, (_, layer) in enumerate(chosen):
            if order == "independent":
                model.load_state_dict(state)
            for part in _parts(layer):
                randomise(part, gen)
            if skip_layers and i < len(chosen) - 1:
                continue
            randomised = explain_chunked(explainer, inputs, t, max_batch)
            if randomised.shape != original.shape:
                raise InputError(f"maps after randomisation have shape {tuple(randomised.shape)}, expected "
                                 f"{tuple(original.shape)}")
            columns.append(to_reference(_prepare(randomised, absolute, normalise)).to(inputs.device))
    finally:
        model.load_state_dict(state)
    curves = torch.stack(columns, dim=1).float()
    scores = curves.nanmean(dim=1) if score == "mean" else curves[:, -1]
    final = curves if order == "independent" else curves[:, -1:]
    passed = (final < threshold).all(dim=1)
    reasons = nan_reasons(torch.isnan(scores), "the similarity is undefined (a constant map)")
    params = dict(order=order, similarity=similarity if isinstance(similarity, str) else "custom",
                  absolute=absolute, normalise=normalise, score=score, threshold=threshold,
                  layers=[n for n, _ in chosen], skip_layers=skip_layers,
                  randomise=getattr(randomise, "__name__", "custom"), max_batch=max_batch,
                  seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=model_parameter_randomisation.info,  # type: ignore[attr-defined]
                        params=params, curves=curves, reasons=reasons,
                        extras={"passed": passed, "maps": original, "randomised_maps": randomised})


@register_metric(MetricInfo(
    name="random_logit", category="randomisation", higher_is_better=False, range=(-1.0, 1.0),
    requires=("model", "inputs", "targets", "explainer"), cost="2 explanations",
    references=("Sixt, Granz & Landgraf (2020). When explanations lie: why many modified BP attributions fail. "
                "ICML.",),
    description="Similarity between the explanation of the target class and that of a random other class "
    "(seeded, uniform over the other classes); extras['passed'] applies a threshold.",
))
def random_logit(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    explainer: Callable[[Tensor, Tensor], Tensor],
    *,
    similarity: str | Similarity = "ssim",
    absolute: bool = False,
    normalise: bool = True,
    threshold: float = 0.5,
    max_batch: int = 64,
    seed: int | torch.Generator | None = 0,
) -> MetricResult:
    """Random logit test (Sixt et al.; Quantus' RandomLogit; autotimm's data_randomization_test).

    The other class is drawn uniformly from the classes != target with one seeded generator
    (extras["off_targets"]). Defaults follow Quantus (SSIM on max-normalised signed maps; see
    `xaibench.metrics.similarity.ssim` for its 2-D window). Lower is better; extras["passed"] is
    ``similarity < threshold``; also ``maps`` and ``off_maps`` (raw).
    """
    compare = _similarity(similarity)
    t, n_classes = _targets(model, inputs, targets)
    if n_classes < 2:
        raise InputError("the random logit test needs a model with at least 2 classes")
    gen = make_generator(seed, inputs.device)
    shift = torch.randint(1, n_classes, t.shape, generator=gen, device=inputs.device)
    off = (t + shift) % n_classes
    maps = explain_chunked(explainer, inputs, t, max_batch)
    off_maps = explain_chunked(explainer, inputs, off, max_batch)
    scores = compare(_prepare(maps, absolute, normalise), _prepare(off_maps, absolute, normalise)).float()
    reasons = nan_reasons(torch.isnan(scores), "the similarity is undefined (a constant map)")
    params = dict(similarity=similarity if isinstance(similarity, str) else "custom", absolute=absolute,
                  normalise=normalise, threshold=threshold, max_batch=max_batch,
                  seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=random_logit.info, params=params, reasons=reasons,  # type: ignore[attr-defined]
                        extras={"passed": scores < threshold, "off_targets": off, "maps": maps, "off_maps": off_maps})
