"""Differentiable attribution: gradients of map functions match finite differences, and the
differentiable mode gives the ordinary maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xaibench
from xaibench.errors import InputError
from xaibench.explainers.differentiable import DIFFERENTIABLE
from xaibench.models import DigitsCNN


class Tiny(nn.Module):
    """conv(3->2) + ReLU (the CAM layer 'act', 4x4) -> mean -> linear(2->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_gradcam_map_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = Tiny().double().eval()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    targets = torch.tensor([0, 2])
    weights = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    explain = xaibench.explainer("gradcam", model, differentiable=True, layer="act")

    def f() -> torch.Tensor:  # a scalar function of the raw Grad-CAM maps [B, 1, 4, 4]
        return (explain.attribute(x, targets) * weights).sum()

    params = [model.conv.weight, model.fc.weight]
    analytic = torch.autograd.grad(f(), params)
    h = 1e-6
    for p, g in zip(params, analytic):
        numeric = torch.zeros_like(p)
        flat, nflat = p.data.view(-1), numeric.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = float(f().detach())
            flat[i] = old - h
            down = float(f().detach())
            flat[i] = old
            nflat[i] = (up - down) / (2 * h)
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_differentiable_mode_gives_the_ordinary_maps_and_gradients(name):
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x, targets = torch.rand(3, 3, 32, 32), torch.tensor([1, 5, 9])
    ordinary = xaibench.explainer(name, model, sign="positive")(x, targets)
    maps = xaibench.explainer(name, model, sign="positive", differentiable=True)(x, targets)
    assert not ordinary.requires_grad and maps.requires_grad
    torch.testing.assert_close(maps.detach(), ordinary, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(maps.sum(), model.features[0].weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_contrastive_lrp_is_target_minus_all_each_l1_normalised():
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x, targets = torch.rand(2, 3, 32, 32), torch.tensor([3, 4])
    raw = xaibench.explainer("lrp_epsilon_plus", model).attribute(x, targets)

    def relevance(out):
        with Gradient(model, EpsilonPlus()) as attr:
            return attr(x.clone().requires_grad_(True), out)[1]

    target, everything = relevance(torch.eye(10)[targets]), relevance(torch.ones(2, 10))
    expected = target / target.abs().sum((1, 2, 3), keepdim=True) - everything / everything.abs().sum((1, 2, 3), keepdim=True)
    torch.testing.assert_close(raw, expected)


def test_methods_without_a_differentiable_mode_are_named():
    with pytest.raises(InputError, match="'scorecam' has no differentiable mode; methods with one: gradcam"):
        xaibench.explainer("scorecam", DigitsCNN().eval(), differentiable=True)
    with pytest.raises(InputError, match="canonizer must be one of"):
        xaibench.explainer("lrp_epsilon_plus", DigitsCNN().eval(), canonizer="vg")


def test_zennit_methods_with_the_resnet_canonizer():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, targets = torch.rand(2, 3, 32, 32), torch.tensor([0, 3])
    for name in ("lrp_epsilon_plus", "excitation_backprop"):
        ordinary = xaibench.explainer(name, model)(x, targets)
        maps = xaibench.explainer(name, model, differentiable=True)(x, targets)
        torch.testing.assert_close(maps.detach(), ordinary)
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # canonizers undone
