"""The HTML report: self-contained, numbers from the reliability summary, a summary with verdicts,
controls never "best", normalised curves, rates for binary scores, a partial run announced, and in
headless Chromium a fixed first column and a gallery of every method on the same images."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import xaibench
from xaibench.reliability import alpha_verdicts
from xaibench.report import build_report
from xaibench.report.curves import curve_panels
from xaibench.report.html import ranking_table
from xaibench.report.plots import is_binary, rate_interval
from xaibench.report.summary import (
    alignment_finding,
    best_per_metric,
    control_methods,
    effective_params,
    model_sanity,
    sanity_verdicts,
    twins,
)
from xaibench.runner import parse_config, run

CONFIG = {
    "name": "report test",
    "seed": 0,
    "shard_size": 6,
    "model": {"spec": "builtin:digits-spurious-cnn"},
    "data": {"spec": "builtin:digits-spurious", "n": 12},
    "methods": {"saliency": {}, "input_x_gradient": {}, "random": {}},
    "metrics": {
        "deletion": {"steps": 4},
        "rma_digit": {"metric": "relevance_mass_accuracy", "mask": "digit"},
        "rma_square": {"metric": "relevance_mass_accuracy", "mask": "square"},
        "pg_square": {"metric": "pointing_game", "mask": "square"},
    },
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run(parse_config(CONFIG), out)
    return build_report(out)


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def test_self_contained(report):
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:image/png;base64,|#)""", page)
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) >= 4  # agreement, curves, distributions, galleries
    from PIL import Image

    for uri in uris:
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()


def test_numbers_come_from_the_reliability_summary(report):
    from xaibench.reliability import summarize

    page = report.read_text(encoding="utf-8")
    rel = summarize(xaibench.load_results(report.parent))
    ranking = page[page.index('id="ranking-table"') : page.index("</table>", page.index('id="ranking-table"'))]
    for r in rel.means.itertuples(index=False):
        assert f"#{int(r.rank)}" in ranking
        assert f"{r.mean:.3f}" in ranking, (r.metric, r.method)
    alpha = page[page.index('id="alpha-table"') :]
    for r in alpha_verdicts(rel.alpha, rel.level).itertuples(index=False):
        assert r.metric in alpha and html.escape(r.reason) in alpha
        assert r.verdict == "inconclusive"  # 12 images: below the minimum for any verdict
    for section in ("summary", "curves", "distributions", "sanity", "alignment", "gallery", "size", "provenance"):
        assert f'<section id="{section}">' in page
    assert parse_config(CONFIG).hash[:16] in page


def test_criteria_section_shows_the_aggregate_ranking(report):
    from xaibench.reliability import aggregate_criteria

    agg = aggregate_criteria(xaibench.load_results(report.parent))
    section = _section(report.read_text(encoding="utf-8"), "criteria")
    assert set(agg.rankings["criterion"]) == {"faithfulness", "localisation"}
    for r in agg.rankings.itertuples(index=False):
        assert f"{r.median_rank:.1f} [{r.low:.1f}, {r.high:.1f}]" in section
    assert "Metrics that disagree" in section


def test_summary_says_what_was_run_and_the_verdicts(report):
    summary = _section(report.read_text(encoding="utf-8"), "summary")
    assert "builtin:digits-spurious-cnn" in summary and "builtin:digits-spurious" in summary
    assert "n = 12" in summary
    for label in ("saliency", "input_x_gradient", "random", *CONFIG["metrics"]):
        assert label in summary
    assert "steps=4" in summary  # deletion's parameter as run
    assert "normalize=original" in summary  # ... and its default, as run
    assert "Reliable enough to rank by" in summary or "No metric is reliable enough" in summary
    results = xaibench.load_results(report.parent)
    rma = results[(results["metric_name"] == "relevance_mass_accuracy") & (results["method"] != "random")]
    favoured = rma.groupby("mask")["score"].mean().idxmax()
    assert f"Human alignment" in summary and f"most on the &#x27;{favoured}&#x27; mask" in summary
    assert 'id="partial"' not in report.read_text(encoding="utf-8")


def test_controls_are_never_best(report):
    page = report.read_text(encoding="utf-8")
    ranking = page[page.index('id="ranking-table"') : page.index("</table>", page.index('id="ranking-table"'))]
    random_row = next(r for r in ranking.split("<tr") if "random<span" in r)
    assert 'class="best"' not in random_row
    assert 'class="control"' in "<tr" + random_row


def _rel(means: list[tuple], alpha: dict[str, float], significant: bool = True) -> SimpleNamespace:
    frame = pd.DataFrame(means, columns=["metric", "method", "mean", "low", "high", "rank", "n"])
    pairs = []
    for metric, group in frame.groupby("metric"):
        methods = list(group["method"])
        pairs += [{"metric": metric, "method_a": a, "method_b": b, "significant": significant}
                  for i, a in enumerate(methods) for b in methods[i + 1:]]
    alpha_frame = pd.DataFrame({"metric": list(alpha), "alpha": list(alpha.values()), "low": list(alpha.values()),
                                "high": list(alpha.values()), "n_images": [100] * len(alpha),
                                "interpretation": ["x"] * len(alpha), "reason": [None] * len(alpha)})
    return SimpleNamespace(means=frame, alpha=alpha_frame, pairwise=pd.DataFrame(pairs))


def test_best_method_skips_controls_and_flags_a_winning_control():
    rel = _rel([("m", "random", 0.9, 0.8, 1.0, 1, 10), ("m", "gradcam", 0.7, 0.6, 0.8, 2, 10),
                ("m", "saliency", 0.2, 0.1, 0.3, 3, 10), ("u", "gradcam", 0.5, 0.4, 0.6, 1, 10),
                ("u", "saliency", 0.4, 0.3, 0.5, 2, 10)], {"m": 0.9, "u": 0.3})
    best = best_per_metric(rel, {"random"}).set_index("metric")
    assert best.at["m", "best"] == "gradcam" and best.at["m", "beaten_by"] == ["random"]
    assert bool(best.at["m", "reliable"]) and bool(best.at["m", "clear"])
    assert best.at["u", "best"] == "gradcam" and not best.at["u", "reliable"]  # alpha 0.3 < 0.667
    assert not best_per_metric(_rel(rel.means.values.tolist(), {"m": 0.9, "u": 0.3}, significant=False),
                               {"random"}).set_index("metric").at["m", "clear"]
    results = pd.DataFrame({"metric": ["m"] * 3, "method": ["random", "gradcam", "saliency"],
                            "higher_is_better": [True] * 3})
    table = ranking_table(rel.means[rel.means["metric"] == "m"], results, rel.alpha, {"random"}, {"m"})
    rows = {r.split("</th>")[0].split(">")[-1] if "<span" not in r else "random": r for r in table.split("<tr")[2:]}
    assert 'class="ctrl-win"' in rows["random"] and 'class="best"' not in rows["random"]
    assert 'class="best"' in rows["gradcam"] and 'class="best"' not in rows["saliency"]


def test_identical_methods_share_one_rank_and_are_named():
    rel = _rel([("m", "saliency", 0.7, 0.6, 0.8, 1, 10), ("m", "guided_backprop", 0.7, 0.6, 0.8, 2, 10),
                ("m", "gradcam", 0.2, 0.1, 0.3, 3, 10)], {"m": 0.9})
    results = pd.DataFrame({"metric": ["m"] * 3, "method": ["saliency", "guided_backprop", "gradcam"],
                            "higher_is_better": [True] * 3, "same_as": [None, "saliency", None]})
    assert twins(results) == {"guided_backprop": "saliency"}
    table = ranking_table(rel.means, results, rel.alpha, set(), {"m"})
    rows = table.split("<tr")[2:]
    assert "= saliency" in rows[1] and "#1" in rows[0] and "#1" in rows[1] and 'class="best"' in rows[1]
    assert twins(results.drop(columns="same_as")) == {}  # runs written before the column existed


def test_controls_come_from_the_method_registry():
    results = pd.DataFrame({"method": ["edges", "noise", "grad"], "method_name": ["sobel", "random", "saliency"]})
    assert control_methods(results) == {"edges", "noise"}


def test_sanity_verdicts_use_the_confidence_bounds_and_the_threshold():
    rel = _rel([("mprt", "a", 0.2, 0.1, 0.3, 1, 9), ("mprt", "b", 0.9, 0.8, 1.0, 3, 9),
                ("mprt", "c", 0.5, 0.3, 0.7, 2, 9)], {"mprt": 0.9})
    results = pd.DataFrame({"metric": ["mprt"], "category": ["randomisation"]})
    table = sanity_verdicts(rel, results, {"mprt": {"threshold": 0.5}}).set_index("method")
    assert table["verdict"].to_dict() == {"a": "passes", "b": "fails", "c": "unclear"}
    assert table.at["a", "mprt"] == "passes (0.20)"
    strict = sanity_verdicts(rel, results, {"mprt": {"threshold": 0.25}}).set_index("method")
    assert strict.at["a", "verdict"] == "unclear"


def test_alignment_finding_names_the_mask_the_maps_fall_on():
    rows = [("pg", "pointing_game", m, method, s) for m, method, s in
            [("digit", "a", 0.2), ("square", "a", 0.8), ("digit", "b", 0.4), ("square", "b", 0.6),
             ("digit", "random", 1.0), ("square", "random", 0.0)]]
    results = pd.DataFrame(rows, columns=["metric", "metric_name", "mask", "method", "score"]).assign(category="localisation")
    table, sentences = alignment_finding(results, {"random"})
    assert table.set_index("metric").loc["pointing_game"].to_dict() == pytest.approx({"digit": 0.3, "square": 0.7})
    assert "'square'" in sentences[0] and "square 0.700 vs digit 0.300" in sentences[1]


def test_effective_params_prefer_the_stored_column():
    base = pd.DataFrame({"metric": ["del"], "metric_name": ["deletion"]})
    cfg = {"max_batch": 99, "metrics": {"del": {"metric": "deletion", "mask": None, "steps": 7}}}
    params = effective_params(base, cfg)["del"]
    assert params["steps"] == 7 and params["normalize"] == "original" and params["max_batch"] == 99
    stored = base.assign(params=[json.dumps({"steps": 3})])
    assert effective_params(stored, cfg) == {"del": {"steps": 3}}


def test_normalised_curves_integrate_to_the_score():
    # deletion with normalize="original": score = area(curve) / score of the unperturbed image
    curve = np.array([0.8, 0.4, 0.2])
    original = 0.8
    area = 0.5 * (curve.sum() - (curve[0] + curve[-1]) / 2)
    results = pd.DataFrame({"image_id": ["i"], "method": ["m"], "metric": ["del"], "metric_name": ["deletion"],
                            "score": [area / original]})
    curves = pd.DataFrame({"image_id": ["i"], "method": ["m"], "metric": ["del"], "curve": [curve.tolist()]})
    (panel,) = curve_panels(curves, results, {"del": {"normalize": "original", "granularity": None, "patch_size": 1}})
    np.testing.assert_allclose(panel.means["m"], curve / original)
    assert panel.xlabel == "fraction of pixels removed (most relevant first)" and panel.x == [0.0, 0.5, 1.0]
    (raw,) = curve_panels(curves, results, {"del": {"normalize": None}})
    np.testing.assert_allclose(raw.means["m"], curve)
    road = curves.assign(metric="road")
    (panel,) = curve_panels(road, results.assign(metric="road", metric_name="road"), {"road": {"percentages": [10, 50]}})
    assert panel.x == [0.0, 10.0, 50.0] and "ROAD" in panel.xlabel
    mprt = curves.assign(metric="mprt")
    (panel,) = curve_panels(mprt, results.assign(metric="mprt", metric_name="model_parameter_randomisation"),
                            {"mprt": {"layers": ["fc", "conv2", "conv1"], "order": "top_down"}})
    assert panel.x == ["fc", "conv2", "conv1"] and "top-down" in panel.xlabel


def test_binary_scores_are_rates_with_wilson_intervals():
    assert is_binary(pd.Series([0.0, 1.0, np.nan, 1.0])) and not is_binary(pd.Series([0.0, 0.5]))
    rate, low, high = rate_interval(8, 10)
    # Wilson score interval, z = 1.959964: (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    assert rate == 0.8 and low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_partial_run_is_announced(report, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(report.parent, partial)
    (partial / "shards" / "shard-00001.parquet").unlink()
    page = build_report(partial).read_text(encoding="utf-8")
    banner = page[page.index('id="partial"'):page.index("</div>", page.index('id="partial"'))]
    manifest = json.loads((partial / "run.json").read_text())
    missing = manifest["positions"][6:12]
    assert "Partial run: 1 of 2 shards finished" in banner and "(6 of 12 images)" in banner
    assert f"shard 1 (6 images at data set positions {', '.join(map(str, missing))})" in banner
    assert "n = 6</b> images of 12 planned (partial run)" in _section(page, "summary")
    assert page.index('id="partial"') < page.index('<section id="summary">')


def test_renders_in_chromium(report, tmp_path, chromium):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            assert page.locator("#summary-box").is_visible()
            assert page.locator("#ranking-table").is_visible()
            assert page.locator("#alpha-table").is_visible()
            page_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            rows = page.locator("#ranking-table tbody tr").count()
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)

            # a narrow window: the ranking table scrolls sideways, its method column stays put
            page.set_viewport_size({"width": 320, "height": 800})  # a phone: the wrapped table still overflows
            sticky = page.evaluate("""() => {
                const box = document.querySelector('#ranking-table').parentElement;
                const first = () => document.querySelector('#ranking-table tbody tr th').getBoundingClientRect().left;
                const last = () => document.querySelector('#ranking-table tbody tr td:last-child').getBoundingClientRect().left;
                const before = [first(), last()];
                box.scrollLeft = box.scrollWidth;
                return {overflows: box.scrollWidth > box.clientWidth, first: [before[0], first()], last: [before[1], last()]};
            }""")
            # the gallery: the same images in every column, one colour bar per map
            gallery = page.evaluate("""() => Array.from(document.querySelectorAll('#gallery-table tbody tr')).map(
                tr => Array.from(tr.querySelectorAll('img')).map(i => i.alt))""")
            bars = page.locator("#gallery-table .bar").count()
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert rows == len(CONFIG["methods"])
    assert page_width[0] <= page_width[1]  # nothing wider than the window at 1280 px
    assert widths and min(widths) > 0
    assert sticky["overflows"] and sticky["first"][0] == sticky["first"][1] and sticky["last"][1] < sticky["last"][0]
    assert len(gallery) >= 6  # 12 images, one per class in turn
    for alts in gallery:
        image_id = alts[0].removeprefix("image ")
        assert alts[1:] == [f"{m} map of {image_id} with colour bar" for m in CONFIG["methods"]]
    assert bars == len(gallery) * len(CONFIG["methods"])
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] > 800 and pixels.std() > 10  # not blank: tables and plots drawn


def test_map_tiles_carry_their_colour_bar():
    import torch
    from PIL import Image

    from xaibench.plotting import DIVERGING, SEQUENTIAL
    from xaibench.report.plots import BAR, map_tile

    import matplotlib.pyplot as plt

    for heat, cmap, limits in ((torch.linspace(-1, 2, 64).reshape(8, 8), DIVERGING, (-2.0, 2.0)),
                               (torch.rand(8, 8) * 3, SEQUENTIAL, None)):
        uri, vmin, vmax = map_tile(heat, (8, 8), [torch.ones(8, 8, dtype=torch.bool)], cell=32)
        tile = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)
        assert tile.shape == (32 + 3 + BAR, 32, 3)
        want = np.round(plt.get_cmap(cmap)(np.linspace(0, 1, 32))[:, :3] * 255)
        assert np.abs(tile[-1] - want).max() <= 1  # the bar spans the colour map from vmin to vmax
        if limits:
            assert (vmin, vmax) == limits
        else:
            assert vmin == 0 and vmax == pytest.approx(float(heat.max()))
        assert (tile[0, 5] == (0, 230, 64)).all()  # the mask's outline along the border


def test_runs_without_the_newer_columns_still_report(report, tmp_path, monkeypatch):
    import xaibench.report.html as report_html

    old = tmp_path / "old"
    shutil.copytree(report.parent, old)
    newer = ["label_name", "target_name", "prediction_name", "params", "seconds"]
    full = xaibench.load_results(old)
    monkeypatch.setattr(report_html, "load_results", lambda out: full.drop(columns=[c for c in newer if c in full]))
    page = build_report(old).read_text(encoding="utf-8")
    summary = _section(page, "summary")
    assert "steps=4" in summary and "normalize=original" in summary  # config over the metric's defaults
    assert "wall time" not in summary
    gallery = _section(page, "gallery")
    assert "true: " in gallery and "predicted: " in gallery  # class names from the data set


def test_gallery_masks_come_from_the_data_set_only_if_it_is_unchanged(report):
    from xaibench.report.html import _gallery_masks

    cfg = json.loads((report.parent / "run.json").read_text())["config"]
    images = xaibench.store.load_images(report.parent)
    positions, ids = images["positions"][:2], images["ids"][:2]
    masks, classes, problem = _gallery_masks(cfg, positions, ids, ["digit", "square"])
    assert set(masks) == {"digit", "square"} and masks["square"].shape == (2, 32, 32) and problem == ""
    assert classes == [str(d) for d in range(10)]
    masks, _, problem = _gallery_masks(cfg, positions, ids[::-1], ["digit"])
    assert masks == {} and "the data set has changed since the run" in problem
    gone = {**cfg, "data": {**cfg["data"], "spec": "builtin:nothing"}}
    assert "could not be read" in _gallery_masks(gone, positions, ids, ["digit"])[2]


def test_a_model_at_chance_gets_a_banner_and_not_meaningful_labels(tmp_path):
    from xaibench.models import load_model, save_model

    model = load_model("builtin:digits-cnn")
    last = [m for m in model.modules() if hasattr(m, "out_features")][-1]
    with torch.no_grad():  # a constant prediction: class 9 for every image, right only on the 9s
        last.weight.zero_()
        last.bias.copy_(torch.arange(10.0))
    path = save_model(model, tmp_path / "chance.pt", "builtin:digits-cnn")
    cfg = {"name": "chance", "seed": 0, "shard_size": 10, "model": {"spec": f"file:{path}"},
           "data": {"spec": "builtin:digits", "n": 10},
           "methods": {"saliency": {}, "random": {}},
           "metrics": {"sparseness": {}, "random_logit": {}}}
    run(parse_config(cfg), tmp_path / "run")
    page = build_report(tmp_path / "run").read_text(encoding="utf-8")
    assert 'id="chance"' in page and "Model at or near chance" in page
    summary, sanity, ranking = (_section(page, s) for s in ("summary", "sanity", "ranking"))
    assert "not meaningful" in summary and "at or near chance" in summary and " of 10 images, 95% Wilson CI" in summary
    assert "Not meaningful" in sanity and "Not meaningful" in ranking
    assert 'class="best"' not in ranking  # no method is highlighted on a model at chance
    # the same numbers through the function the report uses
    check, origin, meaningful = model_sanity(xaibench.load_results(tmp_path / "run"),
                                             xaibench.store.load_manifest(tmp_path / "run"))
    assert check.near_chance and not meaningful and check.n == 10 and "model file" in origin


def test_weights_origin_from_the_run_config():
    from xaibench.report.summary import weights_origin

    assert weights_origin({"spec": "torchvision:resnet18"}, 3) == (
        "random initialisation (seed 3): no trained weights", True)
    assert not weights_origin({"spec": "torchvision:resnet18", "weights": "DEFAULT"}, 0)[1]
    assert weights_origin({"spec": "builtin:digits-cnn"}, 0)[0].startswith("trained by xaibench")
    assert weights_origin({"spec": "file:/m.pt"}, 0)[0].startswith("model file /m.pt")
    assert weights_origin({}, 0) == ("unknown (model spec '?')", False)


def test_demo_summary_and_report_give_the_same_alignment_numbers():
    from xaibench.demo import DemoResult, alignment_table

    rows = [("pg", "pointing_game", m, method, s) for m, method, s in
            [("digit", "a", 0.2), ("square", "a", 0.8), ("digit", "b", 0.4), ("square", "b", 0.6),
             ("digit", "b", 0.6), ("square", "b", 0.2), ("digit", "random", 1.0), ("square", "random", 0.0)]]
    results = pd.DataFrame(rows, columns=["metric", "metric_name", "mask", "method", "score"]).assign(
        category="localisation")
    table, _ = alignment_finding(results, control_methods(results))
    demo = DemoResult(Path("."), {}, {}, alignment_table({"m": results}), 0.0).alignment_summary()
    # controls left out of both; the mean over methods of each method's mean (b: 0.5 on the digit)
    assert table.set_index("metric").loc["pointing_game"].to_dict() == pytest.approx({"digit": 0.35, "square": 0.6})
    assert demo.set_index("metric").loc["pointing_game", ["digit", "square"]].to_dict() == pytest.approx(
        {"digit": 0.35, "square": 0.6})


def test_curves_undefined_everywhere_are_left_out_of_the_figure():
    """An all-NaN mean curve (MPRT on a model that always predicts one class) is not drawn; the
    other methods' curves are, and the figure renders (matplotlib fails on markers of an all-NaN line)."""
    import numpy as np

    from xaibench.report.plots import CurvePanel, curves_figure, curves_plot

    panel = CurvePanel("mprt", ["logits", "fc", "conv"], "layers randomised", "similarity",
                       {"gradcam": np.full(3, np.nan), "saliency": np.array([1.0, 0.5, 0.2])})
    fig = curves_plot([panel], ["gradcam", "saliency"], set())
    assert [len(ax.lines) for ax in fig.axes if ax.get_title() == "mprt"] == [1]
    assert curves_figure([panel], ["gradcam", "saliency"], set()).startswith("data:image/png;base64,")
