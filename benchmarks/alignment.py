"""Benchmark of the localisation, complexity, robustness and randomisation metrics:
``python -m benchmarks.alignment [--quick] [--device cpu|cuda] [--metrics a,b]``.

Two groups, each against Quantus 0.6.0 at the identical settings of the unit tests
(tests/test_localisation.py, test_focus.py, test_complexity.py, test_robustness.py,
test_randomisation.py), with the score agreement (max |difference|):

- Map metrics (pointing game ... effective complexity): pure functions of maps (and masks). Wall
  time of ours (best of the repeats) against Quantus' on N signed random maps of 224x224 and box
  masks (Focus: 2x2 mosaics of 112x112 tiles). There is no unavoidable model cost, so only the
  speed-up is a target (>= 10x); peak memory is reported at N/4 and N (these metrics take the whole
  batch at once: memory grows with N by design).
- Re-explanation metrics (max/avg sensitivity, local Lipschitz, relative input/output stability,
  model parameter randomisation, random logit): wall time of ours against the re-explanations it
  cannot avoid, i.e. the same number of explainer rows (counted by wrapping the explainer) passed
  to the same explainer in chunks of the same `max_batch`, plus the no-grad forwards the metric
  itself makes (logits of the originals; of the copies for relative output stability), counted
  by wrapping the model, timed interleaved (target <= 1.25x); the in-run ratio (wall time / time
  inside the explainer and the model's own forwards during the same call); and against
  Quantus. Robustness metrics get Quantus' perturbation replaced by our very draws (as in the
  tests), MPRT Quantus' layer re-initialisation, random logit a 2-class head so the off-target class
  is determined. Peak memory at N/4 and N with the same `max_batch` (flat in N expected).

Setting: the LeNet-sized random CNN of benchmarks/faithfulness.py on 1x32x32 images, input-gradient
explainers (|grad| for robustness, signed grad for randomisation, as in the tests).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import xaibench.metrics as M
from xaibench.conformance import quiet_quantus
from xaibench.data.mosaics import build_mosaics
from xaibench.metrics.localisation import boxes_to_masks
from xaibench.metrics.robustness import gaussian_noise, uniform_noise

from .faithfulness import LeNet
from .harness import (
    Counting,
    CountingExplainer,
    agreement,
    best_of,
    header,
    line,
    markdown,
    peak_memory,
    timed_pair,
)

# --------------------------------------------------------------------------------------------
# Map metrics
# --------------------------------------------------------------------------------------------


@dataclass
class MapData:
    maps: Tensor  # [N, H, W] signed
    masks: Tensor  # [N, H, W] bool boxes
    mosaic_maps: Tensor
    mosaic_masks: Tensor
    mosaic_images: Tensor
    mosaic_layout: list[list[int]]  # Quantus' custom_batch: 1 where a tile holds the target class


def map_data(n: int, size: int = 224, seed: int = 0) -> MapData:
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, size, size, generator=g)
    corner = torch.randint(0, size // 2, (n, 2), generator=g)
    extent = torch.randint(size // 8, size // 2, (n, 2), generator=g)
    boxes = torch.cat([corner, corner + extent], dim=1)
    masks = boxes_to_masks(boxes, (size, size))
    tiles = torch.rand(30, 1, size // 2, size // 2, generator=g)
    mos = build_mosaics(tiles, torch.arange(30) % 5, n, seed=seed)
    layout = (mos.layout == mos.targets[:, None]).int().tolist()
    return MapData(maps, masks, torch.randn(n, size, size, generator=g), mos.masks, mos.images, layout)


@dataclass(frozen=True)
class MapCase:
    metric: str
    params: dict[str, Any] = field(default_factory=dict)
    quantus: str = ""  # Quantus class name
    quantus_params: dict[str, Any] = field(default_factory=dict)
    positive_maps: bool = False  # Quantus is fed max(a, 0) (its RMA uses the signed map)
    mosaic: bool = False  # Focus: mosaics and their tile layout


RAW = dict(abs=False, normalise=False)
MAP_CASES = [
    MapCase("pointing_game", quantus="PointingGame", quantus_params=RAW),
    MapCase("relevance_mass_accuracy", quantus="RelevanceMassAccuracy", quantus_params=RAW, positive_maps=True),
    MapCase("relevance_rank_accuracy", quantus="RelevanceRankAccuracy", quantus_params=RAW),
    MapCase("attribution_localisation", quantus="AttributionLocalisation",
            quantus_params=dict(positive_attributions=True, **RAW)),
    MapCase("top_k_intersection", dict(k=1000), "TopKIntersection", dict(k=1000, **RAW)),
    MapCase("auc", quantus="AUC", quantus_params=RAW),
    MapCase("focus", quantus="Focus", quantus_params=RAW, mosaic=True),
    MapCase("sparseness", quantus="Sparseness", quantus_params=dict(normalise=False)),  # Quantus abs=True default
    MapCase("complexity", quantus="Complexity", quantus_params=dict(normalise=False)),
    MapCase("effective_complexity", dict(eps=1e-5, normalise=False), "EffectiveComplexity",
            dict(eps=1e-5, normalise=False)),
]


def _map_args(case: MapCase, d: MapData, n: int) -> dict[str, Tensor]:
    maps, masks = (d.mosaic_maps, d.mosaic_masks) if case.mosaic else (d.maps, d.masks)
    requires = M.METRICS.get(case.metric).info.requires
    return {k: v[:n] for k, v in dict(attributions=maps, masks=masks).items() if k in requires}


def quantus_maps(case: MapCase, d: MapData) -> np.ndarray:
    """The Quantus metric on the same maps (a tiny linear model satisfies its interface)."""
    import quantus as q

    maps, masks = (d.mosaic_maps, d.mosaic_masks) if case.mosaic else (d.maps, d.masks)
    if case.positive_maps:
        maps = maps.clamp(min=0)
    n, size = maps.shape[0], maps.shape[-1]
    x = d.mosaic_images.numpy() if case.mosaic else np.random.default_rng(0).random((n, 1, size, size), np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 5))
    extra: dict[str, Any] = dict(custom_batch=d.mosaic_layout) if case.mosaic else {}
    if "masks" in M.METRICS.get(case.metric).info.requires and not case.mosaic:
        extra["s_batch"] = masks[:, None].float().numpy()
    metric = getattr(q, case.quantus)(disable_warnings=True, display_progressbar=False, **case.quantus_params)
    with quiet_quantus():
        out = metric(model=model, x_batch=x, y_batch=np.zeros(n, dtype=int), a_batch=maps[:, None].numpy(),
                     batch_size=n, **extra)
    return np.asarray(out, dtype=np.float64)


def run_maps(n: int, device: str, repeats: int, only: set[str]) -> dict[str, Any]:
    d = map_data(n)
    small_n = max(4, n // 4)
    results = []
    for case in MAP_CASES:
        if only and case.metric not in only:
            continue
        fn = M.METRICS.get(case.metric).fn
        args = {k: v.to(device) for k, v in _map_args(case, d, n).items()}
        fn(**{k: v[:2] for k, v in args.items()}, **case.params)  # warm-up
        t_ours, _, _, res = timed_pair(lambda: fn(**args, **case.params), None, None, repeats)
        ours = res.scores.double().cpu().numpy()
        t_ref, ref = best_of(lambda: quantus_maps(case, d), repeats, budget_s=20)
        mem = {}
        for size in (small_n, n):
            part = {k: v[:size] for k, v in args.items()}
            mem[size] = min(peak_memory(lambda: fn(**part, **case.params), device) for _ in range(3))
        row = dict(metric=case.metric, calls_per_image=None, ours_s=t_ours, mean=float(np.nanmean(ours)),
                   reference="Quantus", reference_s=t_ref, speedup=t_ref / t_ours,
                   reference_mean=float(np.nanmean(ref)), agreement=agreement(ours, ref, False),
                   memory_small=mem[small_n], memory_large=mem[n])
        results.append(row)
        print(line(row), flush=True)
    return dict(header(device, n=n, small_n=small_n, settings=f"signed N(0, 1) maps of 224x224, random box masks "
                       f"(Focus: 2x2 mosaics of 112x112 tiles), best of {repeats}"), results=results)


# --------------------------------------------------------------------------------------------
# Re-explanation metrics
# --------------------------------------------------------------------------------------------


class Saliency:
    """Input gradient of the target logit, |.| max over channels (robustness) or signed sum (randomisation)."""

    def __init__(self, model: nn.Module, signed: bool = False) -> None:
        self.model, self.signed = model, signed

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.model(x).gather(1, targets[:, None]).sum(), x)
        return grad.sum(dim=1) if self.signed else grad.abs().amax(dim=1)


def quantus_explainer(signed: bool) -> Callable[..., np.ndarray]:
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        return Saliency(model, signed)(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    return explain


def quantus_reset(seed: int) -> Callable[[nn.Module, torch.Generator], None]:
    """Quantus' layer randomisation: torch.manual_seed(seed + 1) then reset_parameters()."""

    def randomise(layer: nn.Module, generator: torch.Generator) -> None:
        torch.manual_seed(seed + 1)
        layer.reset_parameters()

    return randomise


@dataclass(frozen=True)
class ExplainCase:
    metric: str
    params: dict[str, Any]
    quantus: str
    quantus_params: dict[str, Any]
    perturb: Callable[[], Any] | None = None  # our perturbation, injected into Quantus
    signed: bool = False
    two_classes: bool = False  # random logit: a 2-class head so the other class is determined
    label: str = ""


def explain_cases(samples: int) -> list[ExplainCase]:
    from quantus.functions.similarity_func import correlation_spearman

    radius, rel_radius = 0.05, 0.01
    return [
        ExplainCase("max_sensitivity", dict(radius=radius, n_samples=samples), "MaxSensitivity",
                    dict(nr_samples=samples, lower_bound=radius), lambda: uniform_noise(radius)),
        ExplainCase("avg_sensitivity", dict(radius=radius, n_samples=samples), "AvgSensitivity",
                    dict(nr_samples=samples, lower_bound=radius), lambda: uniform_noise(radius)),
        ExplainCase("local_lipschitz", dict(std=0.1, n_samples=samples, normalise=False), "LocalLipschitzEstimate",
                    dict(nr_samples=samples, perturb_std=0.1, normalise=False), lambda: gaussian_noise(0.1)),
        ExplainCase("relative_input_stability", dict(radius=rel_radius, n_samples=samples, keep_prediction=False),
                    "RelativeInputStability", dict(nr_samples=samples, return_nan_when_prediction_changes=False),
                    lambda: uniform_noise(rel_radius)),
        ExplainCase("relative_output_stability", dict(radius=rel_radius, n_samples=samples, keep_prediction=False),
                    "RelativeOutputStability", dict(nr_samples=samples, return_nan_when_prediction_changes=False),
                    lambda: uniform_noise(rel_radius)),
        ExplainCase("model_parameter_randomisation", dict(order="top_down", randomise=quantus_reset(42)), "MPRT",
                    dict(layer_order="top_down", seed=42), signed=True),
        ExplainCase("random_logit", dict(similarity="spearman"), "RandomLogit",
                    dict(num_classes=2, similarity_func=correlation_spearman), signed=True, two_classes=True),
    ]


def _inject(metric: Any, perturbed: Tensor) -> None:
    """Replace Quantus' perturbation (np.random) by ours: step s perturbs image i into perturbed[i, s]."""
    steps: Iterator[int] = iter(range(perturbed.shape[1]))

    def perturb(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        return perturbed[:, next(steps)].reshape(arr.shape[0], -1).numpy()

    metric.perturb_func = perturb


def quantus_explain_metric(case: ExplainCase, model: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
    import quantus as q

    metric = getattr(q, case.quantus)(disable_warnings=True, display_progressbar=False, **case.quantus_params)
    if case.perturb is not None:
        k = case.params["n_samples"]
        draws = case.perturb()(x.repeat_interleave(k, dim=0), torch.Generator().manual_seed(0))
        _inject(metric, draws.view(x.shape[0], k, *x.shape[1:]))
    with quiet_quantus():
        out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                     explain_func=quantus_explainer(case.signed), device="cpu", batch_size=x.shape[0])
    if isinstance(out, dict):  # MPRT: per-layer similarities; our score is their mean over layers
        out = np.array([v for k, v in out.items() if k != "original"]).mean(axis=0)
    return np.asarray(out, dtype=np.float64)


def pure_explanations(explainer: Callable[[Tensor, Tensor], Tensor], rows: int, like: Tensor, max_batch: int,
                      classes: int) -> None:
    """Call the explainer on `rows` inputs in chunks of `max_batch` (the unavoidable re-explanations)."""
    x = torch.rand(min(rows, max_batch), *like.shape[1:], device=like.device)
    t = torch.arange(x.shape[0], device=like.device) % classes
    for start in range(0, rows, max_batch):
        m = min(max_batch, rows - start)
        explainer(x[:m], t[:m])


def pure_forwards(model: nn.Module, rows: int, like: Tensor, max_batch: int) -> None:
    """`rows` no-grad forwards in chunks of `max_batch` (logits the metric needs besides the maps)."""
    x = torch.rand(min(rows, max_batch), *like.shape[1:], device=like.device)
    with torch.no_grad():
        for start in range(0, rows, max_batch):
            model(x[:min(max_batch, rows - start)])


def run_explain(n: int, samples: int, device: str, max_batch: int, repeats: int, only: set[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    lenet = LeNet().to(device).eval()
    two = nn.Sequential(lenet, nn.Linear(10, 2)).to(device).eval()
    x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    small_n = max(4, n // 4)
    results = []
    for case in explain_cases(samples):
        if only and case.metric not in only:
            continue
        model = two if case.two_classes else lenet
        with torch.no_grad():
            y = model(x).argmax(1)
        classes = 2 if case.two_classes else 10
        fn = M.METRICS.get(case.metric).fn
        params = dict(case.params, max_batch=max_batch)
        counted, counted_model = CountingExplainer(Saliency(model, case.signed)), Counting(model)
        fn(counted_model, x[:2], y[:2], counted, **params)  # warm-up
        counted.images = counted_model.images = 0
        fn(counted_model, x, y, counted, **params)
        rows, fwd = counted.images, counted_model.images

        def pure() -> None:
            pure_explanations(Saliency(model, case.signed), rows, x, max_batch, classes)
            pure_forwards(model, fwd, x, max_batch)

        class Both:  # time inside the explainer and inside the model's own forwards, for timed_pair
            @property
            def seconds(self) -> float:
                return counted.seconds + counted_model.seconds

            @seconds.setter
            def seconds(self, value: float) -> None:
                counted.seconds = counted_model.seconds = value

        t_ours, t_pure, t_inside, res = timed_pair(lambda: fn(counted_model, x, y, counted, **params), Both(), pure,
                                                   repeats)
        ours = res.scores.double().cpu().numpy()
        row: dict[str, Any] = dict(metric=case.metric, unit="explainer rows + forwards",
                                   calls_per_image=f"{rows / n:.0f} + {fwd / n:.0f}", ours_s=t_ours, pure_s=t_pure,
                                   ratio=t_ours / t_pure, inside_s=t_inside, ratio_inside=t_ours / t_inside,
                                   mean=float(np.nanmean(ours)))
        if device == "cpu":
            t_ref, ref = best_of(lambda: quantus_explain_metric(case, model, x, y), repeats, budget_s=20)
            row.update(reference=f"Quantus {case.quantus}", reference_s=t_ref, speedup=t_ref / t_ours,
                       reference_mean=float(np.nanmean(ref)), agreement=agreement(ours, ref, False))
        mem = {}
        for size in (small_n, n):
            mem[size] = min(peak_memory(lambda: fn(model, x[:size], y[:size], Saliency(model, case.signed), **params),
                                        device) for _ in range(3))
        row.update(memory_small=mem[small_n], memory_large=mem[n])
        results.append(row)
        print(line(row), flush=True)
    return dict(header(device, n=n, small_n=small_n, max_batch=max_batch,
                       settings=f"LeNet-sized random CNN on 1x32x32, input-gradient explainer, n_samples = {samples}, "
                                f"max_batch = {max_batch}, best of {repeats} interleaved"), results=results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.alignment", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer maps, images and samples (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--n-maps", type=int, default=None, help="maps for the map metrics (default 256, quick 16)")
    parser.add_argument("--n", type=int, default=None, help="images for the re-explanation metrics (default 64, quick 8)")
    parser.add_argument("--samples", type=int, default=None, help="perturbed copies per image (default 10, quick 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 5, quick 1)")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: all)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    only = set(filter(None, args.metrics.split(",")))
    repeats = args.repeats or (1 if args.quick else 5)
    maps = run_maps(args.n_maps or (16 if args.quick else 256), args.device, repeats, only)
    explain = run_explain(args.n or (8 if args.quick else 64), args.samples or (3 if args.quick else 10), args.device,
                          args.max_batch, repeats, only)
    for report, unit in ((maps, "forwards"), (explain, "explainer rows + forwards")):
        if report["results"]:
            print()
            print(markdown(report, unit))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(maps=maps, explain=explain), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
