"""Randomisation sanity checks: an explanation should change when the model or the class does.

- `model_parameter_randomisation` (Adebayo et al. 2018): randomise the model's layers one after
  the other and compare each new explanation with the original one.
- `random_logit` (Sixt et al. 2020): compare the explanation of the target class with the
  explanation of a random other class.

Scores are similarities (lower is better: a method that passes produces different maps). The
similarity is computed by `xaibench.metrics.similarity` after the same preprocessing on both maps:
``absolute`` takes ``|map|``, ``normalise`` divides each map by its own max ``|value|`` (all-zero
maps unchanged; Quantus' ``normalise_by_max`` divides by the max over the whole batch). `model`
is modified in place while a check runs; its ``state_dict`` (buffers included, snapshot taken
before the first forward, so batch-norm statistics of a model in train mode do not drift) and the
train / eval mode of every module are ALWAYS restored afterwards, also when the explainer raises.
Layers under ``torch.nn.utils.parametrizations`` (``weight_norm``, ``spectral_norm``) are
randomised through their parametrization. Layer names are those of the user's network
(`xaibench.explainers.base.network`: no wrapper prefix).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from xaibench.checks import check_images, check_targets
from xaibench.errors import InputError
from xaibench.explainers.base import network
from xaibench.metrics import similarity as sim
from xaibench.metrics.base import MetricInfo, MetricResult, info_of, register_metric
from xaibench.metrics.robustness import explain_chunked
from xaibench.passes import Passes
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
    check_images(inputs, model=model)
    with torch.no_grad():
        n_classes = int(model(inputs[:1]).shape[1])
    return check_targets(targets, inputs.shape[0], n_classes).to(inputs.device), n_classes


@contextlib.contextmanager
def restored(model: nn.Module, *, state: bool = True) -> Iterator[dict[str, Tensor]]:
    """Snapshot `model`'s ``state_dict`` (with ``state=True``) and the train / eval mode of every
    module; restore both when the block ends, also on errors. Yields the snapshot."""
    modes = [(m, m.training) for m in model.modules()]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if state else {}
    try:
        yield saved
    finally:
        if state:
            model.load_state_dict(saved)
        for m, mode in modes:
            m.training = mode


def _write(layer: nn.Module, values: dict[str, Tensor]) -> None:
    """Set tensors of `layer` by name: parametrized ones through their parametrization's
    ``right_inverse`` (weight_norm: magnitude and direction), plain parameters in place."""
    with torch.no_grad():
        for name, value in values.items():
            if parametrize.is_parametrized(layer, name):
                setattr(layer, name, value.to(getattr(layer, name)))
            else:
                getattr(layer, name).copy_(value)


def _effective(layer: nn.Module) -> dict[str, Tensor]:
    """The tensors the layer computes with: its own parameters, parametrized ones as computed."""
    if not parametrize.is_parametrized(layer):
        return dict(layer.named_parameters(recurse=False))
    names = [n for n, _ in layer.named_parameters(recurse=False)] + list(layer.parametrizations)
    with torch.no_grad():
        return {n: getattr(layer, n) for n in names}


def reset_randomiser(layer: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise `layer` with its own ``reset_parameters()`` (PyTorch's default init, as Quantus),
    under a seed drawn from `generator`; the global RNG state is left untouched. A parametrized
    layer is reset in its parametrization's cache (where ``reset_parameters`` writes into the
    computed weight), and the new weight is written through the parametrization."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = sorted({p.device.index or 0 for p in layer.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if not parametrize.is_parametrized(layer):
            layer.reset_parameters()  # type: ignore[operator]
            return
        with parametrize.cached():
            layer.reset_parameters()  # type: ignore[operator]
            values = {n: t.detach().clone() for n, t in _effective(layer).items()}
        _write(layer, values)


def normal_randomiser(layer: nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter of `layer` (not of its children) with standard normal draws, as
    autotimm's ``model_parameter_randomization_test`` does for all parameters (a parametrized
    weight: its computed value is drawn and written through the parametrization)."""
    draws = {n: torch.randn(t.shape, generator=generator, device=generator.device)
             for n, t in _effective(layer).items()}
    _write(layer, draws)


RANDOMISERS: dict[str, Randomiser] = {"reset": reset_randomiser, "normal": normal_randomiser}


def randomisable_layers(model: nn.Module, layers: Sequence[str] | str | None = None) -> list[tuple[str, nn.Module]]:
    """Modules with a ``reset_parameters`` method, in ``named_modules`` order (input to output for
    sequential models), as Quantus enumerates them, named as in the user's network (`network`);
    `layers` selects some of them by name."""
    found = [(n, m) for n, m in network(model).named_modules() if callable(getattr(m, "reset_parameters", None))]
    if layers == "blocks":
        return _blocks(network(model))
    if layers is not None:
        names = {n for n, _ in found}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise InputError(f"layers {unknown} are not randomisable layers of the model; choose from {sorted(names)}")
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


_OVERFLOW = "the explanation of the randomised model holds NaN or Inf values"


def _finite_similarity(compare: Callable[[Tensor], Tensor], maps: Tensor) -> tuple[Tensor, Tensor]:
    """(similarity [B] to the reference, NaN where a map is not finite; the non-finite flags [B])."""
    bad = ~torch.isfinite(maps.flatten(1)).all(dim=1)
    scores = compare(maps.masked_fill(bad.view(-1, *[1] * (maps.ndim - 1)), 0.0))
    return scores.masked_fill(bad.to(scores.device), float("nan")), bad


@register_metric(MetricInfo(
    name="model_parameter_randomisation", category="randomisation", higher_is_better=False, range=(-1.0, 1.0),
    requires=("model", "inputs", "targets", "explainer"),
    cost=Passes(explanations="L + 1", note="for L layers; 2 with skip_layers"),
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
    chosen = randomisable_layers(model, layers)
    if order == "top_down":
        chosen = chosen[::-1]
    gen = make_generator(seed, inputs.device)
    columns: list[Tensor] = []
    overflow = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    with restored(model) as state:  # before the first forward: train-mode batch norm must not drift
        t, _ = _targets(model, inputs, targets)
        original = explain_chunked(explainer, inputs, t, max_batch)
        to_reference = sim.against(compare, _prepare(original, absolute, normalise))  # reference ranked once
        randomised = original
        for i, (_, layer) in enumerate(chosen):
            if order == "independent":
                model.load_state_dict(state)
            for part in _parts(layer):
                randomise(part, gen)
            if skip_layers and i < len(chosen) - 1:
                continue
            randomised = explain_chunked(explainer, inputs, t, max_batch, finite=False)
            if randomised.shape != original.shape:
                raise InputError(f"maps after randomisation have shape {tuple(randomised.shape)}, expected "
                                 f"{tuple(original.shape)}")
            column, bad = _finite_similarity(lambda m: to_reference(_prepare(m, absolute, normalise)), randomised)
            columns.append(column.to(inputs.device))
            overflow |= bad.to(inputs.device)
    curves = torch.stack(columns, dim=1).float()
    scores = curves.nanmean(dim=1) if score == "mean" else curves[:, -1]
    final = curves if order == "independent" else curves[:, -1:]
    passed = (final < threshold).all(dim=1)
    reasons = tuple(None if not nan else _OVERFLOW if over else "the similarity is undefined (a constant map)"
                    for nan, over in zip(torch.isnan(scores).tolist(), overflow.tolist()))
    params = dict(order=order, similarity=similarity if isinstance(similarity, str) else "custom",
                  absolute=absolute, normalise=normalise, score=score, threshold=threshold,
                  layers=[n for n, _ in chosen], skip_layers=skip_layers,
                  randomise=getattr(randomise, "__name__", "custom"), max_batch=max_batch,
                  seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=info_of(model_parameter_randomisation),
                        params=params, curves=curves, reasons=reasons if any(reasons) else None,
                        extras={"passed": passed, "maps": original, "randomised_maps": randomised})


def _constant_reasons(undefined: Tensor, maps: Tensor, off_maps: Tensor, off: Tensor) -> tuple[str | None, ...] | None:
    """Why a similarity is NaN: which of the two maps is constant (a correlation needs variation)."""
    if not bool(undefined.any()):
        return None

    def constant(m: Tensor) -> list[bool]:
        flat = m.flatten(1)
        return (flat.amax(dim=1) == flat.amin(dim=1)).tolist()

    out = []
    for nan, same, same_off, k in zip(undefined.tolist(), constant(maps), constant(off_maps), off.tolist()):
        which = [w for w, c in (("the target class", same), (f"the other class ({k})", same_off)) if c]
        out.append(None if not nan else
                   f"the map of {' and of '.join(which)} is constant, so the similarity is undefined" if which else
                   "the similarity is undefined for these maps")
    return tuple(out)


@register_metric(MetricInfo(
    name="random_logit", category="randomisation", higher_is_better=False, range=(-1.0, 1.0),
    requires=("model", "inputs", "targets", "explainer"), cost=Passes(explanations="2"),
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
    reasons = _constant_reasons(torch.isnan(scores), maps, off_maps, off)
    params = dict(similarity=similarity if isinstance(similarity, str) else "custom", absolute=absolute,
                  normalise=normalise, threshold=threshold, max_batch=max_batch,
                  seed=seed if isinstance(seed, int) else None)
    return MetricResult(scores=scores, info=info_of(random_logit), params=params, reasons=reasons,
                        extras={"passed": scores < threshold, "off_targets": off, "maps": maps, "off_maps": off_maps})
