"""Row-wise average ranks, Pearson and Spearman against SciPy: ties, constant rows, float32 / float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from xaibench import stats
from xaibench.stats import average_ranks, constant_rows, pearson_rows, spearman_rows


def _rows(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 40, generator=g)
    b = torch.randn(8, 40, generator=g)
    a[1] = torch.randint(0, 4, (40,), generator=g).float()  # many ties
    b[2] = torch.randint(0, 2, (40,), generator=g).float()
    b[3] = -2 * a[3] + 1  # perfectly anti-correlated
    a[4] = 0.1  # constant, and its float64 mean is not exactly 0.1
    b[5] = 7.0
    a[6], b[6] = 0.3, 0.3
    return a.to(dtype), b.to(dtype)


def _scipy(fn, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    out = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        out.append(np.nan if np.ptp(x) == 0 or np.ptp(y) == 0 else fn(x, y).statistic)
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pearson_and_spearman_match_scipy(dtype: torch.dtype) -> None:
    a, b = _rows(dtype)
    p, s = pearson_rows(a, b), spearman_rows(a, b)
    assert p.dtype == s.dtype == torch.float64
    np.testing.assert_allclose(p.numpy(), _scipy(sps.pearsonr, a, b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.numpy(), _scipy(sps.spearmanr, a, b), rtol=0, atol=1e-12)
    assert s[3] == -1.0 and p[3] >= -1.0  # clamped to [-1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_rows_are_nan(dtype: torch.dtype) -> None:
    a, b = _rows(dtype)
    undefined = torch.tensor([False, False, False, False, True, True, True, False])
    assert constant_rows(a).tolist() == [False] * 4 + [True, False, True, False]
    assert torch.equal(pearson_rows(a, b).isnan(), undefined)
    assert torch.equal(spearman_rows(a, b).isnan(), undefined)
    assert pearson_rows(torch.ones(2, 1), torch.ones(2, 1)).isnan().all()  # a single value has no variance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_ranks_match_scipy(dtype: torch.dtype) -> None:
    a, _ = _rows(dtype)
    expected = sps.rankdata(a.double().numpy(), method="average", axis=1)
    np.testing.assert_array_equal(average_ranks(a).numpy(), expected)


def test_average_ranks_accelerator_path_matches_scipy() -> None:
    """The sort / running-max path used off the CPU, run here on CPU tensors."""
    a, _ = _rows(torch.float64)
    expected = sps.rankdata(a.numpy(), method="average", axis=1)
    np.testing.assert_array_equal(stats._average_ranks_torch(a).numpy(), expected)
