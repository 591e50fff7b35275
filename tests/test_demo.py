"""The main job on a few images: both runs, both reports, and the shortcut visible in the alignment."""

from __future__ import annotations

import pandas as pd

from xaibench.demo import ALIGNMENT_MASKS, demo_config, run_demo


def test_demo_configs_cover_every_family() -> None:
    from xaibench.metrics import METRICS
    from xaibench.metrics.base import CATEGORIES

    for which in ("normal", "spurious"):
        cfg = demo_config(which)
        assert cfg.data["n"] >= 200 and len(cfg.methods) >= 8
        names = {m.metric for m in cfg.metrics}
        assert len(names) >= 12
        assert {METRICS.get(n).info.category for n in names} == set(CATEGORIES)
        assert {m.mask for m in cfg.metrics if m.mask} == set(ALIGNMENT_MASKS)


def test_demo_shows_the_shortcut(tmp_path, capsys) -> None:
    result = run_demo(tmp_path / "demo", n=24)
    printed = capsys.readouterr().out
    assert "NOT as expected" not in printed and "as expected" in printed
    # the verdicts of the report: model accuracy with its interval, 24 images too few for a reliability verdict
    assert "model: accuracy" in printed and "Wilson CI" in printed and "inconclusive (n = 24" in printed
    assert "mean over the non-control methods" in printed
    for which, path in result.reports.items():
        page = path.read_text(encoding="utf-8")
        assert path.is_file() and page.startswith("<!DOCTYPE html>"), which
        criteria = page[page.index('<section id="criteria">'):]
        assert all(c in criteria[:criteria.index("</section>")] for c in ("faithfulness", "localisation", "complexity"))
    summary = result.alignment_summary().set_index(["model", "metric"])
    assert len(summary) == 6  # 2 models x 3 size-aware alignment metrics
    for metric in summary.index.get_level_values("metric").unique():
        normal, spurious = summary.loc[("normal", metric)], summary.loc[("spurious", metric)]
        assert spurious["square"] > spurious["digit"], metric
        assert normal["digit"] > normal["square"], metric
    # A second call reuses the finished runs: the same rows.
    again = run_demo(tmp_path / "demo", n=24, quiet=True)
    pd.testing.assert_frame_equal(again.alignment, result.alignment)
