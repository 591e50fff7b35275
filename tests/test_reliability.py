"""Reliability statistics against their oracles: the krippendorff package, scipy's bootstrap and
Wilcoxon test, Gomez et al.'s published minimum benchmark sizes, and synthetic runs with known answers."""

from __future__ import annotations

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
    bootstrap_ci,
    first_place_rates,
    holm,
    interpret_alpha,
    krippendorff_alpha,
    minimum_benchmark_size,
    per_image_ranks,
    summarize,
    top_stays_first_probability,
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
