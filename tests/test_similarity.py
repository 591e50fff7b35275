"""Map similarity functions against scipy / skimage on random data, and their undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats
import torch
from skimage.metrics import structural_similarity

from xaibench.errors import InputError, WeightsUnavailableError
from xaibench.metrics import similarity as sim


@pytest.fixture
def maps() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 12, 14, generator=g)
    b = 0.5 * a + torch.randn(5, 12, 14, generator=g)
    return a, b


@pytest.fixture
def tied_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued maps with many ties."""
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 4, (4, 9, 9), generator=g).float(), torch.randint(0, 3, (4, 9, 9), generator=g).float()


def per_image(fn, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([fn(x.flatten().double().numpy(), y.flatten().double().numpy()) for x, y in zip(a, b)])


def zs(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def test_distances_match_scipy(maps) -> None:
    a, b = maps
    np.testing.assert_allclose(sim.l1(a, b), per_image(ssd.cityblock, a, b), rtol=1e-5)
    np.testing.assert_allclose(sim.l2(a, b), per_image(ssd.euclidean, a, b), rtol=1e-5)
    np.testing.assert_allclose(sim.l1(a, b, zscore=True), per_image(lambda x, y: ssd.cityblock(zs(x), zs(y)), a, b),
                               rtol=1e-5)
    np.testing.assert_allclose(sim.l2(a, b, zscore=True), per_image(lambda x, y: ssd.euclidean(zs(x), zs(y)), a, b),
                               rtol=1e-5)
    # z-scoring makes the distance invariant to each map's scale and offset
    torch.testing.assert_close(sim.l2(3 * a + 1, b, zscore=True), sim.l2(a, b, zscore=True))
    np.testing.assert_allclose(sim.cosine(a, b), per_image(lambda x, y: 1 - ssd.cosine(x, y), a, b), rtol=1e-5)


@pytest.mark.parametrize("fixture", ["maps", "tied_maps"])
def test_correlations_match_scipy(fixture, request) -> None:
    a, b = request.getfixturevalue(fixture)
    np.testing.assert_allclose(sim.pearson(a, b), per_image(lambda x, y: scipy.stats.pearsonr(x, y)[0], a, b),
                               atol=1e-6)
    np.testing.assert_allclose(sim.spearman(a, b), per_image(lambda x, y: scipy.stats.spearmanr(x, y)[0], a, b),
                               atol=1e-6)
    expected = per_image(lambda x, y: scipy.stats.kendalltau(x, y, variant="b")[0], a, b)
    np.testing.assert_allclose(sim.kendall(a, b), expected, atol=1e-6)


def test_kendall_large_maps_and_inversions() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 37, 41, generator=g)  # 1517 features: not a power of two
    b = (a + torch.randn(2, 37, 41, generator=g)).round(decimals=1)  # ties in b only
    expected = per_image(lambda x, y: scipy.stats.kendalltau(x, y, variant="b")[0], a, b)
    np.testing.assert_allclose(sim.kendall(a, b), expected, atol=1e-6)
    v = torch.randint(0, 6, (3, 50), generator=g).double()
    brute = [(r[:, None] > r[None, :]).triu(1).sum().item() for r in v]
    assert sim._inversions(v).tolist() == brute


def test_constant_maps_are_nan(maps) -> None:
    a, b = maps
    a = a.clone()
    a[1] = 3.0
    for fn in (sim.pearson, sim.spearman, sim.kendall):
        out = fn(a, b)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3, 4]]).all(), fn.__name__
    assert torch.isnan(sim.l2(a, b, zscore=True)[1])
    zero = torch.zeros_like(a)
    assert torch.isnan(sim.cosine(zero, b)).all()
    assert torch.isnan(sim.ssim(torch.ones(2, 8, 8), torch.ones(2, 8, 8))).all()


def test_top_k_intersection_against_sets(maps) -> None:
    a, b = maps
    k = 20
    expected = [
        len(set(np.argsort(-x.flatten().numpy())[:k]) & set(np.argsort(-y.flatten().numpy())[:k])) / k
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(sim.top_k_intersection(a, b, k), expected)
    assert torch.equal(sim.top_k_intersection(a, a, 0.25), torch.ones(5))
    n = a[0].numel()
    assert torch.equal(sim.top_k_intersection(a, -a, n // 2), torch.zeros(5))
    with pytest.raises(InputError):
        sim.top_k_intersection(a, b, 0)
    with pytest.raises(InputError):
        sim.top_k_intersection(a, b, 1.5)


@pytest.mark.parametrize("gaussian", [False, True])
def test_ssim_matches_skimage(maps, gaussian) -> None:
    a, b = maps
    expected = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        rng = max(x.max(), y.max()) - min(x.min(), y.min())
        expected.append(structural_similarity(x, y, data_range=rng, gaussian_weights=gaussian))
    np.testing.assert_allclose(sim.ssim(a, b, gaussian_weights=gaussian), expected, atol=1e-6)
    fixed = [structural_similarity(x, y, data_range=4.0, win_size=5, use_sample_covariance=False)
             for x, y in zip(a.double().numpy(), b.double().numpy())]
    np.testing.assert_allclose(sim.ssim(a, b, data_range=4.0, win_size=5, use_sample_covariance=False), fixed,
                               atol=1e-6)
    torch.testing.assert_close(sim.ssim(a, a), torch.ones(5))


def test_bad_input() -> None:
    with pytest.raises(InputError, match="same shape"):
        sim.l1(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(InputError, match="NaN"):
        sim.pearson(torch.full((2, 4, 4), float("nan")), torch.zeros(2, 4, 4))
    with pytest.raises(InputError, match="window"):
        sim.ssim(torch.rand(2, 5, 5), torch.rand(2, 5, 5))


def test_lpips_never_uses_a_random_backbone(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(WeightsUnavailableError, match="pip install lpips"):
            sim.lpips(torch.rand(1, 32, 32), torch.rand(1, 32, 32))
    else:  # installed, but no backbone weights in an empty cache and no network
        with pytest.raises(WeightsUnavailableError, match="alexnet"):
            sim.lpips(torch.rand(1, 32, 32), torch.rand(1, 32, 32))
