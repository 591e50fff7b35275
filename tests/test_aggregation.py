"""Cross-metric aggregation per criterion: constructed rankings that agree, conflict or tie, and the
bootstrap interval against a loop over the same resamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaibench.errors import InputError
from xaibench.reliability import aggregate_criteria


def _table(scores: dict[str, np.ndarray], methods: list[str], category: dict[str, str],
           higher: dict[str, bool] | None = None) -> pd.DataFrame:
    """Tidy rows from {metric: scores [n_images, n_methods]}."""
    rows = []
    for metric, x in scores.items():
        for i in range(x.shape[0]):
            for k, method in enumerate(methods):
                rows.append({"image_id": f"img{i}", "method": method, "metric": metric, "score": float(x[i, k]),
                             "category": category[metric], "higher_is_better": (higher or {}).get(metric, True)})
    return pd.DataFrame(rows)


METHODS = ["a", "b", "c"]


def _ordered(order: list[int], n: int = 20, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """Scores [n, 3] where method k has level order[k] (higher = better) plus small noise."""
    rng = np.random.default_rng(seed)
    return np.asarray(order, dtype=float)[None] + noise * rng.standard_normal((n, 3))


def test_agreeing_metrics_give_one_ranking_with_tight_intervals() -> None:
    scores = {"m1": _ordered([3, 2, 1]), "m2": _ordered([3, 2, 1], seed=1),
              "m3": -_ordered([3, 2, 1], seed=2)}  # lower is better, same order
    cats = {"m1": "faithfulness", "m2": "faithfulness", "m3": "faithfulness"}
    agg = aggregate_criteria(_table(scores, METHODS, cats, {"m3": False}), n_boot=200)
    r = agg.rankings.set_index("method")
    assert r["median_rank"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert (r["low"] == r["median_rank"]).all() and (r["high"] == r["median_rank"]).all()
    assert r["rank"].to_dict() == {"a": 1, "b": 2, "c": 3}
    assert (r["n_metrics"] == 3).all() and (r["n_images"] == 20).all()
    np.testing.assert_allclose(agg.agreement.to_numpy(), 1.0)
    assert agg.disagreements.empty
    assert (agg.consensus["tau"] == 1.0).all()


def test_conflicting_metrics_are_listed_and_the_median_follows_the_majority() -> None:
    scores = {"m1": _ordered([3, 2, 1]), "m2": _ordered([1, 2, 3], seed=1), "m3": _ordered([3, 2, 1], seed=2),
              "r1": _ordered([1, 3, 2], seed=3)}
    cats = {"m1": "faithfulness", "m2": "faithfulness", "m3": "faithfulness", "r1": "robustness"}
    agg = aggregate_criteria(_table(scores, METHODS, cats), n_boot=200)
    faith = agg.rankings[agg.rankings["criterion"] == "faithfulness"].set_index("method")
    assert faith["median_rank"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}  # median of (1,3,1), (2,2,2), (3,1,3)
    robust = agg.rankings[agg.rankings["criterion"] == "robustness"].set_index("method")
    assert robust["median_rank"].to_dict() == {"a": 3.0, "b": 1.0, "c": 2.0}
    pairs = {(row.metric_a, row.metric_b): row.tau for row in agg.disagreements.itertuples()}
    assert pairs[("m1", "m2")] == pytest.approx(-1.0) and pairs[("m2", "m3")] == pytest.approx(-1.0)
    assert ("m1", "m3") not in pairs
    assert pairs[("m1", "r1")] == pytest.approx(-1 / 3) and ("m2", "r1") not in pairs  # across criteria too
    assert list(agg.disagreements["tau"]) == sorted(agg.disagreements["tau"])  # most negative first
    cons = agg.consensus.set_index("metric")["tau"]
    assert cons["m2"] == pytest.approx(-1.0) and cons["m1"] == pytest.approx(1.0)


def test_interval_is_the_percentile_bootstrap_of_the_median_rank() -> None:
    """A and B nearly tie: the interval spans both places; equal to a loop over the same resamples."""
    rng = np.random.default_rng(5)
    n = 15
    scores = {f"m{j}": np.stack([rng.normal(1.0, 1, n), rng.normal(0.9, 1, n), rng.normal(-3, 0.1, n)], 1)
              for j in range(3)}
    cats = dict.fromkeys(scores, "localisation")
    agg = aggregate_criteria(_table(scores, METHODS, cats), n_boot=300, seed=7, level=0.9)
    cube = np.stack([scores[f"m{j}"] for j in range(3)], 1)  # [n, metrics, methods]
    index = np.random.default_rng(7).integers(0, n, (300, n))
    boot = np.stack([np.median(stats.rankdata(-cube[i].mean(0), axis=-1), axis=0) for i in index])
    r = agg.rankings.set_index("method")
    np.testing.assert_allclose(r["low"], np.percentile(boot, 5, axis=0))
    np.testing.assert_allclose(r["high"], np.percentile(boot, 95, axis=0))
    assert r.loc["a", "low"] == 1.0 and r.loc["a", "high"] == 2.0 and r.loc["c", "high"] == 3.0


def test_partial_tables_are_noted_and_errors_name_the_fix() -> None:
    scores = {"m1": _ordered([3, 2, 1]), "m2": _ordered([3, 2, 1], seed=1), "x": _ordered([3, 2, 1], seed=4)}
    table = _table(scores, METHODS, {"m1": "complexity", "m2": "complexity", "x": "randomisation"})
    table.loc[(table["metric"] == "m2") & (table["image_id"] == "img0"), "score"] = np.nan
    agg = aggregate_criteria(table, n_boot=50)
    assert (agg.rankings["n_images"] == 19).all()
    assert any("randomisation" in n and "x" in n for n in agg.notes)
    assert any("1 of 20 shared images" in n for n in agg.notes)
    with pytest.raises(InputError, match="categories"):
        aggregate_criteria(table.drop(columns="category"), n_boot=50)
    with pytest.raises(InputError, match="no criterion for metric"):
        aggregate_criteria(table, categories={"m1": "complexity"}, n_boot=50)
