"""Remove/reveal-in-order faithfulness metrics: analytic oracles and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from xaibench import metrics
from xaibench.errors import InputError, UnknownNameError
from xaibench.metrics.base import METRICS

X = torch.tensor([[[[0.4, 0.3], [0.2, 0.1]]]])
T = torch.tensor([0])


class SumModel(torch.nn.Module):
    """Target-0 logit = sum of all pixels (class 1: minus the sum)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


class ConstantModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 0.5]]).expand(x.shape[0], -1)


class AnyPixelModel(torch.nn.Module):
    """Target logit 1 while any pixel is non-zero, 0 once everything is black."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1).abs().sum(1) > 0).float()
        return torch.stack([s, 1 - s], dim=1)


def test_deletion_insertion_published_sum_case() -> None:
    d = metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, output="logit", baseline="black")
    i = metrics.insertion(SumModel(), X, X[:, 0], T, steps=2, output="logit", baseline="black")
    assert d.scores.item() == pytest.approx(0.4, abs=1e-6)
    assert i.scores.item() == pytest.approx(0.6, abs=1e-6)
    assert torch.allclose(d.curves, torch.tensor([[1.0, 0.3, 0.0]]), atol=1e-6)
    assert torch.allclose(i.curves, torch.tensor([[0.0, 0.7, 1.0]]), atol=1e-6)
    assert d.extras["final_drop"].item() == pytest.approx(1.0)
    raw = metrics.deletion(SumModel(), 2 * X, X[:, 0], T, steps=2, output="logit", normalize=None)
    assert raw.scores.item() == pytest.approx(0.8, abs=1e-6)  # raw trapezoid, not divided by s_0 = 2


def test_deletion_constant_model_and_step_model() -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.01
    a = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    c = metrics.deletion(ConstantModel(), x, a, 0, steps=8)
    assert torch.allclose(c.scores, torch.ones(3)) and torch.allclose(c.extras["final_drop"], torch.zeros(3))
    for s, norm in ((2, "original"), (16, "original"), (5, None), (7, None)):
        r = metrics.deletion(AnyPixelModel(), x, a, 0, steps=s, output="logit", normalize=norm)
        assert torch.allclose(r.scores, torch.full((3,), (s - 0.5) / s), atol=1e-6)
    # autotimm's schedule removes k * (64 // 5) = 12 k pixels: 4 pixels are never removed
    r = metrics.deletion(AnyPixelModel(), x, a, 0, steps=5, output="logit")
    assert torch.allclose(r.scores, torch.ones(3)) and torch.allclose(r.extras["final_drop"], torch.zeros(3))


def autotimm_reference(model, x, heat, target, steps, insert):
    """The published ExplanationMetrics loop, one image at a time (softmax, black baseline)."""
    heat = torch.nn.functional.interpolate(heat[None, None], size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[0, 0]
    order = torch.sort(heat.flatten(), descending=True, stable=True).indices
    per_step = order.numel() // steps
    base = torch.zeros_like(x)
    with torch.no_grad():
        prob = lambda img: float(model(img[None]).softmax(1)[0, target])  # noqa: E731
        original, base_score = prob(x), prob(base)
        scores = [base_score if insert else original]
        for k in range(1, steps + 1):
            chosen = torch.zeros(order.numel(), dtype=torch.bool)
            chosen[order[: k * per_step]] = True
            chosen = chosen.view(1, *x.shape[-2:])
            scores.append(prob(torch.where(chosen, x, base) if insert else torch.where(chosen, base, x)))
    auc = sum((scores[i] + scores[i + 1]) / 2 for i in range(steps)) / steps / original
    final = (scores[-1] - base_score) / abs(original - base_score) if insert else (original - scores[-1]) / original
    return auc, final


def test_deletion_insertion_match_autotimm_loop() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x, maps = torch.rand(3, 3, 12, 12, generator=g), torch.rand(3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 2])
    for insert in (False, True):
        fn = metrics.insertion if insert else metrics.deletion
        r = fn(model, x, maps, t, steps=7, baseline="black")
        key = "final_rise" if insert else "final_drop"
        for i in range(3):
            auc, final = autotimm_reference(model, x[i], maps[i], int(t[i]), 7, insert)
            assert r.scores[i].item() == pytest.approx(auc, abs=1e-5)
            assert r.extras[key][i].item() == pytest.approx(final, abs=1e-4)


def test_final_rise_divides_by_the_absolute_gap_as_autotimm() -> None:
    """autotimm 0.7.37: final_rise = (s_K - s_0) / |s_orig - s_0|. For class 1 of the sum model the black
    baseline (p = 0.5) scores above the image, and revealing every pixel ends at the image: -1, not +1."""
    r = metrics.insertion(SumModel(), X, X[:, 0], torch.tensor([1]), steps=2, baseline="black")
    assert r.curves[0, 0] > r.curves[0, -1]
    assert r.extras["final_rise"].item() == pytest.approx(-1.0, abs=1e-5)
    auc, final = autotimm_reference(SumModel(), X[0], X[0, 0], 1, 2, insert=True)
    assert r.scores.item() == pytest.approx(auc, abs=1e-6) and r.extras["final_rise"].item() == pytest.approx(final)
    # No gap between image and baseline: autotimm reports 0, the rise is undefined here (NaN).
    same = metrics.insertion(ConstantModel(), X, X[:, 0], T, steps=2, baseline="black")
    assert torch.isnan(same.extras["final_rise"]).all() and not torch.isnan(same.scores).any()


def test_granularity_patches_and_superpixels() -> None:
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 16
    a = x[:, 0]
    seg = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]])
    sp = metrics.deletion(SumModel(), x, a, T, steps=4, output="logit", normalize=None, granularity="superpixel",
                          segments=seg)
    patch = metrics.deletion(SumModel(), x, a, T, steps=4, output="logit", normalize=None, patch_size=2)
    # quadrant sums (x16): TL 10, TR 18, BL 42, BR 50 -> removed in the order BR, BL, TR, TL
    expected = torch.tensor([[120.0, 70.0, 28.0, 10.0, 0.0]]) / 16
    assert torch.allclose(sp.curves, expected, atol=1e-5) and torch.allclose(patch.curves, expected, atol=1e-5)
    assert sp.params["granularity"] == "superpixel" and sp.params["segments"] == "given"
    quads = torch.zeros(1, 3, 16, 16)
    quads[0, 0, :8, :8], quads[0, 1, :8, 8:], quads[0, 2, 8:, :8] = 1.0, 1.0, 1.0  # four coloured quadrants
    slic = metrics.deletion(SumModel(), quads, quads.sum(1), T, steps=2, granularity="superpixel", n_segments=4,
                            output="logit", normalize=None)
    # SLIC finds the quadrants (64 px each); two coloured ones (mean 1) go at step 1, the rest at step 2
    assert torch.allclose(slic.curves, torch.tensor([[192.0, 64.0, 0.0]]), atol=1e-4)
    with pytest.raises(InputError, match="granularity"):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, granularity="segment")


def test_constant_map_is_undefined_not_scored_by_tie_order() -> None:
    """The engine breaks ties in raster order, but a constant map ranks nothing: NaN with its reason."""
    r = metrics.deletion(SumModel(), X, torch.ones(1, 2, 2), T, steps=4, output="logit", normalize=None)
    assert torch.isnan(r.scores).all() and torch.isnan(r.curves).all() and "constant map" in str(r.reasons[0])


def test_deletion_undefined_normalisation_is_nan_with_reason() -> None:
    r = metrics.deletion(SumModel(), torch.zeros(2, 1, 2, 2), torch.rand(2, 2, 2), 0, steps=2, output="logit")
    assert torch.isnan(r.scores).all() and r.reasons is not None and "<= 0" in str(r.reasons[0])


def test_pixel_flipping_aopc_abpc_on_sum_model() -> None:
    pf = metrics.pixel_flipping(SumModel(), X, X[:, 0], T, output="logit")
    assert torch.allclose(pf.curves, torch.tensor([[1.0, 0.6, 0.3, 0.1, 0.0]]), atol=1e-6)
    assert pf.scores.item() == pytest.approx(0.45 + 0.2 + 0.05, abs=1e-6)
    ao = metrics.aopc(SumModel(), X, X[:, 0], T, steps=2, output="logit")
    assert ao.scores.item() == pytest.approx((0 + 0.7 + 1.0) / 3, abs=1e-6)
    ab = metrics.abpc(SumModel(), X, X[:, 0], T, steps=2, output="logit")
    # MoRF [1, .3, 0], LeRF [1, .7, 0]: area of [0, .4, 0] with dx = 1/2
    assert ab.scores.item() == pytest.approx(0.2, abs=1e-6)
    assert torch.allclose(ab.extras["lerf"], torch.tensor([[1.0, 0.7, 0.0]]), atol=1e-6)


def test_region_perturbation_orders_on_sum_model() -> None:
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 16
    kw = dict(patch_size=2, regions_evaluation=3, output="logit")
    # patch sums (x16): TL 0+1+4+5=10, TR 2+3+6+7=18, BL 8+9+12+13=42, BR 10+11+14+15=50
    morf = metrics.region_perturbation(SumModel(), x, x[:, 0], T, order="morf", **kw)
    assert torch.allclose(morf.extras["drops"] * 16, torch.tensor([[50.0, 92.0, 110.0]]), atol=1e-4)
    assert morf.scores.item() == pytest.approx((0 + 50 + 92 + 110) / 16 / 4, abs=1e-5)
    lerf = metrics.region_perturbation(SumModel(), x, x[:, 0], T, order="lerf", **kw)
    assert torch.allclose(lerf.extras["drops"] * 16, torch.tensor([[10.0, 28.0, 70.0]]), atol=1e-4)
    rnd = metrics.region_perturbation(SumModel(), x, x[:, 0], T, order="random", seed=1, **kw)
    assert rnd.curves.shape == (1, 4)


def test_irof_with_given_segments_on_sum_model() -> None:
    seg = torch.tensor([[[0, 0], [1, 1]]])
    r = metrics.irof(SumModel(), X, X[:, 0], T, segments=seg, baseline="black", output="logit")
    # segments: top row (mean .35) then bottom (mean .15); curve/s0: [.3, 0]; AOC = 2 - .15
    assert r.scores.item() == pytest.approx(2 - 0.15, abs=1e-6)
    assert r.extras["normalised"].item() == pytest.approx((2 - 0.15) / 2, abs=1e-6)


def test_road_on_sum_model_with_constant_image() -> None:
    x = torch.full((1, 1, 6, 6), 0.5)
    a = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(0))
    r = metrics.road(SumModel(), x, a, T, percentages=[10, 50, 90], noise=0.0, output="logit")
    # linear imputation of a constant image reproduces it exactly
    assert torch.allclose(r.curves, torch.full((1, 4), 18.0), atol=1e-4)
    assert torch.allclose(r.extras["gap"], torch.zeros(1))
    c = metrics.road(SumModel(), x, a, T, percentages=[10, 50], noise=0.0)
    assert c.scores.item() == 1.0  # class 0 stays the arg-max
    noisy = [metrics.road(SumModel(), x, a, T, percentages=[50], noise=0.1, output="logit", seed=s).curves
             for s in (0, 0, 1)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])


def test_gomez_single_step_on_sum_model() -> None:
    a = torch.tensor([[[1.0, 0.0], [0.5, 0.25]]])  # min-max: same; bicubic to same size is identity
    y = float(X.sum())
    kept = float((X[0, 0] * a[0]).sum())
    deleted = float((X[0, 0] * (1 - a[0])).sum())
    ad = metrics.average_drop(SumModel(), X, a, T, output="logit")
    assert ad.scores.item() == pytest.approx((y - kept) / y, abs=1e-6)
    iic = metrics.increase_in_confidence(SumModel(), X, a, T, output="logit")
    assert iic.scores.item() == 0.0
    add = metrics.average_drop_in_deletion(SumModel(), X, a, T, output="logit")
    assert add.scores.item() == pytest.approx((y - deleted) / y, abs=1e-6)
    const = metrics.average_drop(SumModel(), X, torch.ones(1, 2, 2), T, output="logit")
    assert torch.isnan(const.scores).all() and "constant" in str(const.reasons)


@pytest.mark.parametrize("cumulative", [True, False])
def test_gomez_correlations_are_one_when_saliency_is_the_contribution(cumulative: bool) -> None:
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    dc = metrics.deletion_correlation(SumModel(), x, x[:, 0], 0, output="logit", cumulative=cumulative)
    ic = metrics.insertion_correlation(SumModel(), x, x[:, 0], 0, output="logit", baseline="black",
                                       cumulative=cumulative)
    assert torch.allclose(dc.scores, torch.ones(2), atol=1e-5)
    assert torch.allclose(ic.scores, torch.ones(2), atol=1e-5)
    anti = metrics.deletion_correlation(SumModel(), x, -x[:, 0], 0, output="logit", cumulative=cumulative)
    assert torch.allclose(anti.scores, -torch.ones(2), atol=1e-5)
    flat = metrics.deletion_correlation(ConstantModel(), x, x[:, 0], 0, cumulative=cumulative)
    assert torch.isnan(flat.scores).all() and flat.reasons is not None


def test_ic_default_blur_is_gomez_original() -> None:
    """IC starts from the full baseline: with the sum model its first score is the sum of Gomez et al.'s
    blur (a max(H // 5, 9) box made odd, 11 for 50 rows, zero padding: darker borders)."""
    x = torch.rand(2, 1, 50, 40, generator=torch.Generator().manual_seed(0))
    ic = metrics.insertion_correlation(SumModel(), x, x[:, 0], 0, output="logit", steps=10)
    blurred = torch.nn.functional.avg_pool2d(x, 11, stride=1, padding=5, count_include_pad=True)
    torch.testing.assert_close(ic.curves[:, 0], blurred.flatten(1).sum(1), rtol=1e-5, atol=1e-4)
    assert (ic.curves[:, 0] < x.flatten(1).sum(1) - 1.0).all()  # the zero padding darkens the borders


def test_dc_step_grouping_follows_gomez_bound() -> None:
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    r = metrics.deletion_correlation(SumModel(), x, x[:, 0], 0, steps=196, output="logit")
    assert r.curves.shape == (1, 257)  # 256 // 196 = 1 pixel per step
    r = metrics.deletion_correlation(SumModel(), x, x[:, 0], 0, steps=50, output="logit")
    assert r.curves.shape == (1, 53)  # 5 pixels per step -> ceil(256 / 5) = 52 steps + step 0


BAD_CALLS = [
    ("deletion", dict(steps=2)),
    ("insertion", dict(steps=2)),
    ("pixel_flipping", {}),
    ("region_perturbation", dict(patch_size=1, regions_evaluation=2)),
    ("aopc", dict(steps=2)),
    ("abpc", dict(steps=2)),
    ("road", dict(percentages=[50])),
    ("irof", dict(segments=torch.tensor([[[0, 0], [1, 1]]]))),
    ("average_drop", {}),
    ("increase_in_confidence", {}),
    ("average_drop_in_deletion", {}),
    ("deletion_correlation", {}),
    ("insertion_correlation", {}),
]


@pytest.mark.parametrize("name,kw", BAD_CALLS)
def test_bad_inputs_raise(name: str, kw: dict) -> None:
    fn = getattr(metrics, name)
    assert METRICS.get(name).info.category == "faithfulness"
    nan_map = X[:, 0].clone()
    nan_map[0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN"):
        fn(SumModel(), X, nan_map, T, **kw)
    with pytest.raises(InputError, match="Inf"):
        fn(SumModel(), X, nan_map.nan_to_num(nan=math.inf), T, **kw)
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        fn(SumModel(), X, X, T, **kw)  # a 4-d map
    with pytest.raises(InputError, match="finer"):
        fn(SumModel(), X, torch.rand(1, 4, 4), T, **kw)  # a map finer than the image
    with pytest.raises(InputError, match="batch"):
        fn(SumModel(), X, torch.rand(2, 2, 2), T, **kw)
    with pytest.raises(InputError, match="out of range"):
        fn(SumModel(), X, X[:, 0], torch.tensor([2]), **kw)
    with pytest.raises(InputError):
        fn(SumModel(), X[0], X[:, 0], T, **kw)


def test_bad_parameters_raise() -> None:
    with pytest.raises(InputError, match="exceeds"):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=5)
    with pytest.raises(InputError, match="exceeds"):
        metrics.aopc(SumModel(), X, torch.rand(1, 1, 1), T, steps=2)
    with pytest.raises(UnknownNameError):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, baseline="blak")
    with pytest.raises(InputError):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, normalize="max")
    with pytest.raises(InputError):
        metrics.region_perturbation(SumModel(), X, X[:, 0], T, order="best")
    with pytest.raises(InputError):
        metrics.road(SumModel(), X, X[:, 0], T, percentages=[120])
    with pytest.raises(InputError):
        metrics.road(SumModel(), X, X[:, 0], T, noise=-1.0)
    with pytest.raises(InputError):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, output="prob")
    with pytest.raises(InputError):
        metrics.deletion(SumModel(), X, X[:, 0], T, steps=2, max_batch=0)


@pytest.mark.parametrize("name", ["average_drop", "increase_in_confidence", "average_drop_in_deletion"])
def test_gomez_random_baseline_does_not_depend_on_chunking(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    g = torch.Generator().manual_seed(3)
    x, a = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 8, 8, generator=g)
    fn = getattr(metrics, name)
    runs = [fn(model, x, a, 0, baseline="uniform", max_batch=m, seed=4).extras["masked_score"] for m in (2, 5)]
    assert torch.allclose(runs[0], runs[1], atol=1e-6)
    other = fn(model, x, a, 0, baseline="uniform", seed=5).extras["masked_score"]
    assert not torch.allclose(runs[0], other)


def test_road_and_irof_do_not_depend_on_chunking() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 20, 4)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 20, 20, generator=g)
    a = torch.nn.functional.interpolate(torch.rand(3, 1, 5, 5, generator=g), size=(20, 20), mode="bilinear")[:, 0]
    runs = [metrics.road(model, x, a, 0, percentages=[20, 60, 95], noise=0.0, output="logit", max_batch=m,
                         solve_batch=s) for m, s in ((1, None), (5, 2), (64, 64))]
    for r in runs[1:]:
        assert torch.allclose(r.curves, runs[0].curves, atol=1e-4)
        assert torch.allclose(r.extras["lerf"], runs[0].extras["lerf"], atol=1e-4)
    i1 = metrics.irof(model, x, a, 0, max_batch=1)
    i2 = metrics.irof(model, x, a, 0, max_batch=100)
    assert torch.allclose(i1.curves, i2.curves, atol=1e-6)
