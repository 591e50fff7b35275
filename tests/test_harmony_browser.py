"""A real browser (Debian chromium driven by Playwright) against the real server: log in, label with
clicks and keys, go back, change an answer; the labelling page shows the image and both maps."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("django")

@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium):
    from django.contrib.auth import get_user_model

    from xaibench.harmony.dataset import load_dataset
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-browser-home"))
    get_user_model().objects.create_user("browser_ann", password="browser password")
    load_dataset(make_sample_dataset(tmp_path_factory.mktemp("harmony-browser-study"), conditions=1, examples=3, size=96))
    from django.db import connections

    connections.close_all()
    with LiveServer(home, threads=4) as live:
        yield live


@pytest.fixture(scope="module")
def page(server, chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"], headless=True)
        context = browser.new_context(viewport={"width": 1100, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(20000)
        yield pg
        context.close()
        browser.close()


def off_loop(fn):
    """Run ``fn`` in a worker thread: Playwright's sync API keeps an event loop in this one, and
    Django's ORM refuses to run inside an event loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def labels():
    return off_loop(_labels)


def _labels():
    from django.db import connections

    from xaibench.harmony.models import Assignment, Label, Presentation
    from xaibench.harmony.views import example_order

    connections.close_all()

    order = example_order(Assignment.objects.get(annotator__username="browser_ann"))
    out = {}
    for label in Label.objects.filter(annotator__username="browser_ann").select_related("example"):
        pres = Presentation.objects.get(annotator=label.annotator, example=label.example)
        side = "neither" if label.choice == "neither" else (
            "left" if (label.choice == "finetuned") == pres.finetuned_left else "right")
        out[order.index(label.example_id) + 1] = side
    return out


def test_browser_login_label_back_change(server, page, tmp_path):
    base = server.url
    page.goto(base + "/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "browser_ann")
    page.fill("#id_password", "browser password")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    assert page.locator(".card").count() == 1 and "0 / 3" in page.inner_text(".card")
    page.click(".card a")
    page.wait_for_url(base + "/card/1/1/")

    # the image and both maps are shown
    for sel in ("#picture-image", "#picture-left", "#picture-right"):
        img = page.locator(sel)
        img.wait_for(state="visible")
        assert page.evaluate("(s) => { const i = document.querySelector(s); return i.complete && i.naturalWidth; }", sel) > 0
    shot = page.screenshot(path=str(tmp_path / "label.png"), full_page=True)
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=float)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # not blank
    box = page.locator("#picture-left").bounding_box()
    crop = pixels[int(box["y"]): int(box["y"] + box["height"]), int(box["x"]): int(box["x"] + box["width"])]
    assert crop.size and crop.std() > 10  # the heat map really is painted

    # a click, then keys
    page.click("button[data-key=left]")
    page.wait_for_url(base + "/card/1/2/")
    page.keyboard.press("3")
    page.wait_for_url(base + "/card/1/3/")
    page.keyboard.press("ArrowDown")
    page.wait_for_url(base + "/card/1/done/")
    assert "is done" in page.inner_text("main")
    assert labels() == {1: "left", 2: "right", 3: "neither"}

    # go back with the key B and change an answer
    page.goto(base + "/card/1/3/")
    page.keyboard.press("b")
    page.wait_for_url(base + "/card/1/2/")
    assert "chosen" in page.get_attribute("button[data-key=right]", "class")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(base + "/card/1/3/")
    assert labels() == {1: "left", 2: "left", 3: "neither"}

    def stored():
        from xaibench.harmony.models import Label

        return list(Label.objects.filter(annotator__username="browser_ann").values_list(
            "response_ms", "client_response_ms", "revisions"))

    rows = off_loop(stored)
    assert len(rows) == 3 and all(server is not None and client is not None for server, client, _ in rows)
    assert sorted(r for *_, r in rows) == [0, 0, 1]
    page.goto(base + "/")
    assert "3 / 3" in page.inner_text(".card")
