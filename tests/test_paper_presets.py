"""The papers' presets side by side with transcriptions of the papers' own code.

Each ``harmony_*`` / ``maps_*`` / ``gomez_*`` function below restates, in a few lines, what the
named function of the original repository computes (HARMONY: davor10105/harmony_app,
``harmony_finetune``; MAPS: vital-kolab/maps, ``maps_utils.py``; Gomez & Mouchère:
TristanGomez44/BenchmarkReliability, ``code/``), and the tests compare it with xaibench's preset
on random inputs: values and, where the maps train a model, the gradients to the weights.
"""

from __future__ import annotations

import math
import warnings

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


def harmony_ixg(model, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """IxGAttributor in batch mode: gradient of the target logits (graph kept) times the input,
    channels summed, positive part."""
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, classes[:, None])
    (grad,) = torch.autograd.grad(torch.unbind(out), x, create_graph=True)
    return (grad * x).sum(1).clamp(min=0)


def harmony_gradcam(model, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """GradCamAttributor in batch mode at the hooked layer (here TinyCNN's ``features``, whose maps
    have the input's size, so the bilinear interpolation is the identity): ReLU of the channel sum
    of the activations weighted by their spatially averaged gradients, positive part."""
    saved = {}
    handle = model.features.register_forward_hook(lambda m, i, o: saved.update(a=o))
    out = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(torch.unbind(out.gather(1, classes[:, None])), saved["a"], create_graph=True)
    return F.relu((grad.mean((2, 3), keepdim=True) * saved["a"]).sum(1)).clamp(min=0)


HARMONY_METHODS = {  # xaibench method -> (zennit composite, contrastive)
    "guided_backprop": ("GuidedBackprop", False),
    "excitation_backprop": ("ExcitationBackprop", True),
    "lrp_epsilon_plus": ("EpsilonPlus", True),
}


@pytest.mark.parametrize("name", sorted(HARMONY_METHODS) + ["gradcam", "input_x_gradient"])
def test_harmony_attributors_maps_and_gradients(name):
    from xaibench.training.finetune import HARMONY_METHOD_PARAMS

    torch.manual_seed(0)
    model = TinyCNN().double().eval()  # float64: the contrastive maps are small differences
    x, targets = torch.rand(3, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2, 4])
    weights = torch.rand(3, 16, 16, dtype=torch.float64)
    params = HARMONY_METHOD_PARAMS[name]
    if name == "gradcam":
        params = {**params, "layer": "features"}
    ours = xaibench.explainer(name, model, differentiable=True, **params)(x, targets).double()
    if name in HARMONY_METHODS:
        theirs = harmony_attributor(model, *HARMONY_METHODS[name], x, targets)
    else:
        theirs = (harmony_gradcam if name == "gradcam" else harmony_ixg)(model, x, targets)
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


# --- HARMONY: metric.py ----------------------------------------------------------------------


def harmony_road_removed(a: np.ndarray, u: float, percentages=tuple(range(5, 95, 9))) -> np.ndarray:
    """ROADLearnableMetric.mask: the percentage at index int(u * 10), int(size * p / 100) pixels in
    descending attribution order (the original's 224 * 224 replaced by the map's own size)."""
    order = np.argsort(a, axis=None)[::-1]
    p = percentages[int(u * len(percentages))]
    removed = np.zeros(a.size, dtype=bool)
    removed[order[: int(a.size * p / 100)]] = True
    return removed.reshape(a.shape)


def test_harmony_road_removes_a_share_rounded_down_to_an_evaluation_percentage():
    from xaibench.metrics.learnable import ROAD

    torch.manual_seed(0)
    b, h, w = 10, 12, 20  # 240 pixels: int(240 * p / 100) differs from int(240 * u)
    x, maps = torch.rand(b, 3, h, w), torch.rand(b, h, w)
    u = torch.arange(b) / 10 + 0.05 + torch.rand(b) * 0.04  # one draw in each tenth
    out = ROAD(preset="harmony").perturb_input(x, maps, torch.Generator().manual_seed(0), fraction=u)
    changed = (out != x).any(1).numpy()
    expected = np.stack([harmony_road_removed(maps[i].numpy(), float(u[i])) for i in range(b)])
    np.testing.assert_array_equal(changed, expected)
    plain = ROAD().perturb_input(x, maps, torch.Generator().manual_seed(0), fraction=u)
    assert (plain != x).any(1).sum() > changed.sum()  # the drawn share itself removes more


def harmony_is(model_net, explain_n, xn: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """ISLearnableMetric.__call__ in the network's input space: the maps of each image and of its
    copies xn + 0.05 * noise (every copy kept) divided by max|.| + 1e-9, the ratio
    sum|(r' - r) / (r + 1e-9)| / (sum|(x' - x) / (x + 1e-9)| + 1e-9), the maximum over the copies."""
    preds = model_net(xn).argmax(1)
    r = explain_n(xn, preds)
    out = []
    for xi, pi, ri, ni in zip(xn, preds, r, noise):
        xp = xi[None] + 0.05 * ni
        rp = explain_n(xp, pi.repeat(len(ni)))

        def to_one(m):
            return m.flatten(1) / (m.flatten(1).abs().max(1, keepdim=True)[0] + 1e-9)

        upper = ((to_one(rp) - to_one(ri[None])) / (to_one(ri[None]) + 1e-9)).abs().sum(1)
        lower = ((xp.flatten(1) - xi.flatten()) / (xi.flatten() + 1e-9)).abs().sum(1) + 1e-9
        out.append((upper / lower).max())
    return torch.stack(out)


def harmony_is_term(r: torch.Tensor, r_noisy: torch.Tensor, xn: torch.Tensor, xn_noisy: torch.Tensor) -> torch.Tensor:
    """AttributionSimilarityLearnableMetricTrainer.train's masked term: maps over L1 + 1e-9,
    sum|(r - r') / (r + 1e-9)| / sum|(x - x') / (x + 1e-9)|, averaged."""
    def l1(m):
        return m.flatten(1) / (m.flatten(1).abs().sum(1, keepdim=True) + 1e-9)

    upper = ((l1(r) - l1(r_noisy)) / (l1(r) + 1e-9)).abs().sum(1)
    lower = ((xn - xn_noisy) / (xn + 1e-9)).abs().flatten(1).sum(1)
    return (upper / lower).mean()


def _normalised_tiny():
    from xaibench.models import Normalized

    torch.manual_seed(0)
    net = TinyCNN().double().eval()
    return net, Normalized(net, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)).double()


def test_harmony_is_metric_in_the_networks_input_space():
    from xaibench.metrics.learnable import IS

    net, model = _normalised_tiny()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    explain = xaibench.explainer("gradcam", model, sign="positive", layer="features")
    metric = IS(preset="harmony")
    preds = model(x).argmax(1)
    ours = metric.evaluate(model, x, preds, explain, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((3 * 20, 3, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def explain_n(xn, cls):  # the same maps, called on the network's inputs
        with xaibench.checks.perturbed_inputs():
            return explain(xn * model.std + model.mean, cls).double()

    theirs = harmony_is(net, explain_n, (x - model.mean) / model.std, noise.view(3, 20, 3, 16, 16))
    assert metric.n_samples == 20
    torch.testing.assert_close(ours.double(), theirs, rtol=ATOL, atol=0)


def test_harmony_is_training_term_values_and_gradients():
    from xaibench.metrics.learnable import IS

    net, model = _normalised_tiny()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    pred = model(x).argmax(1)
    metric = IS(preset="harmony")
    noisy = metric.perturb_input(x, generator=torch.Generator().manual_seed(1), model=model)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close((noisy - x) / model.std, 0.05 * noise)
    graph = xaibench.explainer("gradcam", model, sign="positive", layer="features", differentiable=True)
    clean = xaibench.explainer("gradcam", model, sign="positive", layer="features")(x, pred).double()
    with xaibench.checks.perturbed_inputs():
        noisy_maps = graph(noisy, pred).double()
    ours = metric.objective(x, noisy, clean, noisy_maps, model).mean()
    xn, xn_noisy = (x - model.mean) / model.std, (noisy - model.mean) / model.std
    theirs = harmony_is_term(clean, noisy_maps, xn, xn_noisy)
    torch.testing.assert_close(ours, theirs, rtol=ATOL, atol=0)
    weights = [net.features[0].weight, net.fc.weight]
    for a, b in zip(torch.autograd.grad(ours, weights, retain_graph=True), torch.autograd.grad(theirs, weights)):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=ATOL, atol=ATOL * float(b.abs().max()))


def harmony_rma(r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """IoULearnableMetric.__call__: sum(r * m) / sum(r + 1e-9) over the pixels (r the positive map)."""
    return (r * m).flatten(1).sum(1) / (r.flatten(1) + 1e-9).sum(1)


def test_harmony_rma_and_its_gradient_with_the_per_pixel_epsilon():
    from xaibench.metrics.learnable import RMA

    torch.manual_seed(0)
    x, masks = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.rand(3, 8, 8) > 0.5
    scale = torch.tensor(1e-8, dtype=torch.float64, requires_grad=True)  # tiny maps: the epsilon shows

    def explain(inputs, targets):
        return (inputs.mean(1) - 0.4).clamp(min=0) * scale

    ours = RMA(preset="harmony").evaluate(None, x, None, explain, masks)
    theirs = harmony_rma(explain(x, None), masks.double())
    torch.testing.assert_close(ours, theirs, rtol=ATOL, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), scale)[0], torch.autograd.grad(theirs.sum(), scale)[0],
                               rtol=ATOL, atol=0)
    assert not torch.allclose(RMA().evaluate(None, x, None, explain, masks), theirs, rtol=ATOL)


def test_harmony_focus_adds_its_epsilon_to_the_total():
    from xaibench.metrics.learnable import Focus

    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64)

    def explain(inputs, targets):  # tiny positive maps
        return inputs.mean(1) * 1e-8

    metric = Focus(preset="harmony")
    mosaic, _, tiles = metric.mosaics(model, x)
    r = explain(mosaic, None)
    theirs = (r * tiles).flatten(1).sum(1) / (r.flatten(1).sum(1) + 1e-9)  # FocusLearnableMetric.__call__
    torch.testing.assert_close(metric.evaluate(model, x, None, explain), theirs, rtol=ATOL, atol=0)


# --- HARMONY: trainer.py -------------------------------------------------------------------------

FT = {"metric": "focus", "method": "gradcam", "iterations": 4, "batch_size": 8, "lr": 1e-3, "val_every": 2,
      "val_batches": 1, "device": "cpu", "model": {"spec": "builtin:digits-cnn"},
      "data": {"spec": "builtin:digits", "n": 40, "val_fraction": 0.2, "test_n": 8},
      "evaluation": {"bootstrap": 20, "gallery": 0}}


def harmony_validated_updates(iterations: int, every: int, batches_per_epoch: int | None = None) -> list[int]:
    """The update counts after which HARMONY's trainers validate: the iteration trainers run
    ``for i, batch in enumerate(loader)``: update; ``if i > 0 and i % eval_every == 0``: validate;
    ``if i == iterations``: stop. The RMA trainer (IoULearnableMetricTrainer) restarts i every
    epoch and has no iteration stop (here: stop after `iterations` updates)."""
    done, out = 0, []
    if batches_per_epoch is None:
        for i in range(iterations + 1):
            done += 1
            if i > 0 and i % every == 0:
                out.append(done)
        return out
    while done < iterations:
        for i in range(batches_per_epoch):
            done += 1
            if i > 0 and i % every == 0:
                out.append(done)
            if done == iterations:
                break
    return out


def test_harmony_preset_resolves_the_originals_settings():
    from xaibench.training import finetune as ft

    road = ft.parse_finetune_config({**FT, "metric": "road", "method": "guided_backprop", "val_every": None,
                                     "val_batches": None})
    assert (road.preset, road.clip, road.val_every, road.val_batches, road.weight) == ("harmony", 0.0, 50, 10, 0.1)
    assert road.method_params == {"sign": "positive", "reduce": "sum", "init": "logit"}
    rma = ft.parse_finetune_config({**FT, "metric": "rma", "val_every": None, "val_batches": None, "lr": None})
    assert (rma.clip, rma.val_every, rma.val_batches, rma.lr) == (1.0, 20, 5, 3e-6)
    assert ft.qualifying(road, 0.96) and not ft.qualifying(road, 0.95)
    assert ft.qualifying(ft.parse_finetune_config({**FT, "preset": "xaibench"}), 0.95)
    own, orig, labels = torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([0, 2])
    assert [t.tolist() for t in ft.explained(rma, own, orig, labels)] == [[0, 2], [0, 2]]
    assert [t.tolist() for t in ft.explained(road, own, orig, labels)] == [[1, 2], [0, 2]]


@pytest.mark.parametrize("metric", ["road", "rma"])
def test_harmony_loop_counters_and_previous_batch_agreement(tmp_path, monkeypatch, metric):
    from xaibench.training import finetune as ft

    seen, val_batches = [], []
    term = ft.HarmonyModule.metric_term
    step = ft.HarmonyModule.training_step

    def record_term(self, x, pred, masks, z, agreement, gen):
        seen.append((float(agreement), float((z.argmax(1) == pred).float().mean())))
        return term(self, x, pred, masks, z, agreement, gen)

    def record_val(self, batch, batch_idx):
        val_batches.append(batch_idx)

    monkeypatch.setattr(ft.HarmonyModule, "metric_term", record_term)
    monkeypatch.setattr(ft.HarmonyModule, "validation_step", lambda self, b, i: (record_val(self, b, i), step)[0])
    monkeypatch.setattr(ft.HarmonyModule, "on_validation_epoch_end", lambda self: setattr(
        self, "summary", {"step": int(self.global_step), "metric": 0.0, "agreement": 1.0}) or self.log("val_select", 0.0))
    # road: 64 training images, 16 validation images (2 batches of 8); rma: 96 and 24 in batches of 16
    n, batch, iterations = (80, 8, 6) if metric == "road" else (120, 16, 10)
    cfg = {**FT, "metric": metric, "iterations": iterations, "batch_size": batch,
           "data": {**FT["data"], "n": n}}
    result = ft.finetune(cfg, tmp_path / "out", progress=False)
    per_epoch = 96 // 16 if metric == "rma" else None
    assert result.log["step"].tolist() == [0, *harmony_validated_updates(iterations, 2, per_epoch)]
    assert result.log["step"].tolist() == ([0, 3, 5, 7] if metric == "road" else [0, 3, 5, 9])
    assert val_batches == [0, 1] * len(result.log)  # val_batches + 1 batches each time
    if metric == "road":
        seen = seen[1:]  # the first call is the probe before training
        assert len(seen) == 7  # iterations + 1 updates
        assert [a for a, _ in seen] == [0.0] + [b for _, b in seen[:-1]]  # the previous batch's agreement


# --- MAPS: maps_utils.py -------------------------------------------------------------------------


def maps_split_half(outcomes: list[np.ndarray], n: int, rng: np.random.Generator) -> float:
    """maps_utils.py's split-half reliability: per image n trials drawn without replacement,
    np.array_split into two halves, the Pearson correlation of the halves' means, Spearman-Brown."""
    from scipy.stats import pearsonr

    halves = [np.array_split(rng.choice(o, n, replace=False), 2) for o in outcomes]
    r = pearsonr([a.mean() for a, _ in halves], [b.mean() for _, b in halves])[0]
    return 2 * r / (1 + r)


@pytest.mark.parametrize("trials", [7, 8])
def test_maps_split_half_reliability_splits_as_array_split(trials):
    from xaibench.maps import simulate_trials, split_half_reliability

    rng = np.random.default_rng(0)
    frame = simulate_trials(rng.random(30), trials, seed=1)
    outcomes = [g["correct"].to_numpy() for _, g in frame.groupby("image")]
    ours = split_half_reliability(frame, repeats=1, seed=5)
    assert ours == pytest.approx(maps_split_half(outcomes, trials, np.random.default_rng(5)), abs=1e-12)


# --- Gomez & Mouchère: training/multi_obj_epoch_selection.py ---------------------------------------


def gomez_selection(acc: list[float], ece: list[float], epochs: list[int]) -> int:
    """_acc_and_ece_selection: the top max(ceil(10% of the epochs), 5) by accuracy (torch.topk), the
    minimum ECE among them, the first epoch of the whole log with that ECE."""
    a, e = torch.tensor(acc, dtype=torch.float64), torch.tensor(ece, dtype=torch.float64)
    k = min(max(math.ceil(0.1 * len(a)), 5), len(a))
    _, best = torch.topk(a, k=k)
    return int(epochs[int(torch.where(e == e[best].min())[0][0])])


def test_gomez_selection_equals_the_papers_rule_on_random_logs():
    import pandas as pd

    from xaibench.training.selection import select_epoch

    rng = np.random.default_rng(0)
    outside = 0
    for n in (3, 8, 23, 60):
        for _ in range(50):
            acc = rng.permutation(n) / n  # distinct accuracies: torch.topk's order is then defined
            ece = np.round(rng.random(n) * 0.05, 2)  # few values: ties in ECE, also outside the candidates
            log = pd.DataFrame({"epoch": np.arange(n) + 1, "val_accuracy": acc, "ece": ece})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = select_epoch(log, "gomez")
            assert ours == gomez_selection(acc.tolist(), ece.tolist(), log["epoch"].tolist())
            k = max(math.ceil(n / 10), 5)
            outside += ours not in set(log.nlargest(k, "val_accuracy")["epoch"])
    assert outside > 0  # the tie rule did reach outside the candidates


def test_selection_warns_or_avoids_an_undertrained_epoch():
    import pandas as pd

    from xaibench.training.selection import select_epoch

    log = pd.DataFrame({"epoch": [0, 1, 2, 3], "val_accuracy": [0.1, 0.325, 0.833, 0.84],
                        "ece": [0.05, 0.01, 0.04, 0.03]})
    with pytest.warns(UserWarning, match="chose epoch 1 .*0.325.*below the best"):
        assert select_epoch(log, "gomez") == 1
    assert select_epoch(log, "accuracy+ece") == 3  # only epochs within 2 points of the best compete


# --- Gomez & Mouchère: metrics/faithfulness_metrics.py ------------------------------------------------


def gomez_validity_multi_step(deletion: bool, scores: np.ndarray) -> float:
    """validity_rate_multi_step: the share of (image, step) pairs where the score falls (Deletion) or rises."""
    moved = scores[:, :-1] > scores[:, 1:] if deletion else scores[:, :-1] < scores[:, 1:]
    return float(moved.astype(float).mean())


def gomez_validity_single_step(iic_ad: bool, scores: np.ndarray, masked: np.ndarray) -> float:
    """validity_rate_single_step: the share of images whose masked score rises (IIC_AD) or falls (ADD)."""
    return float((scores < masked if iic_ad else scores > masked).astype(float).mean())


def test_gomez_validity_rates():
    from xaibench import metrics

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, targets = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    maps = torch.rand(6, 16, 16)
    kw = {"steps": 8, "patch_size": 2}
    for name, curve, falling in (("deletion_validity_rate", metrics.deletion, True),
                                 ("insertion_validity_rate", metrics.insertion, False)):
        ours = metrics.METRICS.get(name).fn(model, x, maps, targets, **kw).scores
        scores = curve(model, x, maps, targets, normalize=None, **kw).curves.double().numpy()
        assert float(ours.double().mean()) == pytest.approx(gomez_validity_multi_step(falling, scores), abs=1e-7)
    for name, twin, iic_ad in (("average_drop_validity_rate", metrics.average_drop, True),
                               ("average_drop_in_deletion_validity_rate", metrics.average_drop_in_deletion, False)):
        ours = metrics.METRICS.get(name).fn(model, x, maps, targets).scores
        ref = twin(model, x, maps, targets).extras
        expected = gomez_validity_single_step(iic_ad, ref["score"].numpy(), ref["masked_score"].numpy())
        assert float(ours.double().mean()) == pytest.approx(expected, abs=1e-7)
        assert 0 < expected < 1 or name == "average_drop_validity_rate"


def test_harmony_preset_resumes_bitwise_with_the_previous_batch_agreement(tmp_path, monkeypatch):
    from xaibench.training import finetune as ft

    cfg = {**FT, "metric": "road", "iterations": 5, "data": {**FT["data"], "n": 48}}  # 40 training images
    original_step, original_term = ft.HarmonyModule.training_step, ft.HarmonyModule.metric_term
    crash, weights = [True], []

    def crash_at_four(self, batch, batch_idx):
        if self.global_step == 4 and crash[0]:  # after the checkpoint of the validation at update 3
            raise RuntimeError("power cut")
        return original_step(self, batch, batch_idx)

    def record(self, x, pred, masks, z, agreement, gen):
        weights.append((int(self.global_step), float(agreement)))
        return original_term(self, x, pred, masks, z, agreement, gen)

    monkeypatch.setattr(ft.HarmonyModule, "training_step", crash_at_four)
    monkeypatch.setattr(ft.HarmonyModule, "metric_term", record)
    with pytest.raises(RuntimeError, match="power cut"):
        ft.finetune(cfg, tmp_path / "run", progress=False)
    crash[0] = False
    weights.clear()
    resumed = ft.finetune(cfg, tmp_path / "run", resume=True, progress=False)
    resumed_weights = weights[1:]  # the first call is the probe before training
    weights.clear()
    straight = ft.finetune(cfg, tmp_path / "straight", progress=False)
    assert resumed_weights == [w for w in weights[1:] if w[0] >= 3] and len(resumed_weights) == 3
    assert resumed_weights[0][1] > 0  # batch 3 is weighted by batch 2's agreement, restored from the checkpoint
    assert resumed.log["step"].tolist() == straight.log["step"].tolist() == [0, 3, 5]
    same = resumed.log[["metric", "agreement"]].to_numpy() == straight.log[["metric", "agreement"]].to_numpy()
    assert same.all()
    a = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    b = torch.load(straight.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
