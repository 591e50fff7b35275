"""Input validation once, in the shared checks: every metric and explainer refuses images outside
the model's pixel range and empty batches, and checks an explainer's maps as it checks attributions."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import Tensor, nn

import xaibench
from xaibench.checks import input_range, set_input_range
from xaibench.errors import InputError
from xaibench.metrics import METRICS
from xaibench.metrics.randomisation import model_parameter_randomisation

FAST = {"steps": 4, "n_samples": 2, "nr_runs": 2, "n_perturb_samples": 2, "n_segments": 4}
MODEL_BASED = sorted(name for name, m in METRICS.items() if "model" in m.info.requires)
EXPLAINER_BASED = sorted(name for name, m in METRICS.items() if "explainer" in m.info.requires)


class Net(nn.Module):
    """3x16x16 -> 4 classes, with ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def saliency_maps(model: nn.Module):
    return xaibench.explainer("saliency", model)


def call(name: str, model: nn.Module, x: Tensor, explainer=None, **extra) -> object:
    """Call metric `name` with what it requires, small parameters and `extra`."""
    metric = METRICS.get(name)
    b = x.shape[0]
    vocab = {"model": model, "inputs": x, "attributions": torch.rand(b, 16, 16), "targets": torch.zeros(b, dtype=torch.long),
             "labels": torch.zeros(b, dtype=torch.long), "masks": torch.rand(b, 16, 16) > 0.5,
             "explainer": explainer or saliency_maps(model)}
    kwargs = {k: v for k, v in vocab.items() if k in metric.info.requires}
    params = inspect.signature(metric.fn).parameters
    kwargs |= {k: v for k, v in FAST.items() if k in params} | extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.fn(**kwargs)


@pytest.mark.parametrize("name", MODEL_BASED)
@pytest.mark.parametrize(("scale", "hint"), [(255.0, "divide by 255"), (-2.0, "normalis")])
def test_model_based_metrics_refuse_images_outside_the_model_range(net, name, scale, hint) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * scale
    with pytest.raises(InputError, match=hint) as err:
        call(name, net, x)
    assert "set_input_range" in str(err.value)  # says how to opt out


@pytest.mark.parametrize("name", ["deletion", "max_sensitivity", "model_parameter_randomisation", "faithfulness_correlation"])
def test_declared_range_opts_out(net, name) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    assert input_range(net) == (0.0, 1.0)
    set_input_range(net, (0.0, 255.0))
    assert input_range(nn.Sequential(net)) == (0.0, 255.0)  # seen through wrappers
    call(name, net, x)
    set_input_range(net, None)
    call(name, net, x * 2)
    with pytest.raises(InputError, match="low < high"):
        set_input_range(net, (1.0, 0.0))


def test_explainers_refuse_images_outside_the_range(net) -> None:
    for method in ("saliency", "gradcam", "random"):
        with pytest.raises(InputError, match="divide by 255"):
            xaibench.explainer(method, net)(torch.rand(1, 3, 16, 16) * 255, 0)


def test_slight_overshoot_is_accepted(net) -> None:
    x = torch.rand(2, 3, 16, 16).clamp(0.1, 0.9)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.005, 1.005  # resampling overshoot
    call("deletion", net, x)


@pytest.mark.parametrize("name", sorted(name for name, _ in METRICS.items()))
def test_empty_batch_gives_one_clear_error(net, name) -> None:
    x = torch.rand(0, 3, 16, 16)
    with pytest.raises(InputError, match="empty batch"):
        call(name, net, x, attributions=torch.rand(0, 16, 16)) if "attributions" in METRICS.get(name).info.requires \
            else call(name, net, x)


def test_empty_batch_explainer(net) -> None:
    with pytest.raises(InputError, match="empty batch"):
        xaibench.explainer("saliency", net)(torch.rand(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("name", EXPLAINER_BASED)
@pytest.mark.parametrize("dtype", [torch.bool, torch.long])
def test_explainer_maps_are_checked_as_attributions(net, name, dtype) -> None:
    def bad(inputs: Tensor, targets: Tensor) -> Tensor:
        return (inputs.mean(dim=1) > 0.5).to(dtype)

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="floating point") as from_explainer:
        call(name, net, x, explainer=bad)
    with pytest.raises(InputError, match="floating point") as as_attributions:
        METRICS.get("deletion").fn(net, x, bad(x, None), torch.zeros(2, dtype=torch.long))
    assert "explainer" in str(from_explainer.value) and "attributions" in str(as_attributions.value)


@pytest.mark.parametrize("name", EXPLAINER_BASED)
def test_explainer_maps_with_nan_are_refused(net, name) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="NaN or Inf"):
        call(name, net, x, explainer=lambda i, t: torch.full((i.shape[0], 16, 16), float("nan")))


def test_overflowing_randomised_maps_score_nan_with_a_reason(net) -> None:
    """The maps of a randomised model may overflow: NaN with a reason in user terms, never an
    error about an internal variable."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    original = net.conv.weight.detach().clone()

    def explainer(inputs: Tensor, targets: Tensor) -> Tensor:
        maps = inputs.mean(dim=1).clone()
        if not torch.equal(net.conv.weight, original):
            maps[0, 0, 0] = float("inf")
        return maps

    r = model_parameter_randomisation(net, x, torch.zeros(2, dtype=torch.long), explainer, layers=["conv"])
    assert torch.isnan(r.scores[0]) and not torch.isnan(r.scores[1])
    assert "randomised model" in r.reasons[0] and r.reasons[1] is None
