"""The HTML report: self-contained, numbers from the reliability summary, renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest

import xaibench
from xaibench.report import build_report
from xaibench.runner import parse_config, run

CONFIG = {
    "name": "report test",
    "seed": 0,
    "shard_size": 6,
    "model": {"spec": "builtin:digits-spurious-cnn"},
    "data": {"spec": "builtin:digits-spurious", "n": 12},
    "methods": {"saliency": {}, "input_x_gradient": {}},
    "metrics": {
        "deletion": {"steps": 4},
        "rma_digit": {"metric": "relevance_mass_accuracy", "mask": "digit"},
        "rma_square": {"metric": "relevance_mass_accuracy", "mask": "square"},
    },
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run(parse_config(CONFIG), out)
    return build_report(out)


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
    for r in rel.alpha.itertuples(index=False):
        assert r.metric in alpha and str(r.interpretation) in alpha
    for section in ("curves", "distributions", "sanity", "alignment", "gallery", "size", "provenance"):
        assert f'<section id="{section}">' in page
    assert parse_config(CONFIG).hash in page


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
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            assert page.locator("#ranking-table").is_visible()
            assert page.locator("#alpha-table").is_visible()
            rows = page.locator("#ranking-table tbody tr").count()
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            first_plot = page.locator("img.plot").first
            first_plot.scroll_into_view_if_needed()
            assert first_plot.is_visible()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert rows == len(CONFIG["methods"])
    assert widths and min(widths) > 0
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] > 900 and pixels.std() > 10  # not blank: tables and plots drawn
