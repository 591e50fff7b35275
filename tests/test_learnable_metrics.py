"""Learnable metrics equal xaibench's ordinary metrics when evaluated without gradient, and carry
gradient to the weights where they are differentiable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xaibench
from xaibench.data.mosaics import build_mosaics, tile_masks
from xaibench.errors import InputError, UnknownNameError
from xaibench.metrics import focus, relevance_mass_accuracy
from xaibench.metrics.irof import irof
from xaibench.metrics.learnable import learnable_metric
from xaibench.metrics.road import road
from xaibench.metrics.robustness import relative_input_stability
from xaibench.models import DigitsCNN
from xaibench.perturbation.imputation import linear_impute


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model(x).argmax(1)
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 6:20] = True
    return model, x, t, masks


def _explain(model, name="gradcam", differentiable=False):
    return xaibench.explainer(name, model, sign="positive", differentiable=differentiable)


def test_rma_equals_the_ordinary_metric_and_is_differentiable(setup):
    model, x, t, masks = setup
    ordinary = relevance_mass_accuracy(_explain(model)(x, t), masks).scores
    learnable = learnable_metric("rma").evaluate(model, x, t, _explain(model, differentiable=True), masks)
    torch.testing.assert_close(learnable.detach().double(), ordinary.double(), rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(learnable.sum(), model.fc.weight)
    assert grad.abs().sum() > 0


def test_harmony_focus_is_ordinary_focus_on_the_positive_tile(setup):
    model, x, _, _ = setup
    metric = learnable_metric("focus")
    scores = metric.evaluate(model, x, None, _explain(model, "guided_backprop", differentiable=True))
    # explicit construction: tiles x[i], x[2+i], x[4+i], x[6+i] at half size; positive tile by full-size probability
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    mosaic = torch.zeros(2, 3, 32, 32)
    for i in range(2):
        mosaic[i, :, :16, :16], mosaic[i, :, :16, 16:] = small[i], small[2 + i]
        mosaic[i, :, 16:, :16], mosaic[i, :, 16:, 16:] = small[4 + i], small[6 + i]
    with torch.no_grad():
        cls = model(mosaic).argmax(1)
        probs = model(x).softmax(1)
    best = torch.stack([probs[[i, 2 + i, 4 + i, 6 + i], cls[i]].argmax() for i in range(2)])
    masks = tile_masks(F.one_hot(best, 4), (32, 32))
    ordinary = focus(_explain(model, "guided_backprop")(mosaic, cls), masks).scores
    torch.testing.assert_close(scores.detach().double(), ordinary.double(), rtol=1e-5, atol=1e-7)
    assert scores.requires_grad
    with pytest.raises(InputError, match="divisible by 4, got 6"):
        metric.evaluate(model, x[:6], None, _explain(model))


def test_original_focus_equals_the_ordinary_metric(setup):
    model, x, t, _ = setup
    mos = build_mosaics(x[:, :, ::2, ::2].contiguous(), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 3, seed=0)
    learnable = learnable_metric("focus", variant="original").evaluate(model, mos.images, mos.targets, _explain(model), mos.masks)
    ordinary = focus(_explain(model)(mos.images, mos.targets), mos.masks).scores
    assert torch.isfinite(ordinary).any()
    torch.testing.assert_close(learnable.double(), ordinary.double(), equal_nan=True)


def test_road_evaluate_and_perturbation(setup):
    model, x, t, _ = setup
    metric = learnable_metric("road")
    maps = _explain(model)(x, t)
    score = metric.evaluate(model, x, t, _explain(model), generator=torch.Generator().manual_seed(3))
    ordinary = road(model, x, maps, t, percentages=range(5, 95, 9), lerf=False, seed=3).scores
    torch.testing.assert_close(score, 1 - ordinary)
    # without noise, removing the top u of the pixels is linear imputation of an explicit top-k mask
    metric.noise = 0.0
    u = torch.full((8,), 0.3)
    out = metric.perturb_input(x, maps, torch.Generator(), fraction=u)
    up = F.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0].flatten(1)
    order = torch.sort(-up, dim=1, stable=True).indices[:, : int(1024 * 0.3)]
    removed = torch.zeros(8, 1024, dtype=torch.bool).scatter_(1, order, True).view(8, 32, 32)
    torch.testing.assert_close(out, linear_impute(x, removed))


def test_irof_evaluate_and_perturbation(setup):
    model, x, t, _ = setup
    metric = learnable_metric("irof", n_segments=20)
    maps = _explain(model)(x[:2], t[:2])
    torch.testing.assert_close(metric.evaluate(model, x[:2], t[:2], _explain(model)),
                               irof(model, x[:2], maps, t[:2], n_segments=20).extras["normalised"])
    out = metric.perturb_input(x[:2], maps, torch.Generator(), fraction=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], x[1].mean(dim=(1, 2), keepdim=True).expand_as(x[1]))


def test_is_equals_relative_input_stability(setup):
    model, x, t, _ = setup
    metric = learnable_metric("is", n_samples=3)
    learnable = metric.evaluate(model, x[:4], t[:4], _explain(model, differentiable=True), generator=torch.Generator().manual_seed(5))
    ordinary = relative_input_stability(model, x[:4], t[:4], _explain(model), n_samples=3, seed=5, max_batch=64).scores
    torch.testing.assert_close(learnable.detach().double(), ordinary.double(), rtol=1e-4, atol=1e-6, equal_nan=True)
    assert not metric.higher_is_better and learnable.requires_grad


def test_unknown_learnable_metric_names_close_ones():
    with pytest.raises(UnknownNameError, match="relevance_mass_accuracy"):
        learnable_metric("relevance_mass_acuracy")
