"""The papers' presets side by side with transcriptions of the papers' own code.

Each ``harmony_*`` / ``maps_*`` / ``gomez_*`` function below restates, in a few lines, what the
named function of the original repository computes (HARMONY: davor10105/harmony_app,
``harmony_finetune``; MAPS: vital-kolab/maps, ``maps_utils.py``; Gomez & Mouchère:
TristanGomez44/BenchmarkReliability, ``code/``), and the tests compare it with xaibench's preset
on random inputs: values and, where the maps train a model, the gradients to the weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN

import xaibench

ATOL = 1e-5


# --- HARMONY: attributor.py ------------------------------------------------------------------


def harmony_l1(r: torch.Tensor) -> torch.Tensor:
    """utils.backprop_normalize: each image divided by its L1 norm plus 1e-9."""
    return r / (r.flatten(1).abs().sum(1) + 1e-9).view(-1, *([1] * (r.ndim - 1)))


def harmony_attributor(model, composite_name: str, contrastive: bool, x: torch.Tensor, classes: torch.Tensor):
    """GuidedBackpropAttributor / ExcitationBackpropAttributor / EpsilonPlusAttributor in batch mode,
    with train.py's post-processing (only_positive, interpolation to the input size: identity here):
    zennit's Gradient started from ``logits * one_hot`` (the contrastive ones minus the relevance
    started from the logits, both L1-normalised), channels summed, negatives set to 0."""
    from zennit import composites
    from zennit.attribution import Gradient

    x = x.clone().requires_grad_(True)
    out = model(x)
    start = out * F.one_hot(classes, out.shape[-1])
    with Gradient(model=model, composite=getattr(composites, composite_name)(), create_graph=True,
                  retain_graph=True) as attr:
        r = attr(x, start)[1]
    if contrastive:
        with Gradient(model=model, composite=getattr(composites, composite_name)(), create_graph=True,
                      retain_graph=True) as attr:
            r_all = attr(x, out)[1]
        r = harmony_l1(r) - harmony_l1(r_all)
    return r.sum(1).clamp(min=0)


HARMONY_METHODS = {  # xaibench method -> (zennit composite, contrastive)
    "guided_backprop": ("GuidedBackprop", False),
    "excitation_backprop": ("ExcitationBackprop", True),
    "lrp_epsilon_plus": ("EpsilonPlus", True),
}


@pytest.mark.parametrize("name", sorted(HARMONY_METHODS))
def test_harmony_attributors_maps_and_gradients(name):
    from xaibench.training.finetune import HARMONY_METHOD_PARAMS

    torch.manual_seed(0)
    model = TinyCNN().double().eval()  # float64: the contrastive maps are small differences
    x, targets = torch.rand(3, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2, 4])
    weights = torch.rand(3, 16, 16, dtype=torch.float64)
    params = HARMONY_METHOD_PARAMS[name]
    ours = xaibench.explainer(name, model, differentiable=True, **params)(x, targets).double()
    theirs = harmony_attributor(model, *HARMONY_METHODS[name], x, targets)
    scale = float(theirs.detach().abs().max())
    torch.testing.assert_close(ours, theirs, rtol=ATOL, atol=ATOL * scale)
    plain = xaibench.explainer(name, model, **params)(x, targets).double()
    torch.testing.assert_close(plain, theirs.detach(), rtol=ATOL, atol=ATOL * scale)
    g_ours = torch.autograd.grad((ours * weights).sum(), list(model.parameters()), allow_unused=True)
    g_theirs = torch.autograd.grad((theirs * weights).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_ours, g_theirs):
        if b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, b, rtol=ATOL, atol=ATOL * float(b.abs().max()))
    assert any(b is not None and b.abs().sum() > 0 for b in g_theirs)


def test_harmony_guided_backprop_is_the_logit_times_the_one_hot_map_for_positive_logits():
    torch.manual_seed(1)
    model = TinyCNN().eval()
    x, targets = torch.rand(4, 3, 16, 16), torch.tensor([1, 3, 0, 2])
    onehot = xaibench.explainer("guided_backprop", model, reduce="sum")(x, targets)
    logit = xaibench.explainer("guided_backprop", model, reduce="sum", init="logit")(x, targets)
    z = model(x).gather(1, targets[:, None])[:, 0].detach()
    positive = z > 0
    assert positive.any() and (~positive).any()
    torch.testing.assert_close(logit[positive], (onehot * z[:, None, None])[positive])
    assert not torch.allclose(logit[~positive], (onehot * z[:, None, None])[~positive])
