"""`xaibench report DIR --export DEST`: every table as CSV + booktabs LaTeX (intervals kept, no literal
NaN), every figure as SVG + PDF at print size, for a run, a folder of runs and an experiment."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.cli import main
from xaibench.report.export import PRINT_WIDTH, latex_table, with_interval
from xaibench.colours import text_colour
from xaibench.report.plots import MAP_CLIP
from xaibench.runner import parse_config, run

CONFIG = {
    "seed": 0, "shard_size": 4,
    "model": {"spec": "builtin:digits-cnn"},
    "data": {"spec": "builtin:digits-spurious", "n": 8},
    "methods": {"saliency": {}, "gradcam": {}, "random": {}},
    "metrics": {"deletion": {"steps": 4}, "sparseness": {},
                "pointing_game_digit": {"metric": "pointing_game", "mask": "digit"}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs") / "demo"
    for name in ("normal", "other"):
        run(parse_config({**CONFIG, "name": name}), root / name, progress=False)
    return root


def test_run_export_gives_csv_latex_svg_pdf(runs, tmp_path, capsys):
    dest = tmp_path / "paper"
    assert main(["report", str(runs), "--export", str(dest)]) == 0
    assert "exported" in capsys.readouterr().out
    out = dest / "normal"
    for table in ("ranking", "reliability", "significant_pairs", "benchmark_size", "agreement", "undefined_scores"):
        assert (out / f"{table}.csv").is_file()
        tex = (out / f"{table}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and not re.search(r"\bnan\b", tex, re.I)
    ranking = pd.read_csv(out / "ranking.csv")
    row = ranking.iloc[0]
    assert f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]" in (out / "ranking.tex").read_text()
    for figure in ("distributions", "curves", "agreement", "gallery"):
        assert (out / f"{figure}.svg").read_text().lstrip().startswith("<?xml")
        assert (out / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
    width = float((out / "curves.svg").read_text().split('width="', 1)[1].split("pt", 1)[0]) / 72
    assert width <= PRINT_WIDTH + 0.5  # tight bounding box: the legend may add a little
    assert f"{MAP_CLIP:g}th percentile" in (out / "gallery.txt").read_text()
    assert (dest / "other" / "ranking.tex").is_file()


def test_experiment_export(tmp_path):
    from xaibench.experiments import run_experiment
    from xaibench.report.export import export
    from xaibench.config import read_toml

    cfg = read_toml("experiment-model-comparison")
    cfg["data"]["n"] = 12
    out = run_experiment("model-comparison", cfg, tmp_path / "mc")
    written = export(out, tmp_path / "paper")
    suffixes = {p.suffix for p in written}
    assert {".csv", ".tex", ".svg", ".pdf"} <= suffixes
    assert all("config_hash" not in p.read_text() for p in written if p.suffix == ".csv")


def test_latex_cells():
    assert with_interval(0.41234, 0.38, 0.441) == "0.412 [0.380, 0.441]"
    assert with_interval(0.5, math.nan, math.nan) == "0.500" and with_interval(math.nan, 0.1, 0.2) == "--"
    tex = latex_table(pd.DataFrame({"method": ["input_x_gradient"], "score": [np.nan], "p": [1e-6]}), "50% & more", "t")
    assert "input\\_x\\_gradient & -- & 1.0e-06 \\\\" in tex and "50\\% \\& more" in tex


def test_heat_map_text_contrasts_with_its_cell():
    assert text_colour((0.02, 0.1, 0.4, 1.0)) == "white"  # dark navy
    assert text_colour((0.97, 0.97, 0.97, 1.0)) == "black"  # near white


def test_clipped_colour_scale_keeps_a_map_with_a_few_extreme_pixels_visible():
    from xaibench.plotting import colour_limits

    heat = torch.linspace(0, 1, 400).reshape(20, 20)
    heat[0, 0] = 1000.0  # one extreme pixel
    assert colour_limits(heat)[1] == 1000.0
    vmin, vmax, _ = colour_limits(heat, clip=99.0)
    assert vmin == 0 and vmax == pytest.approx(float(torch.quantile(heat.flatten().double(), 0.99)))
    assert colour_limits(-heat, clip=99.0)[:2] == (-vmax, vmax)
    sparse = torch.zeros(20, 20)
    sparse[3, 4] = 2.0  # the percentile is 0: the maximum is kept
    assert colour_limits(sparse, clip=99.0)[1] == 2.0


CUT = """() => {
  const W = document.documentElement.clientWidth, cut = [];
  for (const t of document.querySelectorAll('table, img.plot')) {
    const box = t.parentElement;
    if (t.getBoundingClientRect().right > W + 1 || box.scrollWidth > box.clientWidth + 1) cut.push(t.id || t.alt || t.tagName);
  }
  return cut;
}"""


def test_report_fits_1280_and_1440_px_and_prints_every_column(runs, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from xaibench.report import build_report

    page_path = build_report(runs / "normal")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri())
            for width in (1280, 1440):
                page.set_viewport_size({"width": width, "height": 900})
                assert page.evaluate(CUT) == [], width
            page.set_viewport_size({"width": 1060, "height": 750})  # A4 landscape less the margins, at 96 dpi
            page.emulate_media(media="print")
            assert page.evaluate(CUT) == []
            page.pdf(path=str(tmp_path / "report.pdf"), landscape=True, format="A4")
        finally:
            browser.close()
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
