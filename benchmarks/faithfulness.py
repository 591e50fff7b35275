"""Benchmark of the faithfulness metrics: ``python -m benchmarks.faithfulness [--quick] [--device cpu|cuda]``.

For every registered faithfulness metric (plus the cases of `CASES`), on the same model, images
and maps, it measures:

(a) cost: wall time of the metric against the forward passes it cannot avoid, i.e. the same
    number of images (counted by wrapping the model) pushed through
    `xaibench.perturbation.forward.class_scores` at the same `max_batch`, timed interleaved with
    the metric (best of the repeats). Target <= 1.25x. Because a shared machine's load shifts
    between two timings, the in-run ratio (metric wall time / time spent inside the model during
    that same call) is reported too; it is the steadier estimate of the overhead.
(b) speed-up against the reference implementation (Quantus 0.6.0, or Captum for infidelity) at
    identical settings, and agreement of the scores: max |difference| for deterministic metrics,
    difference of the means for metrics whose reference draws its own random subsets.
(c) memory: peak memory growth during the call for two data-set sizes at the same `max_batch`
    (CPU: growth of the peak resident set size, ``VmHWM`` reset through ``/proc/self/clear_refs``
    after ``malloc_trim``, so it counts every page the call touches, tensors and interpreter alike; CUDA:
    ``torch.cuda.max_memory_allocated``). Flat in N means memory is bounded by `max_batch`.

Setting: a LeNet-sized random CNN on 1x32x32 images in [0, 1] (one channel, so that Quantus'
features, which are single channel values, equal xaibench's pixel features and the numbers can
be compared), gradient x input maps. To add a metric colleagues register, add a `Case` row with
its parameters and, where one exists, a `quantus(...)` reference.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import xaibench.metrics as M
from xaibench.conformance import quiet_quantus
from xaibench.metrics.base import MetricResult
from xaibench.perturbation.forward import class_scores

from .harness import Counting, agreement, best_of, clock, header, line, markdown, peak_memory, timed_pair

Reference = Callable[[nn.Module, Tensor, Tensor, Tensor, str], np.ndarray]


def _scores(result: MetricResult) -> np.ndarray:
    return result.scores.double().cpu().numpy()


@dataclass(frozen=True)
class Case:
    """One benchmarked metric: our parameters, the reference run at identical settings (or None),
    and whether the reference draws its own random numbers (then only distributions agree)."""

    metric: str
    params: dict[str, Any] = field(default_factory=dict)
    reference: Reference | None = None
    reference_name: str = ""
    random_reference: bool = False
    values: Callable[[MetricResult], np.ndarray] = _scores  # our numbers comparable to the reference's


def quantus(cls_name: str, softmax: bool = True, post: Callable[[Any], Any] = lambda out: out,
            **params: Any) -> Reference:
    """A Quantus metric class called on numpy copies, softmax (or logit) scores, no normalisation of
    the maps; `post` turns its output into an array (ROAD returns a dict)."""

    def run(model: nn.Module, x: Tensor, a: Tensor, y: Tensor, device: str) -> np.ndarray:
        import quantus as q

        metric = getattr(q, cls_name)(normalise=False, disable_warnings=True, display_progressbar=False, **params)
        with quiet_quantus():
            out = metric(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
                         a_batch=a[:, None].cpu().numpy(), softmax=softmax, device=device, batch_size=x.shape[0])
        return np.asarray(post(out), dtype=np.float64)

    return run


def captum_infidelity(std: float, n_perturb_samples: int, seed: int, normalize: bool) -> Reference:
    """Captum's infidelity fed the very same Gaussian draws as xaibench's default perturbation."""

    def run(model: nn.Module, x: Tensor, a: Tensor, y: Tensor, device: str) -> np.ndarray:
        from captum.metrics import infidelity

        from xaibench.metrics.infidelity import gaussian_perturbation
        from xaibench.seeding import make_generator

        gen, perturb = make_generator(seed, x.device), gaussian_perturbation(std)
        out = infidelity(model, lambda inp: perturb(inp, gen), x, a[:, None].expand_as(x).contiguous(), target=y,
                         n_perturb_samples=n_perturb_samples, normalize=normalize)
        return out.double().cpu().numpy()

    return run


def cases(quick: bool) -> list[Case]:
    """The table of benchmarked metrics. Quantus settings mirror ours (black = 0.0, no normalisation)."""
    runs, step = (10, 64) if quick else (50, 16)
    rows = [
        Case("faithfulness_correlation", dict(nr_runs=runs, subset_size=102, baseline="black"),
             quantus("FaithfulnessCorrelation", nr_runs=runs, subset_size=102, perturb_baseline=0.0, abs=False,
                     return_aggregate=False), "Quantus", random_reference=True),
        Case("faithfulness_estimate", dict(features_in_step=step, baseline="black"),
             quantus("FaithfulnessEstimate", features_in_step=step, perturb_baseline=0.0, abs=False), "Quantus"),
        Case("monotonicity_correlation", dict(features_in_step=2 * step, nr_samples=1, baseline="black"),
             quantus("MonotonicityCorrelation", features_in_step=2 * step, nr_samples=1, perturb_baseline=0.0,
                     abs=True), "Quantus"),
        # Random-model gradient x input maps are far apart: 0.88 gives most images a neighbour.
        Case("sufficiency", dict(threshold=0.88), quantus("Sufficiency", threshold=0.88, abs=True), "Quantus"),
        Case("sensitivity_n", dict(subset_sizes=(0.01, 0.1, 0.5), nr_runs=runs // 2)),
        Case("infidelity", dict(n_perturb_samples=runs, std=0.05, seed=0, output="softmax"),
             captum_infidelity(0.05, runs, 0, False), "Captum"),
    ]
    # Order-based metrics, with the settings of tests/test_quantus_order.py (one channel, so that
    # Quantus' features_in_step counts pixels; ROAD without imputation noise, MoRF only).
    per_step, regions = (64, 8) if quick else (16, 20)
    pct = (10, 50, 90) if quick else (10, 30, 50, 70, 90)
    rows += [
        Case("pixel_flipping", dict(features_per_step=per_step, baseline="black"),
             quantus("PixelFlipping", features_in_step=per_step, perturb_baseline=0.0, return_auc_per_sample=True),
             "Quantus"),
        *[Case("region_perturbation", dict(patch_size=4, regions_evaluation=regions, order=order, output="logit"),
               quantus("RegionPerturbation", softmax=False, patch_size=4, regions_evaluation=regions, order=order,
                       perturb_baseline=0.0), f"Quantus ({order})",
               values=lambda r: r.extras["drops"].double().cpu().numpy()) for order in ("morf", "lerf")],
        Case("road", dict(percentages=pct, noise=0.0, lerf=False),
             quantus("ROAD", percentages=list(pct), noise=0.0, return_aggregate=False,
                     post=lambda out: list(out.values())),
             "Quantus", values=lambda r: r.curves[:, 1:].double().mean(0).cpu().numpy()),
        Case("irof", dict(baseline="black"), quantus("IROF", perturb_baseline=0.0, return_aggregate=False), "Quantus"),
        Case("deletion", dict(steps=2 * regions)),
        Case("insertion", dict(steps=2 * regions)),
    ]
    known = {c.metric for c in rows}
    # Every other registered faithfulness metric runs with its defaults (no reference).
    others = [Case(name) for name, entry in M.METRICS.items()
              if entry.info.category == "faithfulness" and name not in known]
    return rows + others


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def data(n: int, device: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = LeNet().to(device).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g).to(device)
    x.requires_grad_(True)
    logits = model(x)
    y = logits.argmax(1).detach()
    logits.softmax(1).gather(1, y[:, None]).sum().backward()
    a = (x.grad * x).detach().sum(1)
    return model, x.detach(), a, y


def requires_args(name: str, model: nn.Module, x: Tensor, a: Tensor, y: Tensor) -> dict[str, Any]:
    """The vocabulary words a metric takes; masks are a centred square, the explainer gradient x input."""

    def explainer(inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad():
            inp = inputs.detach().requires_grad_(True)
            model(inp).gather(1, targets[:, None]).sum().backward()
        return (inp.grad * inp).detach().sum(1)

    masks = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
    masks[:, 8:24, 8:24] = True
    words = dict(model=model, inputs=x, attributions=a, targets=y, labels=y, masks=masks, explainer=explainer)
    return {w: words[w] for w in M.METRICS.get(name).info.requires}


def pure_forwards(model: nn.Module, n_images: int, like: Tensor, max_batch: int) -> None:
    """Push `n_images` images through class_scores in chunks of `max_batch` (the unavoidable work)."""
    x = torch.rand(min(n_images, max_batch), *like.shape[1:], device=like.device)
    t = torch.zeros(x.shape[0], dtype=torch.long, device=like.device)
    for start in range(0, n_images, max_batch):
        m = min(max_batch, n_images - start)
        class_scores(model, x[:m], t[:m], max_batch=max_batch)


def run(quick: bool, device: str, max_batch: int, n: int, repeats: int,
        only: set[str] | None = None) -> dict[str, Any]:
    base_model, x, a, y = data(n, device)
    small_n = max(4, n // 4)
    results = []
    for case in cases(quick):
        if only and case.metric not in only:
            continue
        model = Counting(base_model)
        params = dict(case.params, **({"max_batch": max_batch} if "max_batch" in _signature(case.metric) else {}))
        fn = M.METRICS.get(case.metric).fn
        fn(**requires_args(case.metric, model, x[:2], a[:2], y[:2]), **params)  # warm-up
        model.images = 0
        fn(**requires_args(case.metric, model, x, a, y), **params)
        n_forward = model.images
        t_ours, t_fwd, t_inside, res = timed_pair(
            lambda: fn(**requires_args(case.metric, model, x, a, y), **params), model,
            lambda: pure_forwards(base_model, n_forward, x, max_batch), repeats,
        )
        name = case.metric + (f" ({case.params['order']})" if "order" in case.params else "")
        row: dict[str, Any] = dict(metric=name, calls_per_image=n_forward / n, ours_s=t_ours,
                                   pure_s=t_fwd, ratio=t_ours / t_fwd, inside_s=t_inside,
                                   ratio_inside=t_ours / t_inside, mean=float(np.nanmean(_scores(res))))
        if case.reference is not None:
            # Best of two when the reference is quick, else one call (slow references dominate the run).
            t_ref, ref = best_of(lambda: case.reference(base_model, x, a, y, device), 1 if quick else 2, budget_s=20)
            ours = case.values(res)
            row.update(reference=case.reference_name, reference_s=t_ref, speedup=t_ref / t_ours,
                       reference_mean=float(np.nanmean(ref)), agreement=agreement(ours, ref, case.random_reference))
        mem = {}
        for size in (small_n, n):
            args = requires_args(case.metric, base_model, x[:size], a[:size], y[:size])
            mem[size] = min(peak_memory(lambda: fn(**args, **params), device) for _ in range(3))
        row.update(memory_small=mem[small_n], memory_large=mem[n])
        results.append(row)
        print(line(row), flush=True)
    return dict(header(device, quick=quick, n=n, small_n=small_n, max_batch=max_batch,
                       settings=f"LeNet-sized random CNN on 1x32x32, gradient x input maps, max_batch = {max_batch}, "
                                f"best of {repeats} interleaved"), results=results)


def _signature(name: str) -> set[str]:
    import inspect

    return set(inspect.signature(M.METRICS.get(name).fn).parameters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faithfulness", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and runs (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=None, help="images (default 64, quick 8)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 5, quick 1)")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: all)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    n = args.n or (8 if args.quick else 64)
    report = run(args.quick, args.device, args.max_batch, n, repeats=args.repeats or (1 if args.quick else 5),
                 only=set(filter(None, args.metrics.split(","))))
    print()
    print(markdown(report, "forwards"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
