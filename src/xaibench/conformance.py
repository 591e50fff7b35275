"""Agreement with other libraries: xaibench's metrics and explainers run side by side with their
reference implementations on seeded cases (`xaibench conformance`, docs/conformance.md).

Each `Case` computes xaibench's values and the reference's on the same inputs and states the
tolerance of the claim. A case with a ``difference`` is a documented deviation: the row says why the
two differ and the tolerance bounds by how much. The test suite runs every case (tests/test_conformance.py)
and the side-by-side tests of the metric families take their inputs from here, so what the
documentation claims is what a user regenerates on their own machine and versions.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

HOLDS, DOCUMENTED, NOT_INSTALLED, DIFFERS = "holds", "documented difference", "not installed", "differs"
PUBLISHED_SHARED_INTEREST = "shared-interest (published test vectors)"
F32 = 1e-7  # xaibench's scores are float32; the references compute in float64


@dataclass(frozen=True)
class Case:
    """One side-by-side comparison. `run` returns (xaibench's values, the reference's values)."""

    name: str
    reference: str  # the distribution the reference comes from (its version is reported)
    case: str
    tolerance: float
    run: Callable[[], tuple[np.ndarray, np.ndarray]]
    difference: str = ""  # a documented deviation, bounded by `tolerance`


@dataclass(frozen=True)
class Row:
    """The outcome of one case: `status` is holds, documented difference, not installed or differs."""

    name: str
    reference: str
    version: str
    case: str
    max_difference: float
    tolerance: float
    status: str
    note: str = ""


# --- shared inputs ------------------------------------------------------------------------------


def localisation_data(b: int = 6, h: int = 16, w: int = 16) -> tuple[Tensor, Tensor]:
    """Signed random maps [b, h, w] and masks mixing four boxes and random blobs (none empty or full)."""
    from xaibench.metrics.localisation import boxes_to_masks

    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(b, h, w, generator=gen)
    boxes = torch.tensor([[2, 3, 9, 12], [0, 0, 5, 5], [8, 1, 15, 6], [4, 4, 4, 10]])
    blobs = torch.rand(b - 4, h, w, generator=gen) > 0.6
    return maps, torch.cat([boxes_to_masks(boxes, (h, w)), blobs])


def complexity_maps(b: int = 6, h: int = 12, w: int = 12) -> Tensor:
    """Signed maps of varied scale, the first one sparse."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(b, h, w, generator=gen) * torch.rand(b, 1, 1, generator=gen) * 5
    out[0, 3:] = 0
    return out


def quantus_scores(metric: object, maps: Tensor, masks: Tensor | None = None) -> np.ndarray:
    """A Quantus metric on precomputed maps [B, H, W] (a tiny linear model satisfies its interface)."""
    n, h, w = maps.shape
    x = np.random.default_rng(0).random((n, 1, h, w)).astype(np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * w, 3))
    s = None if masks is None else masks[:, None].float().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=model, x_batch=x, y_batch=np.zeros(n, dtype=int),  # type: ignore[operator]
                     a_batch=maps[:, None].numpy(), s_batch=s)
    return np.asarray(out, dtype=np.float64)


def shared_interest_published() -> tuple[Tensor, Tensor, Tensor]:
    """The five 250x250 cases of mitvis/shared-interest's tests: ground truth, binary and continuous saliency."""
    gt = torch.zeros(5, 250, 250, dtype=torch.bool)
    for i, (rows, cols) in enumerate([(slice(0, 100), slice(0, 100)), (slice(100, 250), slice(200, 250)),
                                      (slice(0, 250), slice(0, 250)), (slice(0, 1), slice(0, 1)),
                                      (slice(50, 100), slice(50, 100))]):
        gt[i, rows, cols] = True
    regions = [(slice(50, 150), slice(50, 150)), (slice(50, 250), slice(100, 250)), (slice(50, 100), slice(50, 100)),
               (slice(100, 150), slice(150, 250)), (slice(50, 100), slice(50, 100))]
    binary, continuous = torch.zeros(5, 250, 250), torch.zeros(5, 250, 250)
    for i, ((rows, cols), value) in enumerate(zip(regions, (0.2, 0.5, 0.9, 0.1, 0.6))):
        binary[i, rows, cols] = 1.0
        continuous[i, rows, cols] = value
    return gt, binary, continuous


# The published expected values of those tests, per score (binary saliency).
SHARED_INTEREST_EXPECTED = {
    "iou_coverage": [0.1428571429, 0.25, 0.04, 0.0, 1.0],
    "saliency_coverage": [0.25, 0.25, 1.0, 0.0, 1.0],
    "ground_truth_coverage": [0.25, 1.0, 0.04, 0.0, 1.0],
}


class SmallCNN(nn.Module):
    """3x8x8 -> 4 classes, smooth (tanh), for the Captum cases."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def model_case(size: int = 8) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A seeded SmallCNN, images [5, 3, size, size] in [0, 1], signed maps [5, size, size] and targets [5]."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    return (SmallCNN().eval(), torch.rand(5, 3, size, size, generator=gen), torch.randn(5, size, size, generator=gen),
            torch.randint(0, 4, (5,), generator=gen))


# --- the cases ----------------------------------------------------------------------------------


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _localisation(name: str, quantus_name: str, **params: object) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def run() -> tuple[np.ndarray, np.ndarray]:
        import quantus

        import xaibench.metrics as M

        maps, masks = localisation_data()
        if name == "relevance_mass_accuracy":
            maps = maps.clamp_min(0)  # Quantus sums raw relevance: the same definition on non-negative maps
        ours = getattr(M, name)(attributions=maps, masks=masks, **params).scores
        theirs = getattr(quantus, quantus_name)(abs=False, normalise=False, disable_warnings=True, **params)
        return _np(ours), quantus_scores(theirs, maps, masks)

    return run


def _complexity(name: str, quantus_name: str, **params: object) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def run() -> tuple[np.ndarray, np.ndarray]:
        import quantus

        import xaibench.metrics as M

        maps = complexity_maps()
        ours = getattr(M, name)(attributions=maps, **params).scores
        theirs = getattr(quantus, quantus_name)(disable_warnings=True, **params)
        return _np(ours), quantus_scores(theirs, maps)

    return run


def _captum_explainer(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def run() -> tuple[np.ndarray, np.ndarray]:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

        import xaibench

        model, x, _, t = model_case()
        params = {"layer": "features.2"} if name == "gradcam" else {}
        ours = xaibench.explainer(name, model, **params)(x, t)
        if name == "saliency":  # the largest gradient magnitude over the channels
            theirs = Saliency(model).attribute(x, target=t, abs=True).amax(1)
        elif name == "integrated_gradients":
            theirs = IntegratedGradients(model).attribute(x, target=t, n_steps=32, method="gausslegendre").sum(1)
        else:  # gradcam at the last convolution, upsampled bilinearly
            cam = LayerGradCam(model, model.features[2]).attribute(x, target=t, relu_attributions=True)
            theirs = LayerAttribution.interpolate(cam, x.shape[-2:], "bilinear")[:, 0]
        return _np(ours), _np(theirs)

    return run


@contextlib.contextmanager
def quiet_quantus() -> Iterator[None]:
    """Silence Quantus' warnings; alias ``np.trapz`` (removed in NumPy 2, called by Quantus 0.6.0)."""
    added = not hasattr(np, "trapz")
    if added:
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if added:
            del np.trapz  # type: ignore[attr-defined]


def _order_metric(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """pixel_flipping (AUC of the softmax curve, 4 pixels a step) or region_perturbation (mean logit drop over
    10 patches of 3x3) against Quantus with a black (0) baseline; Quantus counts channels x pixels."""

    def run() -> tuple[np.ndarray, np.ndarray]:
        import quantus

        import xaibench.metrics as M

        model, x, a, t = model_case(12)  # Quantus needs steps (channels x pixels) that divide 12 x 12
        common = {"perturb_baseline": 0.0, "normalise": False, "disable_warnings": True, "display_progressbar": False}
        if name == "pixel_flipping":
            ours = M.pixel_flipping(model, x, a, t, features_per_step=4).scores
            reference = quantus.PixelFlipping(features_in_step=3 * 4, return_auc_per_sample=True, **common)
        else:
            ours = M.region_perturbation(model, x, a, t, patch_size=3, regions_evaluation=10, output="logit").scores
            reference = quantus.RegionPerturbation(patch_size=3, regions_evaluation=10, order="morf", **common)
        with quiet_quantus():
            theirs = np.asarray(reference(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a[:, None].numpy(),
                                          softmax=name == "pixel_flipping", device="cpu"), dtype=np.float64)
        if name == "region_perturbation":
            theirs = theirs.sum(1) / 11  # the mean over the 11 points of the drop curve (the first is 0)
        return _np(ours), theirs

    return run


def _infidelity() -> tuple[np.ndarray, np.ndarray]:
    from captum.metrics import infidelity

    import xaibench.metrics as M
    from xaibench.metrics.infidelity import gaussian_perturbation
    from xaibench.seeding import make_generator

    model, x, a, t = model_case()
    ours = M.infidelity(model, x, a, t, std=0.1, n_perturb_samples=6, seed=3).scores
    gen, perturb = make_generator(3), gaussian_perturbation(0.1)
    theirs = infidelity(model, lambda inp: perturb(inp, gen), x, a[:, None].expand_as(x).contiguous(), target=t,
                        n_perturb_samples=6)
    return _np(ours), _np(theirs)


def _sensitivity() -> tuple[np.ndarray, np.ndarray]:
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    from xaibench.metrics.robustness import max_sensitivity

    model, x, _, t = model_case()
    ramp = torch.linspace(-0.08, 0.08, 64).view(1, 8, 8)  # one fixed perturbation: no draws to align

    def explain(inputs: Tensor, targets: Tensor) -> Tensor:
        return Saliency(model).attribute(inputs, target=targets, abs=False).sum(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = max_sensitivity(model, x, t, explain, n_samples=4, perturb_func=lambda r, g: r + ramp).scores
        theirs = sensitivity_max(lambda inp, target: (explain(inp[0] if isinstance(inp, tuple) else inp, target),),
                                 x, perturb_func=lambda r: r + ramp, n_perturb_samples=4, target=t)
    return _np(ours), _np(theirs)


def _krippendorff(level: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def run() -> tuple[np.ndarray, np.ndarray]:
        import krippendorff

        from xaibench.reliability import krippendorff_alpha, per_image_ranks

        scores = np.random.default_rng(0).normal(size=(30, 5)) + np.linspace(0, 1, 5)
        ranks = per_image_ranks(scores)
        ours = krippendorff_alpha(ranks, level=level)
        theirs = krippendorff.alpha(reliability_data=ranks, level_of_measurement=level)
        return np.atleast_1d(ours), np.atleast_1d(theirs)

    return run


def _shared_interest(score: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def run() -> tuple[np.ndarray, np.ndarray]:
        import xaibench.metrics as M

        gt, binary, _ = shared_interest_published()
        ours = M.shared_interest(attributions=binary, masks=gt, score=score, binarize=None).scores
        return _np(ours), np.asarray(SHARED_INTEREST_EXPECTED[score])

    return run


def _contrastive_lrp() -> tuple[np.ndarray, np.ndarray]:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    import xaibench
    from xaibench.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x, t = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 4])
    ours = xaibench.explainer("lrp_epsilon_plus", model).attribute(x, t)

    def relevance(out: Tensor) -> Tensor:
        with Gradient(model, EpsilonPlus()) as attr:
            rel = attr(x.clone().requires_grad_(True), out)[1]
        return rel / rel.abs().sum((1, 2, 3), keepdim=True)

    return _np(ours), _np(relevance(torch.eye(10)[t]) - relevance(torch.ones(2, 10)))


def _autotimm_deletion() -> tuple[np.ndarray, np.ndarray]:
    from autotimm.interpretation import ExplanationMetrics as Original

    from xaibench.compat import ExplanationMetrics

    class Fixed:  # an autotimm-style explainer returning one fixed heatmap
        def __init__(self, heat: np.ndarray) -> None:
            self.heat = heat

        def explain(self, image: object, target_class: int | None = None, normalize: bool = True) -> np.ndarray:
            return self.heat

    model, x, a, _ = model_case()
    image = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # uint8: both read it as pixels / 255
    heat = a[0].abs().numpy()
    ours = ExplanationMetrics(model, Fixed(heat), use_cuda=False).deletion(image, target_class=1, steps=8,
                                                                           baseline="black")
    theirs = Original(model, Fixed(heat), use_cuda=False).deletion(image, target_class=1, steps=8, baseline="black")
    return np.asarray(ours["scores"], dtype=np.float64), np.asarray(theirs["scores"], dtype=np.float64)


CASES: tuple[Case, ...] = (
    Case("pointing_game", "quantus", "6 signed 16x16 maps, boxes and blobs", 0.0,
         _localisation("pointing_game", "PointingGame")),
    Case("relevance_rank_accuracy", "quantus", "6 signed 16x16 maps, boxes and blobs", F32,
         _localisation("relevance_rank_accuracy", "RelevanceRankAccuracy")),
    Case("auc", "quantus", "6 signed 16x16 maps, boxes and blobs", F32, _localisation("auc", "AUC")),
    Case("top_k_intersection", "quantus", "6 signed 16x16 maps, k = 20", F32,
         _localisation("top_k_intersection", "TopKIntersection", k=20)),
    Case("relevance_mass_accuracy", "quantus", "6 non-negative 16x16 maps, boxes and blobs", F32,
         _localisation("relevance_mass_accuracy", "RelevanceMassAccuracy")),
    Case("sparseness", "quantus", "6 signed 12x12 maps of varied scale, one sparse", 1e-5,
         _complexity("sparseness", "Sparseness"), "Quantus adds 1e-7 to abs(a) before the Gini index"),
    Case("complexity", "quantus", "6 signed 12x12 maps of varied scale, one sparse", 1e-5,
         _complexity("complexity", "Complexity"), "Quantus adds 1e-7 to abs(a) before the entropy"),
    Case("effective_complexity", "quantus", "6 signed 12x12 maps, eps = 0.3", 0.0,
         _complexity("effective_complexity", "EffectiveComplexity", eps=0.3, normalise=False)),
    Case("pixel_flipping", "quantus", "seeded CNN, 5 images 3x12x12, 4 pixels a step, black baseline", 1e-5,
         _order_metric("pixel_flipping")),
    Case("region_perturbation", "quantus", "seeded CNN, 5 images 3x12x12, 10 patches of 3x3 (MoRF), logits", 1e-5,
         _order_metric("region_perturbation")),
    Case("saliency", "captum", "seeded 3x8x8 CNN, 5 images", 1e-6, _captum_explainer("saliency")),
    Case("integrated_gradients", "captum", "seeded 3x8x8 CNN, 5 images, 32 Gauss-Legendre steps", 1e-5,
         _captum_explainer("integrated_gradients")),
    Case("gradcam", "captum", "seeded 3x8x8 CNN, 5 images, last convolution", 1e-6, _captum_explainer("gradcam")),
    Case("infidelity", "captum", "seeded 3x8x8 CNN, 6 Gaussian draws (std 0.1) shared", 1e-5, _infidelity),
    Case("max_sensitivity", "captum", "seeded 3x8x8 CNN, one fixed ramp perturbation", 1e-6, _sensitivity),
    Case("krippendorff_alpha (ordinal)", "krippendorff", "ranks of 30 images x 5 methods", 1e-12,
         _krippendorff("ordinal")),
    Case("krippendorff_alpha (interval)", "krippendorff", "ranks of 30 images x 5 methods", 1e-12,
         _krippendorff("interval")),
    *(Case(f"shared_interest ({score})", PUBLISHED_SHARED_INTEREST, "the five published 250x250 cases", 1e-7,
           _shared_interest(score)) for score in SHARED_INTEREST_EXPECTED),
    Case("lrp_epsilon_plus (contrastive)", "zennit", "random digits CNN, 2 images", 1e-6, _contrastive_lrp),
    Case("compat.ExplanationMetrics.deletion", "autotimm", "seeded 3x8x8 CNN, a fixed heatmap, 8 steps, black",
         1e-5, _autotimm_deletion),
)

def _version(reference: str) -> str | None:
    """The installed version of `reference`, or None when it cannot be imported."""
    if reference == PUBLISHED_SHARED_INTEREST:
        return "tests of mitvis/shared-interest"
    try:
        importlib.import_module(reference)
    except ImportError:
        return None
    return importlib.metadata.version(reference)


def check(case: Case) -> Row:
    """Run one case and judge it."""
    version = _version(case.reference)
    if version is None:
        return Row(case.name, case.reference, "-", case.case, float("nan"), case.tolerance, NOT_INSTALLED,
                   f"pip install {case.reference}")
    ours, theirs = case.run()
    same_nan = np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = ~np.isnan(ours)
    diff = float(np.max(np.abs(ours[finite] - theirs[finite]), initial=0.0)) if same_nan else float("inf")
    if diff > case.tolerance:
        status = DIFFERS
    else:
        status = DOCUMENTED if case.difference else HOLDS
    return Row(case.name, case.reference, version, case.case, diff, case.tolerance, status, case.difference)


def conformance() -> list[Row]:
    """Every case, in the order of `CASES` (the references' warnings silenced)."""
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        return [check(case) for case in CASES]


def markdown(rows: list[Row]) -> str:
    """The page docs/conformance.md for `rows`."""
    lines = [
        "# Agreement with other libraries",
        "",
        "xaibench's metrics and explainers side by side with their reference implementations on seeded",
        "cases (`xaibench.conformance`): the largest absolute difference over the case's values and the",
        "tolerance claimed. A *documented difference* is a deliberate deviation, bounded by the",
        "tolerance. Regenerate this table with your versions: `xaibench conformance` (`--json`,",
        "`--markdown` writes this page). The metric-family documents explain every convention.",
        "",
        "| name | reference | version | case | max difference | tolerance | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = f"{r.status}: {r.note}" if r.note else r.status
        lines.append(f"| `{r.name}` | {r.reference} | {r.version} | {r.case} | {format_difference(r.max_difference)} | "
                     f"{format_difference(r.tolerance)} | {status} |")
    return "\n".join(lines) + "\n"


def format_difference(x: float) -> str:
    """A difference or tolerance as the table shows it: "-" when not computed, 0, or 1.2e-07."""
    return "-" if np.isnan(x) else ("0" if x == 0 else f"{x:.1e}")
