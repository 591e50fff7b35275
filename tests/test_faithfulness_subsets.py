"""Oracles for faithfulness_correlation, faithfulness_estimate, monotonicity_correlation,
sensitivity_n and sufficiency: Quantus 0.6.0 side by side, analytic linear models, scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch

import xaibench.metrics as M
from xaibench.errors import InputError
from xaibench.stats import pearson_rows, spearman_rows

from conftest import TinyCNN

quantus = pytest.importorskip("quantus")


class Linear(torch.nn.Module):
    """Logits [w . x, 0]: class 0 is exactly linear in the pixels."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.weight).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


@pytest.fixture
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN(channels=1).eval()  # one channel, so Quantus' features equal ours


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g)
    a = torch.randn(6, 8, 8, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    return x, a, y


@pytest.fixture
def linear() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1, 1, 8, 8, generator=g)
    x = torch.rand(5, 1, 8, 8, generator=g)
    return Linear(w), x, (w * x).sum(1)


def _quantus(metric, model, x, a, y, softmax: bool = True) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                        softmax=softmax, device="cpu")
    return np.asarray(scores, dtype=np.float64)


# --- Quantus side by side (deterministic settings: identical numbers) -------------------------


@pytest.mark.parametrize("step,softmax", [(1, True), (8, False)])
def test_faithfulness_estimate_equals_quantus(cnn, batch, step, softmax):
    x, a, y = batch
    q = quantus.FaithfulnessEstimate(features_in_step=step, normalise=False, abs=False, perturb_baseline=0.0,
                                     disable_warnings=True)
    ours = M.faithfulness_estimate(cnn, x, a, y, features_in_step=step, baseline="black",
                                   output="softmax" if softmax else "logit")
    np.testing.assert_allclose(ours.scores.numpy(), _quantus(q, cnn, x, a, y, softmax), atol=1e-5)


def test_monotonicity_correlation_equals_quantus(cnn, batch):
    x, a, y = batch
    q = quantus.MonotonicityCorrelation(nr_samples=3, features_in_step=4, normalise=False, abs=True,
                                        perturb_baseline=0.0, disable_warnings=True)
    ours = M.monotonicity_correlation(cnn, x, a, y, features_in_step=4, baseline="black", nr_samples=3)
    np.testing.assert_allclose(ours.scores.numpy(), _quantus(q, cnn, x, a, y), atol=1e-5)
    assert ours.params["nr_samples"] == 1  # a deterministic baseline is scored once per group


def test_sufficiency_equals_quantus(cnn):
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 8, 8, generator=g)
    a = centres[torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])] + 0.05 * torch.randn(10, 8, 8, generator=g)
    x = torch.rand(10, 1, 8, 8, generator=g)
    ours = M.sufficiency(cnn, x, a, threshold=0.6)
    q = quantus.Sufficiency(threshold=0.6, disable_warnings=True)
    np.testing.assert_allclose(ours.scores.numpy(), _quantus(q, cnn, x, a, torch.zeros(10, dtype=torch.long)),
                               atol=1e-6)
    assert (ours.extras["neighbours"] == torch.tensor([2, 2, 2, 2, 2, 2, 3, 3, 3, 3])).all()


def test_sufficiency_isolated_image_is_nan_where_quantus_says_zero(cnn, batch):
    x, a, _ = batch
    a = a.clone()
    a[:5] = a[0] + 0.01 * a[1:6]  # five close maps, one far away
    a[5] = 50 * a[5]
    ours = M.sufficiency(cnn, x, a)
    assert torch.isnan(ours.scores[5]) and not torch.isnan(ours.scores[:5]).any()
    assert ours.reasons[5] and ours.reasons[0] is None
    q = quantus.Sufficiency(disable_warnings=True)
    assert _quantus(q, cnn, x, a, torch.zeros(6, dtype=torch.long))[5] == 0.0
    with pytest.raises(InputError, match="at least 2"):
        M.sufficiency(cnn, x[:1], a[:1])


def test_faithfulness_correlation_matches_quantus_in_distribution(cnn):
    """Quantus draws its own subsets (np.random): compare per-image estimates from many runs."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(8, 1, 8, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=g)
    cnn(x).softmax(1).gather(1, y[:, None]).sum().backward()
    signal = (x.grad * x).detach()[:, 0]
    mix = torch.linspace(0.0, 1.0, 8)[:, None, None]  # images range from pure signal to pure noise
    a = (1 - mix) * signal / signal.std() + mix * torch.randn(8, 8, 8, generator=g)
    x = x.detach()
    ours = M.faithfulness_correlation(cnn, x, a, y, nr_runs=400, subset_size=16, seed=0).scores.numpy()
    np.random.seed(0)
    q = quantus.FaithfulnessCorrelation(nr_runs=400, subset_size=16, normalise=False, abs=False,
                                        perturb_baseline=0.0, disable_warnings=True, return_aggregate=False)
    theirs = _quantus(q, cnn, x, a, y)
    # Sampling error of one correlation from 400 runs is about (1 - r^2) / 20 <= 0.05.
    assert np.abs(ours - theirs).max() < 0.2
    assert abs(ours.mean() - theirs.mean()) < 0.07
    assert ours[0] > 0.5 and np.corrcoef(ours, theirs)[0, 1] > 0.9


# --- analytic cases --------------------------------------------------------------------------


def test_linear_model_exact_attributions_score_one(linear):
    model, x, a = linear
    y = torch.zeros(5, dtype=torch.long)
    kw = dict(output="logit", baseline="black")
    assert torch.allclose(M.faithfulness_correlation(model, x, a, y, nr_runs=20, subset_size=10, **kw).scores,
                          torch.ones(5), atol=1e-5)
    assert torch.allclose(M.faithfulness_correlation(model, x, -a, y, nr_runs=20, subset_size=10, **kw).scores,
                          -torch.ones(5), atol=1e-5)
    assert torch.allclose(M.faithfulness_estimate(model, x, a, y, features_in_step=3, **kw).scores,
                          torch.ones(5), atol=1e-5)
    sens = M.sensitivity_n(model, x, a, y, subset_sizes=(2, 0.5, 60), nr_runs=10, **kw)
    assert torch.allclose(sens.curves, torch.ones(5, 3), atol=1e-5)
    assert (sens.extras["subset_size"][0] == torch.tensor([2, 32, 60])).all()
    # (w x)^2 is monotone in |w x|: Spearman exactly 1.
    assert torch.allclose(M.monotonicity_correlation(model, x, a, y, **kw).scores, torch.ones(5), atol=1e-6)


def test_low_resolution_maps_cover_pixel_blocks(linear):
    model, x, a = linear
    y = torch.zeros(5, dtype=torch.long)
    blocks = torch.nn.functional.avg_pool2d(a[:, None], 2)[:, 0] * 4  # attribution of each 2x2 block
    res = M.faithfulness_correlation(model, x, blocks, y, nr_runs=20, subset_size=4, output="logit")
    assert torch.allclose(res.scores, torch.ones(5), atol=1e-5)
    with pytest.raises(InputError, match="tile"):
        M.faithfulness_correlation(model, x, a[:, :5, :5], y)


def test_constant_maps_give_nan_with_reason(cnn, batch):
    x, a, y = batch
    a = a.clone()
    a[2] = 0.5
    res = M.faithfulness_correlation(cnn, x, a, y, nr_runs=10, subset_size=5)
    assert torch.isnan(res.scores[2]) and not torch.isnan(res.scores[[0, 1, 3, 4, 5]]).any()
    assert "constant map" in res.reasons[2] and res.reasons[0] is None
    est = M.faithfulness_estimate(cnn, x, a, y, features_in_step=8)
    assert torch.isnan(est.scores[2]) and est.reasons[2]


def test_random_draws_are_seeded_and_independent_of_max_batch(cnn, batch):
    x, a, y = batch
    r1 = M.faithfulness_correlation(cnn, x, a, y, nr_runs=30, subset_size=6, max_batch=7, seed=5)
    r2 = M.faithfulness_correlation(cnn, x, a, y, nr_runs=30, subset_size=6, max_batch=1000, seed=5)
    r3 = M.faithfulness_correlation(cnn, x, a, y, nr_runs=30, subset_size=6, max_batch=1000, seed=6)
    assert torch.allclose(r1.scores, r2.scores, atol=1e-6)
    assert not torch.allclose(r1.scores, r3.scores)
    m1 = M.monotonicity_correlation(cnn, x, a, y, nr_samples=4, features_in_step=8, seed=1)
    m2 = M.monotonicity_correlation(cnn, x, a, y, nr_samples=4, features_in_step=8, seed=1)
    assert torch.equal(m1.scores, m2.scores) and m1.params["nr_samples"] == 4


def test_correlation_helpers_equal_scipy_with_ties():
    g = torch.Generator().manual_seed(7)
    a = torch.randint(0, 4, (5, 12), generator=g).double()
    b = torch.randn(5, 12, generator=g).double()
    expected_s = [scipy.stats.spearmanr(u, v)[0] for u, v in zip(a.numpy(), b.numpy())]
    expected_p = [scipy.stats.pearsonr(u, v)[0] for u, v in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(spearman_rows(a, b).numpy(), expected_s, atol=1e-12)
    np.testing.assert_allclose(pearson_rows(a, b).numpy(), expected_p, atol=1e-12)
    assert torch.isnan(pearson_rows(torch.ones(1, 4), torch.randn(1, 4))).all()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,change,match",
    [
        ("faithfulness_correlation", dict(subset_size=65), "features"),
        ("faithfulness_correlation", dict(subset_size=1.5), "fraction"),
        ("faithfulness_correlation", dict(nr_runs=0), "nr_runs"),
        ("sensitivity_n", dict(subset_sizes=()), "subset_sizes"),
        ("faithfulness_estimate", dict(features_in_step=0), "features_in_step"),
        ("monotonicity_correlation", dict(output="prob"), "output"),
        ("faithfulness_correlation", dict(max_batch=0), "max_batch"),
    ],
)
def test_bad_parameters_raise(cnn, batch, name, change, match):
    x, a, y = batch
    with pytest.raises(InputError, match=match):
        getattr(M, name)(cnn, x, a, y, **change)


@pytest.mark.parametrize("name", ["faithfulness_correlation", "faithfulness_estimate", "monotonicity_correlation",
                                  "sensitivity_n"])
def test_bad_inputs_raise(cnn, batch, name):
    x, a, y = batch
    fn = getattr(M, name)
    bad = a.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fn(cnn, x, bad, y)
    with pytest.raises(InputError, match="shape"):
        fn(cnn, x, a[:, None], y)
    with pytest.raises(InputError, match="batch size"):
        fn(cnn, x, a[:3], y)
    with pytest.raises(InputError, match="out of range"):
        fn(cnn, x, a, torch.full((6,), 5))


def test_registered_metadata():
    for name in ("faithfulness_correlation", "faithfulness_estimate", "monotonicity_correlation", "sensitivity_n",
                 "infidelity", "sufficiency"):
        info = M.METRICS.get(name).info
        assert info.category == "faithfulness" and info.references and info.cost.forwards != "0"
