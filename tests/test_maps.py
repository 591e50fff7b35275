"""MAPS core: EMIs, B.I1 and its d' version, observer trials and reliability, consistency, best model
and best method, map similarities, neural predictivity. Oracles: MAPS' NumPy formulas written out
here, analytic values and planted answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm, spearmanr

from xaibench.errors import InputError, WeightsUnavailableError
from xaibench import maps


def _maps_emi_reference(image: np.ndarray, attr: np.ndarray, p: float, fill: np.ndarray, positive: bool) -> np.ndarray:
    """MAPS' generate_emis.py on one image (image [C, H, W], attr [C, H, W])."""
    a = np.abs(attr.transpose(1, 2, 0)).copy()
    for c in range(a.shape[2]):
        if a[..., c].max() > 0:
            a[..., c] /= a[..., c].max()
    mask = (a >= np.percentile(a, p)).any(axis=2)
    out = image.transpose(1, 2, 0).copy()
    out[~mask if positive else mask] = fill
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("p", [50, 75, 97.5, 99])
def test_emi_matches_maps_reference_for_three_channel_maps(p):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 24, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 3, 20, 24, generator=gen, dtype=torch.float64)
    for kind in ("positive", "negative"):
        got = maps.emi(x, a, p, kind=kind)
        for i in range(3):
            ref = _maps_emi_reference(x[i].numpy(), a[i].numpy(), p, np.array(maps.MAPS_FILL), kind == "positive")
            np.testing.assert_allclose(got[i].numpy(), ref, atol=1e-12)


def test_single_channel_maps_keep_exactly_the_top_pixels_and_fill():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=gen)
    a = torch.randn(4, 16, 16, generator=gen)  # no ties
    for p in maps.MAPS_PERCENTILES:
        keep = maps.keep_mask(x, a, p)
        expected = round((100 - p) / 100 * 256)
        assert (keep.flatten(1).sum(1) - expected).abs().max() <= 1
        # the kept pixels are the largest |A|
        for i in range(4):
            assert a[i].abs()[keep[i]].min() >= a[i].abs()[~keep[i]].max()
    pos = maps.emi(x, a, 80, fill=0.25)
    keep = maps.keep_mask(x, a, 80).unsqueeze(1).expand_as(x)
    assert torch.equal(pos[keep], x[keep]) and (pos[~keep] == 0.25).all()
    neg = maps.emi(x, a, 80, fill=(0.1, 0.2, 0.3), kind="negative")
    assert torch.equal(neg[~keep], x[~keep])
    assert torch.allclose(neg[:, 1][keep[:, 1]], torch.tensor(0.2))


def test_maps_fill_is_half_grey_after_imagenet_normalisation():
    fill = torch.tensor(maps.MAPS_FILL)
    normalised = (fill - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalised, torch.full((3,), 0.5))


def test_emi_errors():
    x = torch.rand(2, 3, 8, 8)
    bad = torch.rand(2, 8, 8)
    bad[1, 2, 2] = float("nan")
    with pytest.raises(InputError, match=r"images \[1\].*NaN"):
        maps.emi(x, bad, 50)
    for p in (-1, 100.5):
        with pytest.raises(InputError, match="percentile must be in"):
            maps.emi(x, torch.rand(2, 8, 8), p)
    with pytest.raises(InputError, match="fill must have 1 or 3 values"):
        maps.emi(x, torch.rand(2, 8, 8), 50, fill=(0.5, 0.5))
    with pytest.raises(InputError, match="kind"):
        maps.emi(x, torch.rand(2, 8, 8), 50, kind="both")
    with pytest.raises(InputError, match="attributions must be maps"):
        maps.emi(x, torch.rand(3, 8, 8), 50)


def _maps_i1_reference(prob: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """MAPS' get_percent_correct_from_proba + create_i1_test (classes 0..K-1 in order)."""
    classes = np.arange(prob.shape[1])
    pc = np.full(prob.shape, np.nan)
    for i in range(prob.shape[0]):
        target = labels[i] == classes
        pc[i] = (prob[i, target] + eps) / ((prob[i] + eps) + (prob[i, target] + eps))
        pc[i, target] = np.nan
    return np.nanmean(pc, axis=1)


def test_i1_uniform_one_hot_and_reference():
    eps = 1e-5
    labels = torch.tensor([0, 3, 2, 1])
    assert torch.allclose(maps.i1(torch.full((4, 5), 0.2), labels), torch.full((4,), 0.5, dtype=torch.float64))
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    assert torch.allclose(maps.i1(onehot, labels), torch.full((4,), (1 + eps) / (1 + 2 * eps), dtype=torch.float64))
    probs = torch.softmax(torch.randn(40, 10, generator=torch.Generator().manual_seed(2)), 1)
    y = torch.arange(40) % 10
    np.testing.assert_allclose(maps.i1(probs, y).numpy(), _maps_i1_reference(probs.double().numpy(), y.numpy(), eps), rtol=1e-12)


def test_i1_dprime_analytic():
    probs = torch.tensor([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1, 1])
    d = maps.i1_dprime(probs, labels)
    # image of class 0: hit 0.8; class 0 is chosen for class-1 images with probability 0.3
    assert d[0].item() == pytest.approx(norm.ppf(0.8) - norm.ppf(0.3))
    assert d[2].item() == pytest.approx(norm.ppf(0.7) - norm.ppf(0.2))
    assert torch.allclose(maps.i1_dprime(probs, labels, normalise=True), torch.zeros(4, dtype=torch.float64))
    perfect = maps.i1_dprime(torch.eye(2)[[0, 1]], torch.tensor([0, 1]))
    assert torch.equal(perfect, torch.full((2,), 5.0, dtype=torch.float64))


def test_i1_errors():
    with pytest.raises(InputError, match="softmax outputs"):
        maps.i1(torch.tensor([[1.0, -2.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="class indices"):
        maps.i1(torch.full((1, 3), 1 / 3), torch.tensor([3]))


def test_split_half_reliability_matches_analytic_value():
    rng = np.random.default_rng(0)
    p = rng.beta(4, 2, size=300)
    for n in (6, 20):
        trials = maps.simulate_trials(p, n, seed=1)
        assert trials["simulated"].all()
        got = maps.split_half_reliability(trials, repeats=20, seed=2)
        assert got == pytest.approx(maps.expected_split_half_reliability(p, n), abs=0.05)
    i1 = maps.trial_i1(maps.simulate_trials(p, 20, seed=1), seed=0)
    assert i1.shape == (300,) and spearmanr(i1, p).statistic > 0.6


def test_trial_loader_accepts_maps_columns_and_names_errors(tmp_path):
    path = tmp_path / "monkey.csv"
    pd.DataFrame({"image_number": [0, 0, 1, 1], "correct": [1, 0, 1, 1], "rt": [1, 2, 3, 4]}).to_csv(path, index=False)
    trials = maps.load_trials(path)
    assert list(trials.columns) == ["image", "correct"] and trials["correct"].sum() == 3
    np.testing.assert_allclose(maps.trial_i1(trials), [0.5, 1.0])
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image_number": [0], "answer": [1]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"bad\.csv: no column named correct"):
        maps.load_trials(bad)
    with pytest.raises(InputError, match="not found"):
        maps.load_trials(tmp_path / "missing.csv")
    with pytest.raises(InputError, match=r"no trials for images \[2\]"):
        maps.trial_i1(trials, n_images=3)


def test_bootstrap_spearman_equals_the_loop_over_resamples():
    rng = np.random.default_rng(3)
    x, y = rng.random(30), rng.random(30)
    est = maps.bootstrap_spearman(x, y, n_boot=200, seed=5)
    idx = np.random.default_rng(5).integers(0, 30, size=(200, 30))
    loop = np.array([spearmanr(x[i], y[i]).statistic for i in idx])
    assert est.value == pytest.approx(np.nanmean(loop), abs=1e-12)
    assert est.low == pytest.approx(np.nanpercentile(loop, 2.5)) and est.high == pytest.approx(np.nanpercentile(loop, 97.5))


def test_consistency_recovers_the_planted_observer():
    rng = np.random.default_rng(4)
    n = 240
    models = {f"model{k}": rng.beta(3, 1.5, size=n) for k in range(4)}
    observer = models["model2"]
    trials = maps.simulate_trials(observer, 30, seed=7)
    observed = maps.trial_i1(trials, seed=0)
    reliability = maps.split_half_reliability(trials, seed=0)
    ranking = maps.rank_models(models, observed, reliability, n_boot=500)
    assert ranking["model"].iloc[0] == "model2"
    top = ranking.iloc[0]
    assert top["low"] <= top["consistency"] <= top["high"] and 0.8 < top["consistency"] < 1.2
    undefined = maps.rank_models(models, observed, -0.03, n_boot=50)
    assert undefined["consistency"].isna().all() and undefined["nan_reason"].str.contains("not positive").all()


def test_best_method_proxy_finds_the_planted_method():
    rng = np.random.default_rng(6)
    n = 120
    clean = {m: rng.random(n) for m in ("a", "b", "c")}
    clean["b"] = clean["a"] + 0.05 * rng.random(n)  # a and b are each other's references
    splits = maps.half_splits(n, repeats=5, seed=11)
    refs = maps.reference_models(clean, splits)
    assert refs["a"] == "b" and refs["b"] == "a"
    emi_i1 = {}
    shared = rng.random(n)
    for target, ref in refs.items():
        for method, noise in (("good", 0.05), ("medium", 0.5), ("bad", 5.0)):
            emi_i1[(ref, method, ref)] = shared
            emi_i1[(ref, method, target)] = shared + noise * rng.random(n)
    proxy = maps.method_proxy(emi_i1, refs, ["good", "medium", "bad"], splits)
    assert len(proxy) == 3 * 3 * 5
    assert list(maps.best_method(proxy)["method"]) == ["good", "medium", "bad"]
    truth = pd.DataFrame({"method": ["good", "medium", "bad"], "agreement": [3.0, 2.0, 1.0]})
    assert maps.proxy_vs_ground_truth(proxy, truth) == pytest.approx(1.0)


def test_map_similarities_match_maps_formulas():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(5, 12, 12)), rng.normal(size=(5, 12, 12))

    def z(m):
        m = m - m.mean()
        return m / (m.std() + 1e-8)

    for i in range(5):
        d = z(a[i]) - z(b[i])
        assert maps.l1_similarity(torch.tensor(a), torch.tensor(b))[i].item() == pytest.approx(1 / (1 + np.abs(d).mean() + 1e-8))
        assert maps.l2_similarity(torch.tensor(a), torch.tensor(b))[i].item() == pytest.approx(1 / (1 + np.sqrt((d * d).mean()) + 1e-8))
        assert maps.inverse_l2(torch.tensor(a), torch.tensor(b))[i].item() == pytest.approx(1 / (np.linalg.norm(a[i] - b[i]) + 1e-8))
    assert torch.allclose(maps.l2_similarity(torch.tensor(a), torch.tensor(a)), torch.ones(5, dtype=torch.float64))


def test_lpips_needs_real_weights_and_runs_with_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    a = torch.rand(2, 32, 32)
    with pytest.raises(WeightsUnavailableError, match="cannot be downloaded"):
        maps.lpips_similarity(a, a)
    from torchvision.models import alexnet

    path = tmp_path / "alexnet.pth"
    torch.save(alexnet(weights=None).state_dict(), path)  # stands in for the real file in this test
    model = maps.lpips_model(path)
    same = maps.lpips_similarity(a, a, model=model)
    assert torch.allclose(same, torch.ones(2, dtype=torch.float64), atol=1e-6)
    other = maps.lpips_similarity(a, torch.rand(2, 32, 32), model=model)
    assert (other < 1).all() and (other > 0).all()
    junk = tmp_path / "junk.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, junk)
    with pytest.raises((WeightsUnavailableError, KeyError)):
        maps.lpips_model(junk)


def test_neural_predictivity_noise_corrected():
    rng = np.random.default_rng(9)
    n, f, neurons, reps = 200, 10, 6, 8
    x = rng.normal(size=(n, f))
    signal = x @ rng.normal(size=(f, neurons))
    responses = signal[None] + rng.normal(scale=signal.std() * 1.5, size=(reps, n, neurons))
    ev = maps.neural_predictivity(x, responses, folds=5)
    assert np.all(np.abs(ev - 1.0) < 0.2)
    raw = maps.neural_predictivity(x, responses.mean(0), folds=5)
    assert np.all(raw < ev)
    noise = maps.neural_predictivity(rng.normal(size=(n, f)), responses, folds=5)
    assert np.all(noise < 0.2)
    pls = maps.neural_predictivity(x, responses, method="pls", n_components=10, folds=5)
    assert np.all(np.abs(pls - 1.0) < 0.2)
    with pytest.raises(InputError, match="responses must be"):
        maps.neural_predictivity(x, responses[:, :10])
