"""Shared Interest against the published test vectors of its reference implementation, the
binarisations against their numpy definitions, the eight cases on constructed examples, and the
data-set level explanation alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaibench.metrics as M
from xaibench.conformance import SHARED_INTEREST_EXPECTED, shared_interest_published
from xaibench.errors import InputError
from xaibench.metrics.alignment import combine, explanation_alignment
from xaibench.metrics.shared_interest import CASES, binarize_maps, shared_interest_cases


@pytest.fixture(scope="module")
def reference_cases() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The five 250x250 cases of mitvis/shared-interest's tests (shared with `xaibench conformance`)."""
    return shared_interest_published()


def si(maps, masks, **params) -> np.ndarray:
    return M.shared_interest(attributions=maps, masks=masks, **params).scores.double().numpy()


def test_published_values(reference_cases) -> None:
    gt, binary, continuous = reference_cases
    for score, expected in SHARED_INTEREST_EXPECTED.items():
        np.testing.assert_allclose(si(binary, gt, score=score, binarize=None), expected, atol=1e-7)
    np.testing.assert_allclose(si(continuous, gt, score="saliency_coverage", binarize=None),
                               SHARED_INTEREST_EXPECTED["saliency_coverage"], atol=1e-7)
    # Binarising the binary maps at any threshold in (0, 1] leaves them as they are.
    np.testing.assert_allclose(si(binary, gt, binarize="threshold", t=0.5), [0.1428571429, 0.25, 0.04, 0.0, 1.0],
                               atol=1e-7)


def test_published_invalid_inputs(reference_cases) -> None:
    gt, binary, continuous = reference_cases
    with pytest.raises(InputError, match="score must be"):
        M.shared_interest(attributions=binary, masks=gt, score="score")
    for score in ("iou_coverage", "ground_truth_coverage"):
        with pytest.raises(InputError, match="binary"):
            M.shared_interest(attributions=continuous, masks=gt, score=score, binarize=None)
    bad = binary.clone()
    bad[:, 0:100, 30:90] = 2
    with pytest.raises(InputError, match="binary"):
        M.shared_interest(attributions=bad, masks=gt, binarize=None)
    with pytest.raises(InputError, match="binarize must be"):
        M.shared_interest(attributions=binary, masks=gt, binarize="otsu")


def _normalise(a: np.ndarray) -> np.ndarray:
    low, high = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    return (a - low) / (high - low)


def test_binarisations_against_numpy_definitions() -> None:
    maps = torch.randn(4, 12, 12, generator=torch.Generator().manual_seed(0))
    norm = _normalise(maps.double().numpy())
    for k in (0.0, 1.0, 2.0):
        expected = norm >= norm.mean(axis=(1, 2), keepdims=True) + k * norm.std(axis=(1, 2), keepdims=True)
        np.testing.assert_array_equal(binarize_maps(maps, "mean_std", k=k)[0].numpy(), expected)
    for q in (0.0, 0.5, 0.9, 0.97, 1.0):
        expected = norm >= np.percentile(norm, q * 100, axis=(1, 2)).reshape(4, 1, 1)
        np.testing.assert_array_equal(binarize_maps(maps, "percentile", q=q)[0].numpy(), expected)
    np.testing.assert_array_equal(binarize_maps(maps, "threshold", t=0.3)[0].numpy(), norm >= 0.3)
    with pytest.raises(InputError, match="q must be"):
        binarize_maps(maps, "percentile", q=90)


def test_undefined_scores_have_reasons() -> None:
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:2, :4] = True
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps[1] = 0.5  # constant
    result = M.shared_interest(attributions=maps, masks=masks)
    assert not torch.isnan(result.scores[0])
    assert "constant" in result.reasons[1] and result.reasons[2] == "empty mask"
    empty = M.shared_interest(attributions=maps[:1], masks=masks[:1], binarize="threshold", t=1.5)
    assert torch.isnan(empty.scores).all() and "empty saliency" in empty.reasons[0]


def test_low_resolution_maps_are_upsampled() -> None:
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :8] = True
    maps = torch.zeros(1, 2, 2)
    maps[0, 0] = 1.0
    # Bilinear upsampling (align_corners=False) of rows (1, 0) to 16 rows gives 1 - (i + 0.5) / 8 + 0.5
    # on rows 4..11 (1 above, 0 below): values >= 0.5 are exactly rows 0..7.
    assert si(maps, masks, binarize="threshold", t=0.5)[0] == pytest.approx(1.0)


def _case_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Five patterns on a 10x10 image with the mask at rows 0..3 (40 pixels)."""
    masks = torch.zeros(5, 10, 10, dtype=torch.bool)
    masks[:, :4] = True
    s = torch.zeros(5, 10, 10)
    s[0, :4] = 1          # identical: IoU 1
    s[1, :1] = 1          # subset: SC 1, GTC 0.25
    s[2, :9] = 1          # superset: GTC 1, SC 40/90
    s[3, 6:] = 1          # elsewhere: all 0
    s[4, :2] = 1          # rows 0..1 and 4..5: SC 0.5, GTC 0.5, IoU 1/3
    s[4, 4:6] = 1
    return s, masks


def test_the_eight_cases() -> None:
    s, masks = _case_batch()
    correct = torch.tensor([True] * 5)
    found = shared_interest_cases(s, masks, correct, binarize="threshold", t=0.5)
    assert found.labels() == ["human aligned", "sufficient subset", "sufficient context", "context dependent", None]
    assert "IoU low" in found.reasons[4]
    wrong = shared_interest_cases(s, masks, ~correct, binarize="threshold", t=0.5)
    assert wrong.labels() == ["confuser", "insufficient subset", "distractor", "context confusion", None]
    assert sum(wrong.counts().values()) == 4 and list(wrong.counts()) == list(CASES)
    np.testing.assert_allclose(found.iou.numpy(), [1.0, 0.25, 40 / 90, 0.0, 1 / 3], rtol=1e-6)
    # With a higher bar for "high", the fifth image is context dependent (both coverages < 0.8).
    assert shared_interest_cases(s, masks, correct, high=0.8, binarize="threshold").labels()[4] == "context dependent"
    with pytest.raises(InputError, match="correct"):
        shared_interest_cases(s, masks, torch.ones(5))


def test_explanation_alignment_is_a_mean_over_batches() -> None:
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(10, 12, 12, generator=gen)
    masks = torch.rand(10, 12, 12, generator=gen) > 0.5
    masks[3] = False
    whole = explanation_alignment(maps, masks)
    assert whole.score == "shared_interest" and whole.params["score"] == "iou_coverage"
    per_image = si(maps, masks)
    assert whole.defined == 9 and whole.reasons[3] == "empty mask"
    assert whole.value == pytest.approx(np.nanmean(per_image))
    parts = combine([explanation_alignment(maps[:4], masks[:4]), explanation_alignment(maps[4:], masks[4:])])
    assert parts.value == pytest.approx(whole.value) and parts.reasons == whole.reasons
    assert explanation_alignment(masks.float(), masks, binarize="threshold").value == pytest.approx(1.0)
    rma = explanation_alignment(maps, masks, score="relevance_mass_accuracy")
    assert rma.value == pytest.approx(float(M.relevance_mass_accuracy(attributions=maps, masks=masks).mean()))
    with pytest.raises(InputError, match="map-vs-mask"):
        explanation_alignment(maps, masks, score="sparseness")
    with pytest.raises(InputError, match="different"):
        combine([whole, rma])
