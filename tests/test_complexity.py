"""Complexity metrics against Quantus 0.6.0 and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch

import xaibench.metrics as M
from xaibench.conformance import complexity_maps, quantus_scores
from xaibench.errors import InputError

B, H, W = 6, 12, 12


@pytest.fixture
def maps() -> torch.Tensor:
    return complexity_maps(B, H, W)  # shared with `xaibench conformance`


@pytest.mark.parametrize("normalise", [True, False])
def test_match_quantus(maps, normalise) -> None:
    kw = {"normalise": normalise, "disable_warnings": True}  # Quantus default abs=True
    # Quantus adds 1e-7 to |a| before the Gini index: agreement to ~1e-7 relative to the mean magnitude.
    np.testing.assert_allclose(M.sparseness(attributions=maps).scores.double().numpy(),
                               quantus_scores(quantus.Sparseness(**kw), maps), atol=1e-5)
    np.testing.assert_allclose(M.complexity(attributions=maps).scores.double().numpy(),
                               quantus_scores(quantus.Complexity(**kw), maps), atol=1e-5)
    # Quantus' normalise_by_max divides by the maximum over the whole batch by default; ours is per
    # image, which Quantus gives with normalise_axes over the image axes.
    per_image = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}} if normalise else {}
    for eps in (1e-5, 0.3):
        np.testing.assert_array_equal(
            M.effective_complexity(attributions=maps, eps=eps, normalise=normalise).scores.double().numpy(),
            quantus_scores(quantus.EffectiveComplexity(eps=eps, **kw, **per_image), maps))


def test_analytic_extremes() -> None:
    n = H * W
    uniform = -torch.ones(1, H, W)
    one_hot = torch.zeros(1, H, W)
    one_hot[0, 4, 7] = -3.0
    assert M.sparseness(attributions=uniform).scores.item() == pytest.approx(0.0, abs=1e-12)
    assert M.sparseness(attributions=one_hot).scores.item() == pytest.approx((n - 1) / n)
    assert M.complexity(attributions=uniform).scores.item() == pytest.approx(math.log(n))
    assert M.complexity(attributions=one_hot).scores.item() == pytest.approx(0.0, abs=1e-12)
    assert M.effective_complexity(attributions=one_hot).scores.item() == 1
    assert M.effective_complexity(attributions=uniform).scores.item() == n
    # Two equal values: Gini 1 - 2/n; entropy log 2.
    two = torch.zeros(1, H, W)
    two[0, 0, :2] = 1.0
    assert M.sparseness(attributions=two).scores.item() == pytest.approx(1 - 2 / n)
    assert M.complexity(attributions=two).scores.item() == pytest.approx(math.log(2))


def test_zero_map_and_errors() -> None:
    zero = torch.zeros(2, H, W)
    for name in ("sparseness", "complexity"):
        r = getattr(M, name)(attributions=zero)
        assert torch.isnan(r.scores).all() and r.reasons == ("all-zero map", "all-zero map")
    assert M.effective_complexity(attributions=zero).scores.tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="eps"):
        M.effective_complexity(attributions=zero, eps=-1.0)
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        M.sparseness(attributions=torch.rand(2, 1, H, W))
    assert M.sparseness.info.higher_is_better and not M.complexity.info.higher_is_better
    assert not M.effective_complexity.info.higher_is_better
