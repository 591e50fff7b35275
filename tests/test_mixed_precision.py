"""Mixed-precision forwards in the perturbation metrics (``autocast=``): within the documented
tolerance of float32 (docs/metrics-faithfulness.md), and nothing at all when off."""

from __future__ import annotations

import pytest
import torch

import xaibench
from xaibench.data import collate, load_dataset
from xaibench.errors import InputError
from xaibench.metrics import deletion, insertion
from xaibench.perturbation.forward import class_scores

# The documented tolerance of bfloat16 forwards against float32 (per-image relative, and the mean).
BF16_REL, BF16_MEAN = 0.05, 0.005


@pytest.fixture(scope="module")
def digits():
    """The trained digits CNN (confident logits: where bfloat16 rounding shows most) on 32 test
    images, their predicted classes and saliency maps."""
    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    data = load_dataset("builtin:digits", split="test")
    x = collate([data[i] for i in range(32)]).images
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, xaibench.explainer("saliency", model)(x, t), t


@pytest.mark.parametrize("metric", [deletion, insertion])
@pytest.mark.parametrize("normalize", ["original", None])
def test_bfloat16_scores_stay_within_the_documented_tolerance(digits, metric, normalize):
    model, x, maps, t = digits
    full = metric(model, x, maps, t, steps=10, normalize=normalize)
    mixed = metric(model, x, maps, t, steps=10, normalize=normalize, autocast="bfloat16")
    assert mixed.scores.dtype == torch.float32 and mixed.params["autocast"] == "bfloat16"
    assert not torch.equal(mixed.curves, full.curves)  # the forwards did run in bfloat16
    assert ((mixed.scores - full.scores).abs() <= BF16_REL * full.scores.abs()).all()
    assert abs(mixed.mean() - full.mean()) <= BF16_MEAN


def test_off_is_bitwise_the_float32_path_and_keeps_an_outer_autocast(digits):
    model, x, maps, t = digits
    default = insertion(model, x, maps, t, steps=10)
    off = insertion(model, x, maps, t, steps=10, autocast=None)
    assert torch.equal(off.scores, default.scores) and torch.equal(off.curves, default.curves)
    # the float32 path is the model's own forward, nothing cast: class_scores equals softmax(model(x))
    with torch.no_grad():
        direct = model(x).softmax(1)[torch.arange(32), t]
    assert torch.equal(class_scores(model, x, t, max_batch=32, autocast=None), direct)
    # None opens no region of its own, so a caller's autocast stays in force
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = class_scores(model, x, t, max_batch=32)
    assert torch.equal(outer, class_scores(model, x, t, max_batch=32, autocast="bfloat16"))


def test_unknown_autocast_dtype_is_named():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(InputError, match=r"autocast must be None or one of \('bfloat16', 'float16'\), got 'fp8'"):
        class_scores(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]), autocast="fp8")
