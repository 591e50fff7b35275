"""Reliability statistics against their oracles: the krippendorff package, scipy's bootstrap and
Wilcoxon test, Gomez et al.'s published minimum benchmark sizes, and synthetic runs with known answers."""

from __future__ import annotations

import itertools
import json
import math
from itertools import product

import krippendorff
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from xaibench.cli import main
from xaibench.errors import InputError
from xaibench.reliability import (
    AlphaStatistic,
    MeanStatistic,
    accuracy_check,
    adjust_p,
    alpha_verdicts,
    benjamini_hochberg,
    bootstrap_ci,
    compare_runs,
    correlation_verdict,
    first_place_rates,
    holm,
    interpret_alpha,
    krippendorff_alpha,
    minimum_benchmark_size,
    paired_bootstrap,
    per_image_ranks,
    reliability_verdict,
    summarize,
    top_stays_first_probability,
    wilson_interval,
)
from xaibench.runner import layout

# Krippendorff, "Computing Krippendorff's alpha-reliability" (2011): 4 coders x 12 units, missing values.
CANONICAL = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]


# --------------------------------------------------------------------------- ranks


def test_per_image_ranks_direction_ties_and_nan():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7], [np.nan, 0.3, 0.1]])
    up = per_image_ranks(scores, higher_is_better=True)
    np.testing.assert_array_equal(up[0], [1, 3, 2])
    np.testing.assert_array_equal(up[1], [2.5, 2.5, 1])  # ties: average rank
    assert np.isnan(up[2, 0]) and up[2, 1] == 1 and up[2, 2] == 2  # ranked among the defined ones
    down = per_image_ranks(scores, higher_is_better=False)
    np.testing.assert_array_equal(down[0], [3, 1, 2])
    np.testing.assert_array_equal(down[1], [1.5, 1.5, 3])
    np.testing.assert_array_equal(per_image_ranks(torch.tensor(scores[:2]), True), up[:2])
    with pytest.raises(InputError):
        per_image_ranks(np.array([1.0, 2.0]))
    with pytest.raises(InputError):
        per_image_ranks(np.array([[1.0, np.inf]]))


def test_per_image_ranks_ties_first_breaks_by_method_order():
    """ties="first" (the original code's rule): tied methods ranked in column order, the first best."""
    scores = np.array([[0.2, 0.2, 0.7, 0.2], [0.0, 0.0, 0.0, 1.0], [np.nan, 0.3, 0.3, 0.1]])
    first = per_image_ranks(scores, higher_is_better=True, ties="first")
    np.testing.assert_array_equal(first[:2], [[2, 3, 1, 4], [2, 3, 4, 1]])
    assert np.isnan(first[2, 0]) and first[2, 1:].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(per_image_ranks(scores[:1], higher_is_better=False, ties="first"), [[1, 2, 4, 3]])
    np.testing.assert_array_equal(per_image_ranks(scores[:1], True), [[3, 3, 1, 3]])  # default: averaged
    with pytest.raises(InputError, match="ties"):
        per_image_ranks(scores, ties="min")


def test_summarize_ties_first_reproduces_the_original_ranking():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(40, 3)).astype(float)  # many ties, as AD's zeros
    table = _table({"ad": x}, {"ad": False}, ["A", "B", "C"])
    first = summarize(table, n_boot=50, ties="first").alpha.iloc[0]["alpha"]
    average = summarize(table, n_boot=50).alpha.iloc[0]["alpha"]
    assert first == pytest.approx(krippendorff_alpha(per_image_ranks(x, False, ties="first"), "ordinal"))
    assert average == pytest.approx(krippendorff_alpha(per_image_ranks(x, False), "ordinal"))
    assert first != pytest.approx(average)
    with pytest.raises(InputError, match="ties"):
        summarize(table, ties="dense")


# --------------------------------------------------------------------------- alpha


@pytest.mark.parametrize(
    "level, expected", [("ordinal", 0.8154), ("interval", 0.8491), ("nominal", 0.7434), ("ratio", 0.7974)]
)
def test_alpha_canonical_example(level, expected):
    a = krippendorff_alpha(CANONICAL, level)
    assert round(a, 4) == expected
    assert a == pytest.approx(krippendorff.alpha(reliability_data=CANONICAL, level_of_measurement=level), abs=1e-12)


@pytest.mark.parametrize("missing", [False, True])
def test_alpha_equals_the_package_on_random_rank_matrices(missing):
    rng = np.random.default_rng(7 + missing)
    for _ in range(60):
        n_img, n_met = int(rng.integers(2, 40)), int(rng.integers(2, 9))
        scores = rng.normal(size=(n_img, n_met)) + rng.normal(size=n_met) * rng.random() * 3
        if rng.random() < 0.3:
            scores = np.round(scores)  # ties
        ranks = per_image_ranks(scores)
        if missing:
            ranks[rng.random(ranks.shape) < 0.2] = np.nan
        for level in ("ordinal", "interval", "nominal", "ratio"):
            try:
                want = krippendorff.alpha(reliability_data=ranks, level_of_measurement=level)
            except ValueError:  # the package refuses data with no pairable values
                want = float("nan")
            got = krippendorff_alpha(ranks, level)
            if math.isnan(want) or math.isnan(got):
                assert math.isnan(want) and math.isnan(got)
            else:
                assert got == pytest.approx(want, abs=1e-10)


def test_alpha_batch_and_weighted_statistic_match_one_by_one():
    rng = np.random.default_rng(3)
    ranks = per_image_ranks(rng.normal(size=(30, 5)) + np.arange(5))
    idx = rng.integers(0, 30, (20, 30))
    batch = krippendorff_alpha(ranks[idx])
    one = [krippendorff.alpha(reliability_data=ranks[i], level_of_measurement="ordinal") for i in idx]
    np.testing.assert_allclose(batch, one, atol=1e-12)
    counts = np.stack([np.bincount(i, minlength=30) for i in idx]).astype(float)
    np.testing.assert_allclose(AlphaStatistic().weighted(ranks, counts), one, atol=1e-12)


def test_alpha_edge_cases_and_interpretation():
    assert krippendorff_alpha([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([[2, 2], [2, 2]]))  # one value only
    with pytest.raises(InputError):
        krippendorff_alpha([[1, 2]], level="bogus")
    assert interpret_alpha(0.85) == "reliable"
    assert interpret_alpha(0.7) == "tentative"
    assert interpret_alpha(0.2) == "unreliable"
    assert interpret_alpha(float("nan")) == "undefined"


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_bootstrap_matches_scipy_with_the_same_draws(method):
    rng = np.random.default_rng(11)
    x = rng.exponential(size=60)
    ci = bootstrap_ci(MeanStatistic(), x, n_boot=2000, level=0.9, seed=5, method=method)
    ref = stats.bootstrap((x,), np.mean, n_resamples=2000, confidence_level=0.9,
                          method="BCa" if method == "bca" else "percentile", rng=np.random.default_rng(5))
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(ref.confidence_interval.low, rel=1e-10)
    assert ci.high == pytest.approx(ref.confidence_interval.high, rel=1e-10)
    # a plain (non-vectorised, non-weighted) statistic gives the same interval
    plain = bootstrap_ci(lambda s: s.mean(), x, n_boot=2000, level=0.9, seed=5, method=method, vectorized=False)
    assert (plain.low, plain.high) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_bootstrap_alpha_matches_scipy_bca():
    rng = np.random.default_rng(2)
    ranks = per_image_ranks(rng.normal(size=(40, 4)) + np.arange(4) * 0.5)
    ci = bootstrap_ci(AlphaStatistic(), ranks, n_boot=300, seed=1)

    def stat(i, axis=-1):
        return np.asarray(krippendorff_alpha(ranks[np.asarray(i, dtype=int)]))

    ref = stats.bootstrap((np.arange(40),), stat, n_resamples=300, method="BCa", rng=np.random.default_rng(1))
    assert (ci.low, ci.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-9)


def test_bootstrap_coverage_of_a_known_mean():
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        x = rng.normal(1.0, 2.0, size=40)
        ci = bootstrap_ci(MeanStatistic(), x, n_boot=400, level=0.9, seed=k)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.83 <= hits / 200 <= 0.96


def test_bootstrap_vector_statistic_and_degenerate_data():
    x = np.column_stack([np.arange(20.0), np.ones(20)])
    ci = bootstrap_ci(MeanStatistic(), x, n_boot=200)
    assert ci.estimate.shape == (2,) and ci.low[0] < 9.5 < ci.high[0]
    assert ci.low[1] == ci.high[1] == 1.0  # every resample equals the estimate
    with pytest.raises(InputError):
        bootstrap_ci(MeanStatistic(), x, method="basic")
    with pytest.raises(InputError):
        bootstrap_ci(MeanStatistic(), x[:1])


# --------------------------------------------------------------------------- minimum benchmark size


def _enumerated(probs, n, even_only):
    """Brute force over every count vector (the published definition)."""
    probs = np.asarray(probs)
    top = int(np.argmax(probs))
    num = den = 0.0
    for counts in product(range(n + 1), repeat=len(probs)):
        if sum(counts) != n or (even_only and counts[0] % 2):
            continue
        pmf = stats.multinomial.pmf(counts, n, probs)
        den += pmf
        num += pmf * all(counts[top] > c for i, c in enumerate(counts) if i != top)
    return num / den


@pytest.mark.parametrize("probs, expected", [([0.5, 0.3, 0.2], 59), ([0.6, 0.2, 0.2], 18), ([0.4, 0.35, 0.25], 200)])
def test_minimum_benchmark_size_published_cases(probs, expected):
    assert minimum_benchmark_size(probs, max_n=200) == expected
    assert minimum_benchmark_size(probs, max_n=200, search="smallest") == expected
    assert minimum_benchmark_size(dict(zip("abc", probs)), max_n=200) == expected


def test_even_restriction_is_on_the_first_methods_count():
    # without it [0.5, 0.3, 0.2] needs 58 images; the published 59 comes from conditioning on an even
    # first-place count of the first method
    assert minimum_benchmark_size([0.5, 0.3, 0.2], even_only=False) == 58
    assert top_stays_first_probability([0.5, 0.3, 0.2], 58) < 0.95 <= top_stays_first_probability([0.5, 0.3, 0.2], 59)


@pytest.mark.parametrize("probs", [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.15, 0.45, 0.3], [0.7, 0.3]])
@pytest.mark.parametrize("even_only", [True, False])
def test_exact_probability_equals_enumeration(probs, even_only):
    for n in (1, 2, 7, 12):
        assert top_stays_first_probability(probs, n, even_only=even_only) == pytest.approx(
            _enumerated(probs, n, even_only), abs=1e-10
        )


def test_minimum_benchmark_size_monotone_and_errors():
    sizes = [minimum_benchmark_size([p, (1 - p) / 2, (1 - p) / 2], max_n=300) for p in (0.4, 0.5, 0.6, 0.7, 0.8)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    big = [top_stays_first_probability([0.5, 0.3, 0.2], n, even_only=False) for n in (20, 60, 120, 240)]
    assert big == sorted(big)
    assert minimum_benchmark_size([0.5, 0.5, 0.0]) == 200  # tie for the top: cannot reduce
    for bad in ([0.5, 0.6], [1.2, -0.2], [1.0], [0.5, np.nan]):
        with pytest.raises(InputError):
            minimum_benchmark_size(bad)
    with pytest.raises(InputError):
        minimum_benchmark_size([0.6, 0.4], confidence=1.5)


def test_first_place_rates_share_ties():
    ranks = np.array([[1, 2, 3], [1.5, 1.5, 3], [2, 3, 1], [1, 2, 3]])
    np.testing.assert_allclose(first_place_rates(ranks), [0.625, 0.125, 0.25])


def test_holm():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


# --------------------------------------------------------------------------- summarize


def _table(scores: dict[str, np.ndarray], higher_is_better: dict[str, bool], methods: list[str]) -> pd.DataFrame:
    rows = []
    for metric, x in scores.items():
        for i in range(x.shape[0]):
            for k, method in enumerate(methods):
                rows.append({"image_id": f"img{i}", "image_index": i, "shard": 0, "method": method,
                             "metric": metric, "category": "faithfulness", "mask": None, "score": x[i, k],
                             "nan_reason": None if np.isfinite(x[i, k]) else "undefined",
                             "higher_is_better": higher_is_better[metric], "correct": True})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    n = 60
    base = rng.normal(size=n)
    ordered = np.column_stack([base + 2.0, base + 1.0, base])  # A > B > C on every image
    noise = rng.normal(size=(n, 3))
    lower = -ordered  # lower is better: A still best
    with_nan = ordered.copy()
    with_nan[:5, 1] = np.nan
    scores = {"ordered": ordered, "random": noise, "lower": lower, "nan": with_nan}
    hib = {"ordered": True, "random": True, "lower": False, "nan": True}
    return _table(scores, hib, ["A", "B", "C"])


@pytest.fixture(scope="module")
def summary(synthetic):
    return summarize(synthetic, n_boot=300)


def test_summarize_known_answers(summary):
    alpha = summary.alpha.set_index("metric")
    assert alpha.loc["ordered", "alpha"] == pytest.approx(1.0)
    assert alpha.loc["ordered", "interpretation"] == "reliable"
    assert alpha.loc["ordered", "low"] == alpha.loc["ordered", "high"] == pytest.approx(1.0)
    assert abs(alpha.loc["random", "alpha"]) < 0.15
    assert alpha.loc["random", "low"] < alpha.loc["random", "alpha"] < alpha.loc["random", "high"]
    assert alpha.loc["random", "interpretation"] == "unreliable"
    means = summary.means.set_index(["metric", "method"])
    for metric in ("ordered", "lower", "nan"):
        assert [means.loc[(metric, m), "rank"] for m in "ABC"] == [1, 2, 3]
    assert means["rank"].dtype.kind == "i"
    pw = summary.pairwise.set_index(["metric", "method_a", "method_b"])
    assert pw.loc[("ordered", "A", "B"), "significant"] and pw.loc[("ordered", "A", "B"), "diff"] == pytest.approx(1.0)
    assert not pw.loc["random"]["significant"].any()  # pure noise: no difference survives Holm
    size = summary.benchmark_size.set_index("metric")
    assert size.loc["ordered", "top_method"] == "A" and size.loc["ordered", "first_place_probs"]["A"] == 1.0
    assert size.loc["ordered", "reducible"] and size.loc["ordered", "min_n"] < 60
    agreement = summary.agreement
    assert list(agreement.index) == list(agreement.columns) == ["ordered", "random", "lower", "nan"]
    assert agreement.loc["ordered", "lower"] == pytest.approx(1.0)  # direction-aware
    assert agreement.loc["ordered", "nan"] == pytest.approx(1.0)


def test_summarize_nan_scores_are_reported_not_zeroed(summary):
    means = summary.means.set_index(["metric", "method"])
    assert means.loc[("nan", "B"), "n"] == 55 and means.loc[("nan", "A"), "n"] == 60
    alpha = summary.alpha.set_index("metric")
    assert alpha.loc["nan", "n_images"] == 55
    assert any("nan: 5 of 60 images" in note for note in summary.notes)
    pw = summary.pairwise.set_index(["metric", "method_a", "method_b"])
    assert pw.loc[("nan", "A", "B"), "n"] == 55 and pw.loc[("nan", "A", "C"), "n"] == 60


def test_summarize_reasons_for_undefined_alpha():
    rng = np.random.default_rng(1)
    one_method = _table({"solo": rng.normal(size=(10, 1))}, {"solo": True}, ["A"])
    one_image = _table({"tiny": rng.normal(size=(1, 3))}, {"tiny": True}, ["A", "B", "C"])
    rel = summarize(pd.concat([one_method, one_image], ignore_index=True), n_boot=50)
    alpha = rel.alpha.set_index("metric")
    assert math.isnan(alpha.loc["solo", "alpha"]) and "fewer than 2 methods" in alpha.loc["solo", "interpretation"]
    assert math.isnan(alpha.loc["tiny", "alpha"]) and "fewer than 2 images" in alpha.loc["tiny", "reason"]
    assert math.isnan(rel.agreement.loc["solo", "tiny"])  # fewer than 2 methods in common
    with pytest.raises(InputError):
        summarize(pd.DataFrame({"score": [1.0]}))


def test_summarize_is_seeded(synthetic):
    a = summarize(synthetic, n_boot=100, seed=3)
    b = summarize(synthetic, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(a.means, b.means)
    pd.testing.assert_frame_equal(a.alpha, b.alpha)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def run_dir(tmp_path, synthetic):
    layout.write_json(tmp_path / layout.MANIFEST, {"config_hash": "h", "n_shards": 1, "config": {}})
    layout.write_parquet(layout.results_path(tmp_path, 0), synthetic)
    return tmp_path


def test_cli_json_matches_summarize(run_dir, synthetic, capsys):
    assert main(["reliability", str(run_dir), "--json", "--n-boot", "200", "--seed", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    rel = summarize(synthetic, n_boot=200, seed=4)
    assert set(data) >= {"means", "alpha", "pairwise", "agreement", "benchmark_size", "notes", "level"}
    assert len(data["means"]) == len(rel.means)
    for got, want in zip(data["means"], rel.means.itertuples(index=False)):
        assert got["method"] == want.method and got["rank"] == want.rank
        assert got["mean"] == pytest.approx(want.mean) and got["low"] == pytest.approx(want.low)
    for got, want in zip(data["alpha"], rel.alpha.itertuples(index=False)):
        assert got["alpha"] == pytest.approx(want.alpha) and got["interpretation"] == want.interpretation
    assert data["benchmark_size"][0]["first_place_probs"]["A"] == 1.0
    assert data["agreement"]["ordered"]["lower"] == pytest.approx(1.0)


def test_cli_json_nan_is_null(tmp_path, capsys):
    df = _table({"solo": np.arange(4.0)[:, None]}, {"solo": True}, ["A"])
    layout.write_json(tmp_path / layout.MANIFEST, {"config_hash": "h", "n_shards": 1, "config": {}})
    layout.write_parquet(layout.results_path(tmp_path, 0), df)
    assert main(["reliability", str(tmp_path), "--json", "--n-boot", "50"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["alpha"][0]["alpha"] is None


def test_cli_text(run_dir, capsys):
    assert main(["reliability", str(run_dir), "--n-boot", "100", "--level", "0.9"]) == 0
    out = capsys.readouterr().out
    for text in ("Krippendorff", "reliable", "Ranking", "#1", "Minimum benchmark size", "ordered", "Notes"):
        assert text in out
    assert main(["reliability", str(run_dir), "--level", "2"]) == 2


# --------------------------------------------------------------------------- verdicts and comparisons


def test_six_images_are_inconclusive_whatever_alpha():
    v = reliability_verdict(1.0, 1.0, 1.0, 6)
    assert v.label == "inconclusive" and not v.rankable and v.threshold is None
    assert str(v).startswith("inconclusive (n = 6, α 1.00, 95% CI [1.00, 1.00])")
    # the same perfectly agreeing rankings: 6 images inconclusive, 60 images reliable
    ordered = np.column_stack([np.arange(60.0) + 2, np.arange(60.0) + 1, np.arange(60.0)])
    few = summarize(_table({"m": ordered[:6]}, {"m": True}, ["A", "B", "C"]), n_boot=200)
    many = summarize(_table({"m": ordered}, {"m": True}, ["A", "B", "C"]), n_boot=200)
    assert alpha_verdicts(few.alpha).at[0, "verdict"] == "inconclusive"
    assert alpha_verdicts(many.alpha).at[0, "verdict"] == "reliable"
    assert alpha_verdicts(many.alpha).at[0, "threshold"] == 0.8


def test_verdict_reads_the_lower_bound_against_krippendorffs_thresholds():
    assert reliability_verdict(0.95, 0.85, 0.99, 100).label == "reliable"
    tentative = reliability_verdict(0.85, 0.70, 0.95, 100)
    assert tentative.label == "tentative" and tentative.threshold == 0.667 and tentative.rankable
    # 0.8 crossed: the half-width 0.15 must shrink to 0.05, so n grows by (0.15 / 0.05)^2 = 9
    assert "about 900 images" in str(tentative)
    assert reliability_verdict(0.3, 0.2, 0.4, 100).label == "unreliable"
    crossing = reliability_verdict(0.75, 0.60, 0.85, 40)  # the point estimate clears 0.667, the interval does not
    assert crossing.label == "inconclusive" and "crosses 0.667" in str(crossing)
    assert f"about {math.ceil(40 * (0.15 / (0.75 - 0.667)) ** 2)} images" in str(crossing)
    assert reliability_verdict(float("nan"), float("nan"), float("nan"), 100).label == "undefined"


def test_wilson_interval_is_the_closed_form():
    for k, n in ((0, 6), (3, 10), (17, 20), (40, 40)):
        z = stats.norm.ppf(0.975)
        p = k / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        ci = wilson_interval(k, n)
        assert ci.estimate == p and (ci.low, ci.high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert math.isnan(wilson_interval(0, 0).estimate)


def test_accuracy_check_flags_a_model_at_chance():
    at_chance = accuracy_check(np.arange(100) % 10 == 0, 10)  # 10 % on 10 classes
    assert at_chance.near_chance and "at or near chance" in at_chance.text
    random_net = accuracy_check(np.zeros(6, bool), 10)  # 0 of 6: below chance, not shown above it
    assert random_net.near_chance
    few_good = accuracy_check(np.ones(6, bool), 10)  # 6 of 6: Wilson lower bound 0.61 > 0.15
    assert not few_good.near_chance and "above chance" in few_good.text
    assert accuracy_check([], 10).near_chance is None


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(0).random(30) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    out = adjust_p([0.01, np.nan, 0.04], "bh")
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    np.testing.assert_allclose(adjust_p([0.01, 0.04], "holm"), holm([0.01, 0.04]))
    with pytest.raises(InputError, match="correction"):
        adjust_p([0.1], "bonferonni")


def test_paired_bootstrap_uses_the_same_images_on_both_sides():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    d = paired_bootstrap(MeanStatistic(), a, b, n_boot=400, level=0.9, seed=3)
    index = np.random.default_rng(3).integers(0, 50, (400, 50))  # bootstrap_ci's draws
    direct = a[index].mean(1) - b[index].mean(1)  # [400, 2], the same resampled images for a and b
    np.testing.assert_allclose(d.estimate, a.mean(0) - b.mean(0))
    np.testing.assert_allclose(d.low, np.percentile(direct, 5, axis=0))
    np.testing.assert_allclose(d.high, np.percentile(direct, 95, axis=0))
    np.testing.assert_allclose(d.p, 2 * stats.norm.sf(np.abs(d.estimate) / direct.std(0, ddof=1)))
    with pytest.raises(InputError, match="same images"):
        paired_bootstrap(MeanStatistic(), a, b[:10])


def _settings(n: int, shift: float, seed: int) -> dict[str, pd.DataFrame]:
    """Two runs on the same n images; run 'b' adds `shift` to method A's score on every image."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + np.array([0.6, 0.3, 0.0])
    y = x + rng.normal(scale=0.5, size=(n, 3)) + np.array([shift, 0.0, 0.0])
    return {"a": _table({"m": x}, {"m": True}, ["A", "B", "C"]), "b": _table({"m": y}, {"m": True}, ["A", "B", "C"])}


def test_overlapping_settings_are_not_significant():
    runs = _settings(40, 0.0, seed=1)
    table = compare_runs(runs, n_boot=500).set_index(["quantity", "method"])
    alpha = [summarize(df, n_boot=500).alpha.iloc[0] for df in runs.values()]
    assert alpha[0]["low"] < alpha[1]["high"] and alpha[1]["low"] < alpha[0]["high"]  # intervals overlap
    assert not table["significant"].any() and (table["p_adj"] >= table["p"]).all()


def test_a_planted_difference_over_200_images_is_significant_after_correction():
    table = compare_runs(_settings(200, 0.8, seed=2), n_boot=500, correction="holm").set_index(["quantity", "method"])
    row = table.loc[("mean", "A")]
    assert row["diff"] == pytest.approx(-0.8, abs=0.1) and row["high"] < 0 and row["significant"]
    assert row["p_adj"] <= 4 * row["p"] + 1e-15  # Holm over the 4 comparisons (alpha and 3 means)
    assert not table.loc[("mean", "C"), "significant"]  # untouched method: no difference
    # alpha: A moves further ahead in run b, so the images agree more on the ranking
    alpha = table.loc[("alpha", None)] if ("alpha", None) in table.index else table.xs("alpha", level=0).iloc[0]
    assert alpha["diff"] < 0 and alpha["significant"]


def test_correlation_over_few_units():
    few = correlation_verdict([0.1, 0.5, 0.9], [1, 2, 3])
    assert not few.conclusive and few.n == 3 and str(few).startswith("too few models to conclude")
    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    y = x + rng.normal(scale=0.5, size=7)
    c = correlation_verdict(x, y, unit="methods")
    assert c.conclusive and c.estimate == pytest.approx(stats.spearmanr(x, y).statistic)
    # exact permutation p: the share of the 7! orders of y whose |rho| reaches the observed one
    null = [stats.spearmanr(x, y[list(order)]).statistic for order in itertools.permutations(range(7))]
    assert c.p == pytest.approx(np.mean(np.abs(null) >= abs(c.estimate) - 1e-12), abs=1e-12)
    assert c.low <= c.estimate <= c.high and "n = 7 methods" in str(c)


def test_cli_folder_of_runs_tags_controls_and_compares_the_runs(tmp_path, synthetic, capsys):
    df = synthetic.assign(method=synthetic["method"].replace({"C": "random"}))
    for name in ("a", "b"):
        layout.write_json(tmp_path / name / layout.MANIFEST, {"config_hash": "h", "n_shards": 1, "config": {}})
        layout.write_parquet(layout.results_path(tmp_path / name, 0), df)
    assert main(["reliability", str(tmp_path), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "=== a ===" in out and "=== b ===" in out and "random (control)" in out
    assert "Comparisons between runs" in out and "Holm (1979)" in out and "0 significant" in out
    assert "inconclusive" not in out.split("Verdict")[1].split("ordered:")[1].split("\n")[0]  # 60 images, alpha 1
    assert main(["reliability", str(tmp_path), "--n-boot", "100", "--json", "--correction", "bh"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["runs"]) == {"a", "b"} and data["correction"] == "bh"
    assert data["runs"]["a"]["controls"] == ["random"] and data["runs"]["a"]["verdicts"][0]["verdict"] == "reliable"
    same = [c for c in data["comparisons"] if c["quantity"] == "alpha"]
    assert same and all(c["diff"] == 0 and not c["significant"] for c in same)  # identical runs


def test_images_needed_is_not_stated_when_alpha_sits_on_the_threshold():
    v = reliability_verdict(0.67, 0.47, 0.83, 40)
    assert v.label == "inconclusive" and "many more images would be needed (more than 400" in str(v)
