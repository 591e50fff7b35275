"""The reliability experiment: its statistics against scipy / direct computation, config errors, and
the whole recipe end to end on a tiny budget (every report section present, resume skips all)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from xaibench.errors import InputError, UnknownNameError
from xaibench.experiments import reliability as rel
from xaibench.metrics.data_randomisation import data_randomisation_test, map_similarity
from xaibench.reliability import AlphaStatistic, bootstrap_ci, krippendorff_alpha, minimum_benchmark_size


def test_significance_procedure_picks_the_papers_test_and_returns_scipys_p() -> None:
    rng = np.random.default_rng(0)
    z = stats.norm.ppf((np.arange(1000) + 0.5) / 1000)  # exactly normal quantiles: Shapiro cannot reject
    a, b = 0.50 + 0.02 * rng.permutation(z), 0.51 + 0.02 * z
    p, test = rel.compare_bootstrap(a, b)
    assert test == "student" and p == pytest.approx(stats.ttest_ind(a, b).pvalue, rel=1e-12)
    c = 0.50 + 0.06 * z
    p, test = rel.compare_bootstrap(a, c)
    assert test == "welch" and p == pytest.approx(stats.ttest_ind(a, c, equal_var=False).pvalue, rel=1e-12)
    d = rng.exponential(0.05, 1000)
    p, test = rel.compare_bootstrap(a, d)
    assert stats.shapiro(d).pvalue < 0.05
    assert test == "mann-whitney" and p == pytest.approx(stats.mannwhitneyu(a, d).pvalue, rel=1e-12)
    assert rel.compare_bootstrap(np.ones(50), a)[1] == "mann-whitney"  # constant: not normal
    assert np.isnan(rel.compare_bootstrap(np.ones(2), a)[0])


def test_seed_mean_alpha_is_the_mean_of_per_model_alphas_on_the_same_resamples() -> None:
    rng = np.random.default_rng(1)
    ranks = np.stack([np.argsort(rng.random((30, 4)) + np.arange(4) * s, 1).argsort(1) + 1.0 for s in (0.5, 1.5)], 1)
    stat = rel.SeedMeanAlpha()
    want = np.mean([krippendorff_alpha(ranks[:, s], "ordinal") for s in range(2)])
    assert stat(ranks[None])[0] == pytest.approx(want)
    counts = rel.resample_counts(30, 50, seed=3)
    index = np.random.default_rng(3).integers(0, 30, (50, 30))  # bootstrap_ci's draws
    direct = np.mean([krippendorff_alpha(ranks[index][:, :, s], "ordinal") for s in range(2)], 0)
    np.testing.assert_allclose(stat.weighted(ranks, counts), direct, rtol=1e-10)
    # one model: the same interval as the library's AlphaStatistic
    one = bootstrap_ci(stat, ranks[:, :1], n_boot=200, level=0.99, seed=0)
    ref = bootstrap_ci(AlphaStatistic(), ranks[:, 0], n_boot=200, level=0.99, seed=0)
    assert (one.estimate, one.low, one.high) == pytest.approx((ref.estimate, ref.low, ref.high))


def _scores(n: int = 40, seeds: int = 2) -> pd.DataFrame:
    """Baseline: random per-image scores; 'fl': every image ranks a > b > c (plus noise far below the gaps)."""
    rng = np.random.default_rng(0)
    rows = []
    for setting in ("baseline", "fl"):
        for k in range(seeds):
            for metric, hib in (("dauc", False), ("dc", True)):
                for i in range(n):
                    for j, method in enumerate(("a", "b", "c")):
                        good = 3 - j + 0.01 * rng.random()
                        score = rng.random() if setting == "baseline" else (good if hib else -good)
                        rows.append({"setting": setting, "model_seed": k, "group": "g", "metric": metric,
                                     "method": method, "image_id": f"i{i}", "score": score,
                                     "higher_is_better": hib})
    return pd.DataFrame(rows)


def test_reliability_tables_on_a_known_case() -> None:
    alpha, diffs, sizes, ranks, _ = rel.reliability_tables(_scores(), ["baseline", "fl"], n_boot=300, seed=0)
    fl = alpha[alpha.setting == "fl"]
    assert np.allclose(fl["alpha"], 1.0) and (fl["n_images"] == 40).all() and (fl["n_models"] == 2).all()
    base = alpha[alpha.setting == "baseline"]
    assert (base["low"] < 0).all() and (base["high"] > 0).all() and (base["high"] - base["low"] < 0.5).all()
    assert list(diffs["metric"]) == ["dauc", "dc"] and diffs["significant"].all()
    assert (diffs["effect"] == "effect").all() and (diffs["correction"] == "holm").all()
    assert (diffs["low"] > 0).all() and (diffs["seed_spread"] < diffs["difference"]).all()
    # the same scores in both settings: no difference, never significant, the paper's columns kept
    same = _scores()
    same = pd.concat([same[same.setting == "baseline"], same[same.setting == "baseline"].assign(setting="fl")])
    _, none, *_ = rel.reliability_tables(same, ["baseline", "fl"], n_boot=300, seed=0)
    assert (none["difference"] == 0).all() and not none["significant"].any()
    assert (none["effect"] == "not significant").all() and {"paper_p", "paper_test"} <= set(none.columns)
    np.testing.assert_allclose(diffs["difference"], 100 * (1 - base["alpha"].to_numpy()))
    # lower-is-better metric: 'a' has the lowest dauc in fl, the highest dc: first in both
    first = ranks[(ranks.setting == "fl") & (ranks["rank"] == 1)]
    assert set(first["method"]) == {"a"}
    # fl: 'a' is first on every image, so its minimum size is that of rates [1, 0, 0]
    want = minimum_benchmark_size([1.0, 0.0, 0.0], max_n=40) / 40
    np.testing.assert_allclose(sizes[sizes.setting == "fl"]["normalised_min_size"], want)
    assert (sizes[sizes.setting == "baseline"]["normalised_min_size"] > want).all()


def test_images_missing_a_score_are_left_out_and_counted() -> None:
    scores = _scores(n=10, seeds=1)
    scores.loc[(scores.image_id == "i0") & (scores.method == "b"), "score"] = np.nan
    alpha, *_ = rel.reliability_tables(scores, ["baseline", "fl"], n_boot=100)
    assert (alpha["n_images"] == 9).all() and (alpha["n_left_out"] == 1).all()


def test_map_similarity_oracles_and_data_randomisation_test() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 8, 8, generator=g)
    rho, s = map_similarity(a, 5 * a + 2)  # same ranking, same structure after min-max
    torch.testing.assert_close(rho, torch.ones(3))
    torch.testing.assert_close(s, torch.ones(3))
    b = torch.rand(3, 8, 8, generator=g)
    rho, s = map_similarity(a, b)
    want = [stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(3)]
    np.testing.assert_allclose(rho.numpy(), want, rtol=1e-5)
    assert (s < 0.5).all()
    rho, s = map_similarity(a, torch.zeros(3, 8, 8))
    assert torch.isnan(rho).all() and torch.isnan(s).all()
    # the random baseline ignores the model: identical maps for any two models
    m1, m2 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4)), torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
    x, t = torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    res = data_randomisation_test(m1, m2, x, t, "random", batch=3)
    torch.testing.assert_close(res.spearman, torch.ones(4))
    res = data_randomisation_test(m1, m2, x, t, "saliency", absolute=False, batch=3)
    assert res.maps.shape == (4, 8, 8) and (res.spearman < 0.9).all()


# --- the recipe --------------------------------------------------------------------------------


def _config(**over: object) -> dict:
    cfg = {
        "name": "tiny", "seed": 0, "settings": ["baseline", "fl"], "repeats": 1, "n_boot": 100, "steps": 4,
        "data_randomisation": True,
        "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003,
                  "model": {"spec": "builtin:digits-cnn"},
                  "data": {"spec": "builtin:digits-hard", "n": 160, "val_fraction": 0.25}},
        "benchmark": {"n": 8, "shard_size": 8, "explain_batch": 8, "max_batch": 256},
        "groups": {"cam": ["cam", "gradcam"], "perturbation": ["feature_permutation", "rise"]},
        "methods": {"rise": {"n_masks": 16}},
        "metrics": ["dauc", "dc_nc", "ad"],
    }
    cfg.update(over)
    return cfg


def test_shipped_config_is_valid() -> None:
    import tomllib
    from importlib import resources

    from xaibench.experiments import recipes

    recipe = recipes().get("reliability")
    text = resources.files("xaibench.configs").joinpath(recipe.example).read_text()
    cfg = recipe.parse(tomllib.loads(text))
    assert rel.settings(cfg) == ["baseline", "fp", "ap", "fl"] and cfg["repeats"] == 2 and cfg["data_randomisation"]


def test_bad_configs_give_clear_errors() -> None:
    recipe = rel.RECIPE
    with pytest.raises(UnknownNameError, match="Did you mean 'fl\\+fp'"):
        recipe.parse(_config(settings=["baseline", "fl+fpp"]))
    with pytest.raises(InputError, match="'baseline' is required"):
        recipe.parse(_config(settings=["fl"]))
    with pytest.raises(UnknownNameError, match="gradcam"):
        recipe.parse(_config(groups={"cam": ["cam", "gradcm"]}))
    with pytest.raises(UnknownNameError, match="\\[methods\\].*'rise'"):
        recipe.parse(_config(methods={"rsie": {"n_masks": 4}}))
    with pytest.raises(InputError, match="n_mask"):
        recipe.parse(_config(methods={"rise": {"n_mask": 4}}))
    with pytest.raises(UnknownNameError, match="metrics.*'dauc'"):
        recipe.parse(_config(metrics=["daucc"]))
    with pytest.raises(InputError, match="feature_permutation needs"):
        recipe.parse(_config(benchmark={"n": 9, "shard_size": 8, "explain_batch": 8}))
    with pytest.raises(InputError, match="feature_permutation needs"):  # the randomisation test's calls
        recipe.parse(_config(benchmark={"n": 41, "shard_size": 14, "explain_batch": 20}))
    recipe.parse(_config(benchmark={"n": 41, "shard_size": 14, "explain_batch": 20}, data_randomisation=False))
    with pytest.raises(InputError, match="\\[train\\].*epoch"):
        recipe.parse(_config(train={**_config()["train"], "epoch": 2}))


def test_end_to_end_on_a_tiny_budget(tmp_path) -> None:
    from xaibench.experiments import ExperimentDir, run_experiment
    from xaibench.report.experiment import build_experiment_report

    out = run_experiment("reliability", _config(metrics=["dauc", "dc_nc", "ad", "add_vr"]), tmp_path / "exp")
    exp = ExperimentDir(out)
    calib = exp.table("calibration")
    assert set(calib["model"]) == {"baseline-s0", "fl-s0", "permuted-s0"}
    assert calib["accuracy"].between(0, 1).all() and calib["ece"].between(0, 1).all()
    scores = exp.table("scores")
    assert set(scores["setting"]) == {"baseline", "fl"} and set(scores["metric"]) == {"dauc", "dc_nc", "ad", "add_vr"}
    assert len(scores) == 2 * 2 * 2 * 4 * 8
    validity = exp.table("validity")  # reported, not ranked
    assert len(validity) == 2 * 2 and validity["validity_rate"].between(0, 1).all()
    alpha = exp.table("alpha")
    assert len(alpha) == 2 * 2 * 3 and {"alpha", "low", "high"} <= set(alpha.columns)
    diffs = exp.table("alpha_difference")
    assert set(diffs["setting"]) == {"fl"} and diffs["paper_test"].notna().all() and (diffs["correction"] == "holm").all()
    assert diffs["effect"].isin(["undefined", "not significant", "significant; seed spread unknown (one model per setting)"]).all()
    assert len(exp.table("data_randomisation")) == 4 * 8
    html = build_experiment_report(out).read_text()
    for section in ("Calibration per setting", "alpha difference to Baseline", "Normalised minimum benchmark size",
                    "Holm (1979)-adjusted p", "overstates significance",
                    "Per-setting rankings", "Data randomisation test", "Validity rate"):
        assert section in html, section
    assert html.count("data:image/png;base64") >= 2  # one heat map per group
    # resume: every step is committed and skipped
    before = exp.manifest["steps"]
    run_experiment("reliability", _config(metrics=["dauc", "dc_nc", "ad", "add_vr"]), out, resume=True)
    assert ExperimentDir(out).manifest["steps"] == before
