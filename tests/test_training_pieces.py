"""Training pieces against oracles: focal loss spot values, calibration errors (torchmetrics, the
AdaECE reference code, analytic cases), FP images equal to the metrics' own, PGD bounds, model
selection on a scripted log, config validation."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaibench.errors import InputError, UnknownNameError
from xaibench.metrics.gomez import average_drop, average_drop_in_deletion, deletion_correlation, insertion_correlation
from xaibench.models import DigitsCNN
from xaibench.training import parse_train_config
from xaibench.training.calibration import (
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    reliability_bins,
)
from xaibench.training.losses import adaptive_focal_loss, focal_loss
from xaibench.training.perturbations import FP_KINDS, feature_saliency, fp_images, pgd_attack
from xaibench.training.selection import select_epoch

# --- focal loss ---------------------------------------------------------------------------------------


def _logits_for(pt: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax gives class 0 the probability `pt`."""
    return torch.stack([pt.log(), (1 - pt).log()], dim=1)


def test_adaptive_focal_loss_published_spot_values():
    pt = torch.tensor([0.1, 0.3, 0.8], dtype=torch.float64)
    loss = adaptive_focal_loss(_logits_for(pt), torch.zeros(3, dtype=torch.long), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1.35965, 0.41296, 0.04463]), atol=1e-5, rtol=0)
    # gamma 5 / 3 / 1 at the band edges: p_t = 0.2 takes gamma 3, p_t = 0.5 gamma 1
    edge = adaptive_focal_loss(_logits_for(torch.tensor([0.2, 0.5])), torch.zeros(2, dtype=torch.long), reduction="none")
    torch.testing.assert_close(edge, torch.tensor([0.8**3 * -np.log(0.2), 0.5 * -np.log(0.5)], dtype=torch.float32))


def test_focal_loss_gamma_zero_is_cross_entropy_and_gamma_has_no_gradient():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    # adaptive = fixed gamma per sample, gradient included (gamma is a constant of the sample)
    a = logits.clone().requires_grad_(True)
    adaptive_focal_loss(a, y, reduction="sum").backward()
    pt = F.softmax(logits, 1)[torch.arange(8), y]
    gammas = torch.where(pt < 0.2, 5.0, torch.where(pt < 0.5, 3.0, 1.0))
    b = logits.clone().requires_grad_(True)
    sum(focal_loss(b[i:i + 1], y[i:i + 1], gamma=float(g)) for i, g in enumerate(gammas)).backward()
    torch.testing.assert_close(a.grad, b.grad)


# --- calibration --------------------------------------------------------------------------------------


def _probs(n: int = 1000, c: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(1), torch.randint(c, (n,), generator=g))
    return F.softmax(logits, 1), labels


def test_ece_matches_torchmetrics_streaming():
    from torchmetrics.classification import MulticlassCalibrationError

    probs, labels = _probs()
    ref = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    for chunk in range(4):
        ref.update(probs[chunk * 250:(chunk + 1) * 250], labels[chunk * 250:(chunk + 1) * 250])
    torch.testing.assert_close(expected_calibration_error(probs, labels), ref.compute())


def _conf_probs(conf: torch.Tensor) -> torch.Tensor:
    """Two-class probabilities with top-label confidence `conf` (>= 0.5) on class 0."""
    return torch.stack([conf, 1 - conf], dim=1)


def test_calibration_errors_analytic():
    # 100 samples at confidence 0.8, 70 correct: every error is |0.8 - 0.7| = 0.1.
    conf = torch.full((100,), 0.8)
    labels = (torch.arange(100) >= 70).long()  # 70 x class 0 (correct), 30 x class 1
    probs = _conf_probs(conf)
    for fn in (expected_calibration_error, adaptive_calibration_error):
        assert float(fn(probs, labels)) == pytest.approx(0.1, abs=1e-6)
    # class-wise: class 0 predicted 0.8, frequency 0.7; class 1 predicted 0.2, frequency 0.3 -> 0.1
    assert float(classwise_calibration_error(probs, labels)) == pytest.approx(0.1, abs=1e-6)
    # two groups: 50 at 0.95 all correct (gap 0.05), 50 at 0.55 half correct (gap 0.05) -> 0.05
    conf = torch.cat([torch.full((50,), 0.95), torch.full((50,), 0.55)])
    labels = torch.cat([torch.zeros(50), (torch.arange(50) % 2).float()]).long()
    assert float(expected_calibration_error(_conf_probs(conf), labels)) == pytest.approx(0.05, abs=1e-6)
    # perfectly calibrated bins: 0 error
    bins = reliability_bins(torch.full((4,), 0.75), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert int(bins.count.sum()) == 4 and torch.nanmean(bins.accuracy - bins.confidence).abs() < 1e-9


def _adaece_reference(conf: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """Mukhoti et al.'s AdaptiveECELoss (focal_calibration repository), with its first bin closed below."""
    edges = np.interp(np.linspace(0, len(conf), n_bins + 1), np.arange(len(conf)), np.sort(conf))
    _, edges = np.histogram(conf, edges)
    ece = 0.0
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = ((conf > lo) | (i == 0) & (conf >= lo)) & (conf <= hi)
        if in_bin.mean() > 0:
            ece += abs(conf[in_bin].mean() - hits[in_bin].mean()) * in_bin.mean()
    return float(ece)


def test_adaptive_ece_matches_reference_code():
    probs, labels = _probs(777, seed=3)
    conf, pred = probs.max(1)
    ref = _adaece_reference(conf.double().numpy(), (pred == labels).double().numpy(), 15)
    assert float(adaptive_calibration_error(probs, labels)) == pytest.approx(ref, abs=1e-6)
    bins = reliability_bins(conf, (pred == labels).float(), adaptive=True)
    assert int(bins.count.min()) in (51, 52) and int(bins.count.sum()) == 777  # equal mass


def test_classwise_ece_matches_per_class_binary_ece():
    from torchmetrics.functional.classification import binary_calibration_error

    probs, labels = _probs(500, c=4, seed=1)
    per_class = [binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=15) for c in range(4)]
    # torchmetrics' binary ECE bins the predicted probability of the positive class as ours does
    # (its "confidence" is p, its "accuracy" the label): the class-wise ECE is their mean.
    torch.testing.assert_close(classwise_calibration_error(probs, labels), torch.stack(per_class).mean())


# --- FP images are the metrics' images -------------------------------------------------------------------


class Recorder(nn.Module):
    """Records every batch a metric feeds the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.fixture(scope="module")
def digits_setup():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        saliency = feature_saliency(model.features(x))
    return model, x, saliency, torch.tensor([1, 4, 7, 9])


@pytest.mark.parametrize("kind,metric", [("dauc", deletion_correlation), ("iauc", insertion_correlation)])
def test_fp_curve_images_equal_the_metric_rows(digits_setup, kind, metric):
    model, x, saliency, targets = digits_setup
    assert saliency.shape == (4, 8, 8)
    k = torch.tensor([0, 5, 17, 63])
    ours = fp_images(x, saliency, torch.full((4,), FP_KINDS.index(kind)), k)
    rec = Recorder(model)
    metric(rec, x, saliency, targets)  # default steps: one map cell per step (64 cells)
    rows = torch.cat(rec.seen[1:])  # the first call is prepare()'s class count
    assert rows.shape[0] == 4 * 65
    theirs = rows[torch.arange(4) * 65 + k]
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours[1], x[1])  # a real perturbation


@pytest.mark.parametrize("kind,metric", [("ad", average_drop), ("add", average_drop_in_deletion)])
def test_fp_soft_mask_images_equal_the_metric_image(digits_setup, kind, metric):
    model, x, saliency, targets = digits_setup
    ours = fp_images(x, saliency, torch.full((4,), FP_KINDS.index(kind)), torch.zeros(4, dtype=torch.long))
    rec = Recorder(model)
    metric(rec, x, saliency, targets)
    theirs = rec.seen[2]  # prepare's probe, the images, then the masked images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_fp_batch_mixes_kinds_per_image(digits_setup):
    _model, x, saliency, _targets = digits_setup
    kinds, k = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 0, 0])
    mixed = fp_images(x, saliency, kinds, k)
    for i in range(4):
        alone = fp_images(x, saliency, torch.full((4,), int(kinds[i])), k)
        torch.testing.assert_close(mixed[i], alone[i], rtol=0, atol=1e-6)


# --- PGD ----------------------------------------------------------------------------------------------------


def test_pgd_bounds_and_loss_rises(tiny_cnn):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    x[:, :, :4] = 0.0  # pixels on both edges of [0, 1]
    x[:, :, -4:] = 1.0
    y = torch.randint(5, (8,), generator=g)
    tiny_cnn.train()
    eps = 1 / 255
    adv = pgd_attack(tiny_cnn, x, y, eps=eps, step=2 / 255, steps=4)
    assert tiny_cnn.training and all(p.grad is None for p in tiny_cnn.parameters())
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-7 and (adv - x).abs().max() > eps / 2
    tiny_cnn.eval()
    with torch.no_grad():
        clean, attacked = (F.cross_entropy(tiny_cnn(v), y, reduction="none") for v in (x, adv))
    assert (attacked > clean).all()


# --- model selection ------------------------------------------------------------------------------------------


def test_selection_on_a_scripted_log():
    # 12 epochs: top 5 by accuracy = epochs 8 (0.97), 5, 9 (0.96, tie: 5 first), 11 (0.95), 6 (0.94).
    acc = [0.50, 0.70, 0.80, 0.85, 0.90, 0.96, 0.94, 0.93, 0.97, 0.96, 0.92, 0.95]
    ece = [0.01, 0.02, 0.03, 0.04, 0.05, 0.09, 0.07, 0.01, 0.08, 0.06, 0.02, 0.06]
    log = pd.DataFrame({"epoch": range(12), "val_accuracy": acc, "ece": ece})
    assert select_epoch(log, "accuracy") == 8
    assert select_epoch(log, "accuracy+ece") == 9  # ECE 0.06 ties with epoch 11: the more accurate wins
    assert select_epoch(log, "last") == 11
    # 60 epochs: the candidates are the top ceil(10%) = 6
    acc60 = [0.5 + 0.001 * e for e in range(60)]
    ece60 = [0.1] * 60
    ece60[53] = 0.01  # 7th best by accuracy: out
    ece60[55] = 0.02  # 5th best: in
    assert select_epoch(pd.DataFrame({"epoch": range(60), "val_accuracy": acc60, "ece": ece60}), "accuracy+ece") == 55


# --- config validation -------------------------------------------------------------------------------------------

BASE = {"model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits"}}


def test_config_canonical_settings_and_round_trip():
    cfg = parse_train_config({**BASE, "setting": "AP+FL", "lr": 1})
    assert cfg.setting == "fl+ap" and cfg.parts == {"fl", "ap"} and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.loss_weights == (1.0, 0.0)
    fp = parse_train_config({**BASE, "setting": "fp", "interpolation": 4})
    assert fp.loss_weights == pytest.approx((1.6, 0.4))
    back = parse_train_config(tomllib.loads(fp.to_toml()))
    assert back.raw == fp.raw and back.hash == fp.hash
    assert parse_train_config({**BASE, "device": "cuda"}).hash == parse_train_config(BASE).hash


@pytest.mark.parametrize("raw,error,words", [
    ({**BASE, "setting": "fl+fp+pa"}, UnknownNameError, ["'fl+fp+ap'"]),
    ({**BASE, "setting": "focal"}, UnknownNameError, ["setting", "Allowed"]),
    ({**BASE, "epoch": 3}, InputError, ["unknown key 'epoch'", "'epochs'"]),
    ({**BASE, "optimizer": "adamw"}, UnknownNameError, ["'adam'"]),
    ({**BASE, "selection": "ece"}, UnknownNameError, ["selection"]),
    ({**BASE, "data": {"spec": "builtin:digits", "val_fraction": 0.0}}, InputError, ["val_fraction", "'last'"]),
    ({**BASE, "model": {"spec": "builtin:digits-cnn", "weigths": "x"}}, InputError, ["[model]", "'weights'"]),
    ({**BASE, "interpolation": 21}, InputError, ["interpolation"]),
    ({"data": {"spec": "builtin:digits"}}, InputError, ["missing required key 'model'"]),
    ({**BASE, "label_permutation": 1}, InputError, ["label_permutation", "bool"]),
    ({**BASE, "precision": "16-mix"}, UnknownNameError, ["precision", "'16-mixed'"]),
    ({**BASE, "device": "cuda:x"}, InputError, ["device", "'cuda:<index>'"]),
])
def test_bad_configs(raw, error, words):
    with pytest.raises(error) as info:
        parse_train_config(raw)
    for word in words:
        assert word in str(info.value)


def test_reliability_diagram():
    import matplotlib.pyplot as plt

    from xaibench.plotting import reliability_diagram

    probs, labels = _probs(300, seed=2)
    conf, pred = probs.max(1)
    hits = (pred == labels).float()
    for adaptive in (False, True):
        fig = reliability_diagram(conf, hits, adaptive=adaptive, title="baseline")
        ax = fig.axes[0]
        bins = reliability_bins(conf, hits, adaptive=adaptive)
        heights = sorted(round(p.get_height(), 6) for p in ax.patches)
        assert heights == sorted(round(float(a), 6) for a in bins.accuracy[bins.count > 0])
        name = "AdaECE" if adaptive else "ECE"
        error = (adaptive_calibration_error if adaptive else expected_calibration_error)(probs, labels)
        assert ax.get_title() == f"baseline: {name} {float(error):.3f}"
        plt.close(fig)


# --- the loss of each setting -------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["baseline", "fl", "fp", "ap", "fl+fp+ap"])
def test_training_step_loss_is_the_papers_weighting(setting):
    import copy

    from xaibench.seeding import derive_seed
    from xaibench.training.engine import GomezModule

    cfg = parse_train_config({**BASE, "setting": setting, "interpolation": 4, "seed": 5})
    torch.manual_seed(0)
    model = DigitsCNN().train()
    ref = copy.deepcopy(model)  # the same computation by hand, in the same order (batch-norm statistics move)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6) % 10
    module = GomezModule(model, cfg, train_set=None, val_set=None,
                         feature_layer=model.features if "fp" in setting else None)
    loss = module.training_step((x, y), 3)
    crit = adaptive_focal_loss if "fl" in setting else F.cross_entropy
    first = pgd_attack(ref, x, y) if "ap" in setting else x
    features = ref.features(first)
    expected = crit(ref.fc(ref.pool(features).flatten(1)), y)
    if "fp" in setting:
        if "ap" in setting:  # the explanation of the clean images: eval mode, after the adversarial forward
            ref.eval()
            with torch.no_grad():
                features = ref.features(x)
            ref.train()
        gen = torch.Generator().manual_seed(derive_seed(5, "fp", 0, 3))
        kinds = torch.randint(4, (6,), generator=gen)
        k = torch.randint(64, (6,), generator=gen)
        masked = fp_images(x, feature_saliency(features), kinds, k)
        expected = 1.6 * expected + 0.4 * crit(ref(masked), y)
    torch.testing.assert_close(loss, expected)


def test_progress_in_a_log_is_one_line_per_epoch(tmp_path, capfd):
    """stderr is no terminal here: Lightning's bar (carriage returns) is replaced by lines."""
    from xaibench.training import train

    train({"setting": "baseline", "epochs": 2, "batch_size": 64, "model": {"spec": "builtin:digits-cnn"},
           "data": {"spec": "builtin:digits", "n": 120, "val_fraction": 0.25}}, tmp_path / "run")
    err = capfd.readouterr().err
    assert "\r" not in err
    assert "epoch 1/2, step 2: val_accuracy" in err and "epoch 2/2, step 4: val_accuracy" in err
