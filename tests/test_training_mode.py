"""A model left in training mode: every metric that runs the model and every explainer evaluates it
in eval mode (scores equal the eval-mode scores, batch-norm statistics unchanged), puts every module
back in the mode it was in, and warns."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import Tensor, nn

import xaibench
from xaibench.checks import TRAINING_MODE
from xaibench.explainers import METHODS
from xaibench.metrics import METRICS

FAST = {"steps": 4, "n_samples": 2, "nr_runs": 2, "n_perturb_samples": 2, "n_segments": 4}
MODEL_BASED = sorted(name for name, m in METRICS.items() if "model" in m.info.requires)
EXPLAINERS = sorted({info.name for _, info in METHODS.items() if info.architectures != "vit"})  # the net is a CNN


class BNNet(nn.Module):
    """3x16x16 -> 4 classes, with batch norm and dropout (both behave differently in training mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = BNNet()
    with torch.no_grad():  # non-trivial running statistics, as after some training
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
T = torch.tensor([0, 1])


def _metric(name: str, model: nn.Module) -> Tensor:
    metric = METRICS.get(name)
    vocab = {"model": model, "inputs": X, "attributions": torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1)),
             "targets": T, "labels": T, "masks": torch.rand(2, 16, 16) > 0.5,
             "explainer": xaibench.explainer("saliency", model)}
    kwargs = {k: v for k, v in vocab.items() if k in metric.info.requires}
    params = inspect.signature(metric.fn).parameters
    kwargs |= {k: v for k, v in FAST.items() if k in params}
    return metric.fn(**kwargs).scores


def _explain(name: str, model: nn.Module) -> Tensor:
    return xaibench.explainer(name, model)(X, T)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _check(run) -> None:
    reference = _net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = run(reference)
    model = _net().train()
    model.relu.eval()  # a mixed model: each module's own mode comes back
    before = _state(model)
    with pytest.warns(UserWarning, match="training mode"):
        got = run(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "batch-norm statistics changed"
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("name", MODEL_BASED)
def test_metrics_evaluate_a_training_model_in_eval_mode(name: str) -> None:
    _check(lambda model: _metric(name, model))


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainers_explain_a_training_model_in_eval_mode(name: str) -> None:
    _check(lambda model: _explain(name, model))


def test_eval_model_gets_no_warning_and_the_message_says_what_to_do() -> None:
    model = _net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _metric("deletion", model)
        _explain("gradcam", model)
    assert "model.eval()" in TRAINING_MODE
