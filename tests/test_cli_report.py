"""`xaibench report` on a run, on a folder of runs and on a folder without runs; `xaibench
reliability --max-pairs` and its explanation of the top method."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xaibench.cli import main
from xaibench.cli.reliability import _text
from xaibench.runner import parse_config, run

CONFIG = {
    "seed": 0,
    "shard_size": 3,
    "model": {"spec": "builtin:digits-cnn"},
    "data": {"spec": "builtin:digits", "n": 6},
    "methods": {"saliency": {}, "sobel": {}, "random": {}},
    "metrics": {"sparseness": {}, "complexity": {}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        run(parse_config({**CONFIG, "name": f"run {name}"}), root / "demo" / name)
    return root / "demo"


def test_report_on_a_run_and_on_a_folder_of_runs(runs, capsys, tmp_path) -> None:
    assert main(["report", str(runs / "a")]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {runs / 'a' / 'report.html'}"
    (runs / "a" / "report.html").unlink()
    assert main(["report", str(runs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{runs} holds 2 runs:"
    assert lines[1] == f"  {runs / 'a'}  (run a; 2 of 2 shards): {runs / 'a' / 'report.html'}"
    assert lines[2].startswith(f"  {runs / 'b'}  (run b; 2 of 2 shards)")
    assert (runs / "a" / "report.html").exists() and (runs / "b" / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no run (no run.json in it or below)" in capsys.readouterr().err


def test_reliability_limits_the_pairs_it_prints(runs, capsys) -> None:
    assert main(["reliability", str(runs / "a"), "--n-boot", "50", "--max-pairs", "1"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("Paired Wilcoxon tests"))
    assert main(["reliability", str(runs / "a"), "--n-boot", "50", "--max-pairs", "all"]) == 0
    full = capsys.readouterr().out
    n_sig = int(head.split(": ")[1].split(" of ")[0])
    listed = [line for line in full.split("Paired Wilcoxon")[1].split("\n\n")[0].splitlines()[1:]]
    assert len(listed) == n_sig
    if n_sig > 1:
        assert "; the 1 with the smallest p_adj:" in head and f"... {n_sig - 1} more" in out
    assert "top = the method ranked first on the most images" in out
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["reliability", str(runs / "a"), "--max-pairs", "-3"])
    assert "expected a number >= 0 or 'all', got '-3'" in capsys.readouterr().err


def test_top_method_differing_from_the_mean_ranking_is_marked() -> None:
    from types import SimpleNamespace

    empty = pd.DataFrame(columns=["metric", "method_a", "method_b", "diff", "n", "p", "p_adj", "significant"])
    rel = SimpleNamespace(
        level=0.95, notes=(), pairwise=empty.astype({"significant": bool}),
        alpha=pd.DataFrame({"metric": ["m"], "alpha": [0.5], "low": [0.1], "high": [0.9],
                            "interpretation": ["unreliable"], "n_images": [10]}),
        means=pd.DataFrame({"metric": ["m", "m"], "method": ["a", "b"], "mean": [0.9, 0.6], "low": [0.8, 0.5],
                            "high": [1.0, 0.7], "rank": [1, 2], "n": [10, 10]}),
        benchmark_size=pd.DataFrame([{"metric": "m", "top_method": "b", "top_prob": 0.7, "min_n": 10, "max_n": 10,
                                      "n_images": 10, "reducible": False, "first_place_probs": {"a": 0.3, "b": 0.7},
                                      "reason": None}]),
    )
    text = _text(rel)
    assert "m: top b (mean-score #1: a), 10 of 10 (cannot be reduced); first places: b 0.70, a 0.30" in text
    rel.pairwise = pd.DataFrame({"metric": ["m"] * 3, "method_a": ["a", "a", "b"], "method_b": ["b", "c", "c"],
                                 "diff": [0.3, 0.2, 0.1], "n": [10] * 3, "p": [0.02, 0.001, 0.01],
                                 "p_adj": [0.04, 0.003, 0.02], "significant": [True] * 3})
    text = _text(rel, max_pairs=2)
    assert "3 of 3 method pairs differ (Holm p_adj < 0.05); the 2 with the smallest p_adj:" in text
    lines = text.split("Paired Wilcoxon")[1].splitlines()
    assert lines[1].startswith("  m: a vs c") and lines[2].startswith("  m: b vs c")
    assert lines[3] == "  ... 1 more (--max-pairs all prints them, --json has every pair)"
    assert "a vs b" in _text(rel, max_pairs=None) and "a vs b" not in text
