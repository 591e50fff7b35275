"""Localisation metrics against Quantus 0.6.0, scikit-learn and analytic cases."""

from __future__ import annotations


import numpy as np
import pytest
import quantus
import torch
from scipy.ndimage import distance_transform_edt
from sklearn.metrics import roc_auc_score

import xaibench.metrics as M
from xaibench.conformance import localisation_data, quantus_scores
from xaibench.errors import InputError
from xaibench.metrics.localisation import EMPTY_MASK, boxes_to_masks

B, H, W = 6, 16, 16
MASK_METRICS = (
    "pointing_game", "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "attribution_localisation", "auc", "shared_interest",
)


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Signed random maps and masks mixing boxes and random blobs, none empty or full (shared with
    `xaibench conformance`)."""
    return localisation_data(B, H, W)


def ours(name: str, maps: torch.Tensor, masks: torch.Tensor, **params) -> np.ndarray:
    return getattr(M, name)(attributions=maps, masks=masks, **params).scores.double().numpy()


RAW = {"abs": False, "normalise": False, "disable_warnings": True}


@pytest.mark.parametrize("normalise", [False, True])
def test_rank_metrics_match_quantus(data, normalise) -> None:
    """Pointing game, rank accuracy, top-k intersection and AUC use the raw ranking: equal to Quantus
    with its raw definition and with its default max-normalisation (a positive scale)."""
    maps, masks = data
    kw = {**RAW, "normalise": normalise}
    np.testing.assert_array_equal(ours("pointing_game", maps, masks),
                                  quantus_scores(quantus.PointingGame(**kw), maps, masks))
    np.testing.assert_allclose(ours("relevance_rank_accuracy", maps, masks),
                               quantus_scores(quantus.RelevanceRankAccuracy(**kw), maps, masks), atol=1e-12)
    np.testing.assert_allclose(ours("auc", maps, masks), quantus_scores(quantus.AUC(**kw), maps, masks), atol=1e-12)
    for ci in (False, True):
        np.testing.assert_allclose(
            ours("top_k_intersection", maps, masks, k=20, concept_influence=ci),
            quantus_scores(quantus.TopKIntersection(k=20, concept_influence=ci, **kw), maps, masks), atol=1e-12)


def test_mass_metrics_match_quantus(data) -> None:
    """Relevance mass accuracy and attribution localisation count positive relevance: Quantus computes
    the same on the positive part (its RMA uses the raw signed map, so it is fed ``max(a, 0)``)."""
    maps, masks = data
    pos = maps.clamp(min=0)
    expected = quantus_scores(quantus.RelevanceMassAccuracy(**RAW), pos, masks)
    np.testing.assert_allclose(ours("relevance_mass_accuracy", maps, masks), expected, atol=1e-6)
    np.testing.assert_allclose(ours("energy_pointing_game", maps, masks), expected, atol=1e-6)
    al = quantus.AttributionLocalisation(positive_attributions=True, **RAW)
    np.testing.assert_allclose(ours("attribution_localisation", maps, masks), quantus_scores(al, maps, masks),
                               atol=1e-6)
    # Quantus' defaults (abs=True, normalise=True) are reproduced by passing |a|.
    default = quantus.AttributionLocalisation(disable_warnings=True)
    np.testing.assert_allclose(ours("attribution_localisation", maps.abs(), masks),
                               quantus_scores(default, maps, masks), atol=1e-6)


def test_auc_matches_sklearn_with_ties(data) -> None:
    maps, masks = data
    coarse = (maps * 2).round()  # many ties
    expected = [roc_auc_score(m.flatten().numpy(), a.flatten().numpy()) for a, m in zip(coarse, masks)]
    np.testing.assert_allclose(ours("auc", coarse, masks), expected, atol=1e-12)


def test_weighted_attribution_localisation(data) -> None:
    """Kohlbrenner et al.: mu_w = mu * S_tot / S_in; a map uniform over the image scores 1 (chance),
    a map uniform on the mask S_tot / S_in."""
    maps, masks = data
    size = masks.flatten(1).sum(1).double().numpy()
    np.testing.assert_allclose(ours("attribution_localisation", maps, masks, weighted=True),
                               ours("attribution_localisation", maps, masks) * H * W / size, rtol=1e-6)
    uniform = ours("attribution_localisation", masks.float(), masks, weighted=True)
    np.testing.assert_allclose(uniform, H * W / size, rtol=1e-6)
    chance = ours("attribution_localisation", torch.ones(B, H, W), masks, weighted=True)
    np.testing.assert_allclose(chance, np.ones(B), rtol=1e-12)


def test_quantus_weighted_attribution_localisation_is_a_different_quantity(data) -> None:
    """Documented difference: Quantus 0.6.0's weighted variant multiplies mu by S_in / x_batch[2:].size (the
    mask size over the number of values of the batch without its first two images), not by S_tot / S_in."""
    maps, masks = data
    al = quantus.AttributionLocalisation(positive_attributions=True, weighted=True, **RAW)
    size = masks.flatten(1).sum(1).double().numpy()
    expected = ours("attribution_localisation", maps, masks) * size / ((B - 2) * H * W)
    np.testing.assert_allclose(quantus_scores(al, maps, masks), expected, rtol=1e-6)


@pytest.mark.parametrize("name", MASK_METRICS + ("top_k_intersection",))
def test_map_equal_to_mask_scores_one_and_complement_zero(data, name) -> None:
    _, masks = data
    params = {"k": 5} if name == "top_k_intersection" else {}
    params |= {"binarize": "threshold", "t": 0.5} if name == "shared_interest" else {}
    masks = masks[:4]  # boxes with at least 5 pixels
    assert np.allclose(ours(name, masks.float(), masks, **params), 1.0)
    assert np.allclose(ours(name, (~masks).float(), masks, **params), 0.0)


@pytest.mark.parametrize("name", MASK_METRICS + ("top_k_intersection",))
def test_empty_mask_is_nan_with_reason(data, name) -> None:
    maps, masks = data
    masks = masks.clone()
    masks[2] = False
    params = {"k": 0.1} if name == "top_k_intersection" else {}
    result = getattr(M, name)(attributions=maps, masks=masks, **params)
    if name == "top_k_intersection":
        assert result.params["k"] == 26  # 10% of 256 pixels
    assert torch.isnan(result.scores[2]) and result.reasons[2] == EMPTY_MASK
    assert not torch.isnan(result.scores[[0, 1, 3]]).any()
    assert result.reasons[0] is None


def test_undefined_ratios_are_nan() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2] = True
    maps = torch.stack([-torch.ones(4, 4), torch.zeros(4, 4)])
    for name in ("relevance_mass_accuracy", "energy_pointing_game", "attribution_localisation"):
        r = getattr(M, name)(attributions=maps, masks=masks)
        assert torch.isnan(r.scores).all() and r.reasons == ("no positive relevance in the map",) * 2
    r = M.pointing_game(attributions=maps, masks=masks)
    assert torch.isnan(r.scores).all() and "constant" in r.reasons[0]
    r = M.auc(attributions=torch.rand(2, 4, 4), masks=torch.ones(2, 4, 4, dtype=torch.bool))
    assert torch.isnan(r.scores).all() and "whole image" in r.reasons[0]


def test_pointing_game_tolerance_against_distance_transform() -> None:
    """Hit iff the maximum lies within `tolerance` (Euclidean) of the mask."""
    gen = torch.Generator().manual_seed(3)
    masks = torch.zeros(40, 24, 24, dtype=torch.bool)
    masks[:, 8:12, 10:15] = True
    maps = torch.rand(40, 24, 24, generator=gen)
    distance = distance_transform_edt(~masks[0].numpy())  # distance of every pixel to the mask
    d_max = distance.reshape(-1)[maps.flatten(1).argmax(1).numpy()]
    for tol in (0.0, 1.0, 3.0, 4.5, 7.0):
        np.testing.assert_array_equal(ours("pointing_game", maps, masks, tolerance=tol), (d_max <= tol).astype(float))


def test_boxes_as_masks_and_low_resolution_maps() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 1.0  # hot cell at rows 4..7, cols 8..11 of a 16x16 image
    maps[1, 3, 0] = 1.0
    boxes = torch.tensor([[8, 4, 11, 7], [8, 4, 11, 7]])
    masks = boxes_to_masks(boxes, (16, 16))
    assert masks[0].sum() == 16 and masks[0, 4:8, 8:12].all()
    assert ours("pointing_game", maps, masks).tolist() == [1.0, 0.0]
    # Boxes given directly are read on the map's own grid (4x4 here).
    assert ours("pointing_game", maps, torch.tensor([[2, 1, 2, 1], [2, 1, 3, 2]])).tolist() == [1.0, 0.0]
    # Bilinear upsampling keeps most of the energy of the hot cell inside its block.
    assert ours("relevance_mass_accuracy", maps, masks)[0] > 0.5
    with pytest.raises(InputError, match="finer"):
        M.auc(attributions=torch.rand(2, 32, 32), masks=masks)


def test_rank_ties_count_fractionally() -> None:
    """A constant map ranks all pixels equally: expected hits |mask| * K / N."""
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :2] = True  # 16 of 64 pixels
    const = torch.ones(1, 8, 8)
    assert ours("relevance_rank_accuracy", const, masks)[0] == pytest.approx(16 / 64)
    assert ours("top_k_intersection", const, masks, k=10)[0] == pytest.approx(16 / 64)


def test_bad_inputs() -> None:
    maps, masks = torch.rand(2, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(InputError, match="k must be"):
        M.top_k_intersection(attributions=maps, masks=masks, k=65)
    with pytest.raises(InputError, match="tolerance"):
        M.pointing_game(attributions=maps, masks=masks, tolerance=-1)
    with pytest.raises(InputError, match="batch size"):
        M.relevance_mass_accuracy(attributions=maps, masks=masks[:1])
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        M.auc(attributions=maps[0], masks=masks)
    with pytest.raises(InputError, match="NaN"):
        M.auc(attributions=torch.full((2, 8, 8), torch.nan), masks=masks)
    with pytest.raises(InputError, match=r"\[B, 4\]"):
        boxes_to_masks(torch.zeros(2, 3), (8, 8))
