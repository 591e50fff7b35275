"""A constant map ranks no feature above another: every metric that ranks the map's features gives
NaN with the reason "constant map" for that image (not a number set by tie order); the other
images of the batch keep their scores, and a random order (which uses no ranking) is exempt."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor, nn

from xaibench.metrics import METRICS
from xaibench.metrics.base import CONSTANT_MAP

RANKED = ("abpc", "aopc", "deletion", "deletion_correlation", "faithfulness_correlation", "faithfulness_estimate",
          "insertion", "insertion_correlation", "irof", "monotonicity_correlation", "pixel_flipping",
          "region_perturbation", "road", "sensitivity_n")
BATCH_DRAWS = ("faithfulness_correlation", "monotonicity_correlation", "sensitivity_n")  # draws depend on the batch
FAST = {"steps": 4, "nr_runs": 4, "n_segments": 4, "regions_evaluation": 4, "features_in_step": 16,
        "subset_size": 8, "n_max_percentage": 0.5, "percentages": (20, 50)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_ranked_metrics_are_the_documented_ones() -> None:
    assert tuple(sorted(n for n, m in METRICS.items() if m.info.ranks_map)) == RANKED


@pytest.mark.parametrize("name", RANKED)
def test_constant_map_gives_nan_with_its_reason(name: str) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    a[1] = 0.25  # constant
    fn = METRICS.get(name).fn
    params = {k: v for k, v in FAST.items() if k in inspect.signature(fn).parameters}
    result = fn(net, x, a, torch.tensor([0, 1, 2]), **params)
    assert torch.isnan(result.scores[1]) and result.reasons[1] == CONSTANT_MAP
    assert result.reasons[0] != CONSTANT_MAP and result.reasons[2] != CONSTANT_MAP
    if result.curves is not None:
        assert torch.isnan(result.curves[1]).all()
    for value in result.extras.values():
        if value.is_floating_point() and value.shape[:1] == (3,):
            assert torch.isnan(value[1]).all()
    if name in BATCH_DRAWS:
        return
    unchanged = fn(net, x[[0, 2]], a[[0, 2]], torch.tensor([0, 2]), **params)
    torch.testing.assert_close(result.scores[[0, 2]], unchanged.scores, equal_nan=True)


@pytest.mark.parametrize("name", ["aopc", "region_perturbation"])
def test_random_order_uses_no_ranking_and_is_scored(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fn = METRICS.get(name).fn
    params = {k: v for k, v in FAST.items() if k in inspect.signature(fn).parameters}
    result = fn(Net().eval(), x, torch.zeros(2, 16, 16), torch.tensor([0, 1]), order="random", **params)
    assert not torch.isnan(result.scores).any()
