"""The mask task: loading, saving through the views (auth, CSRF, isolation, validation, one
annotation per pair), export in xaibench's folder layout read back by `load_dataset` (pointing game
as expected), inter-annotator IoU, and a real browser drawing, undoing, zooming and saving."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from xaibench.errors import InputError

pytest.importorskip("django")

W, H = 48, 40  # not square: a transposed mask would not fit
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def make_mask_dataset(root):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i, label in enumerate(["tabby cat", "dog", "tabby cat"]):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / f"secret-name-{i}.png")
        images.append({"id": f"img{i}", "image": f"secret-name-{i}.png", "label": label})
    (root / "manifest.json").write_text(json.dumps({"format": "xaibench-harmony-masks", "version": 1, "images": images}))
    return root


def data_url(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def rect(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def masks_home(tmp_path_factory):
    from harmony_testing import cli, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-masks-home"))
    cli("load-masks", str(make_mask_dataset(tmp_path_factory.mktemp("masks") / "set")))
    from django.contrib.auth import get_user_model

    for name in ("mask_a", "mask_b", "mask_c"):
        get_user_model().objects.create_user(name, password="mask password 1")
    return home


def client(name):
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    page = c.get("/accounts/login/").content.decode()
    r = c.post("/accounts/login/", {"username": name, "password": "mask password 1", "csrfmiddlewaretoken": CSRF_RE.search(page).group(1)})
    assert r.status_code == 302
    return c


def image_number(name: str, key: str) -> int:
    from django.contrib.auth import get_user_model

    from xaibench.harmony.masks import image_order
    from xaibench.harmony.models import MaskImage

    return image_order(get_user_model().objects.get(username=name).pk).index(MaskImage.objects.get(key=key).pk) + 1


def draw(c, n, mask, boxes=(), status=302):
    html = c.get(f"/masks/{n}/").content.decode()
    r = c.post(f"/masks/{n}/", {"mask": data_url(mask), "boxes": json.dumps(list(boxes)),
                                "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})
    assert r.status_code == status, r.content[:300]
    return r


def test_load_is_idempotent_and_validates(masks_home, tmp_path, capsys):
    from harmony_testing import cli

    root = make_mask_dataset(tmp_path / "set")  # the same images and name
    cli("load-masks", str(root))
    assert "0 new, 0 updated, 3 unchanged" in capsys.readouterr().out
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["images"][1]["id"] = "img0"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"images\[1\]: duplicate image id 'img0'"):
        cli("load-masks", str(root))
    manifest["images"][1].update(id="x", image="../escape.png")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="without '..'"):
        cli("load-masks", str(root))


def test_auth_csrf_and_validation(masks_home):
    from django.test import Client

    anonymous = Client()
    for url in ("/masks/", "/masks/1/", "/masks/1/image.png", "/masks/1/mine.png"):
        r = anonymous.get(url)
        assert r.status_code == 302 and "/accounts/login/" in r["Location"], url
    c = client("mask_c")
    assert c.post("/masks/1/", {"mask": data_url(rect(0, 0, 5, 5))}).status_code == 403  # no CSRF token
    page = c.get("/masks/1/")
    html = page.content.decode()
    assert page.status_code == 200 and "secret-name" not in html and "img0" not in html  # no file names or ids
    assert c.get("/masks/1/mine.png").status_code == 404  # nothing saved yet
    image = c.get("/masks/1/image.png")
    assert image["Cache-Control"] == "private, no-store" and Image.open(io.BytesIO(image.content)).size == (W, H)
    draw(c, 1, np.zeros((H, W), bool), status=400)  # nothing drawn
    draw(c, 1, np.ones((W, H), bool), status=400)  # transposed size
    draw(c, 1, rect(0, 0, 4, 4), boxes=[[0, 0, W + 1, 4]], status=400)  # a box outside the image
    csrf = CSRF_RE.search(html).group(1)
    assert c.post("/masks/1/", {"mask": "data:image/png;base64,!!!", "csrfmiddlewaretoken": csrf}).status_code == 400
    assert c.get("/masks/99/").status_code == 404
    # hostile box JSON (deeply nested, too long, nested within the length bound): a clear 400, never a 500
    for boxes in ("[" * 50000 + "]" * 50000, "[" + "[0, 0, 1, 1], " * 2000 + "[0, 0, 1, 1]]", "[" * 3000 + "]" * 3000):
        r = c.post("/masks/1/", {"mask": data_url(rect(0, 0, 4, 4)), "boxes": boxes, "csrfmiddlewaretoken": csrf})
        assert r.status_code == 400 and b"boxes must be a JSON list" in r.content, boxes[:20]


def test_save_replace_and_isolation(masks_home):
    from xaibench.harmony.models import MaskAnnotation
    from xaibench.harmony.masks import read_stored_mask

    a, b = client("mask_a"), client("mask_b")
    n = image_number("mask_a", "img0")
    draw(a, n, rect(0, 0, 20, 40), boxes=[[1, 2, 30, 20]])
    draw(a, n, rect(0, 0, 24, 40), boxes=[[0, 0, 24, 40]])  # saving again replaces
    rows = MaskAnnotation.objects.filter(annotator__username="mask_a")
    assert rows.count() == 1 and rows[0].revisions == 1 and rows[0].boxes == [[0, 0, 24, 40]]
    assert (read_stored_mask(rows[0].mask) == rect(0, 0, 24, 40)).all() and rows[0].inside == 24 * 40
    assert "[[0, 0, 24, 40]]" in a.get(f"/masks/{n}/").content.decode()
    # b sees neither a's mask nor a's boxes
    nb = image_number("mask_b", "img0")
    assert b.get(f"/masks/{nb}/mine.png").status_code == 404
    assert "24, 40" not in b.get(f"/masks/{nb}/").content.decode()
    draw(b, nb, rect(0, 0, 24, 20), boxes=[[0, 0, 24, 20]])  # b: the top half of a's region
    assert (np.asarray(Image.open(io.BytesIO(b.get(f"/masks/{nb}/mine.png").content)).convert("L")) >= 128).sum() == 24 * 20
    assert "1 / 3" in a.get("/").content.decode()


def test_export_round_trip_pointing_game_and_iou(masks_home, tmp_path, capsys):
    """a drew the left half (x < 24), b its top half (y < 20); the majority of two is their
    intersection. A map peaking at (x=5, y=5) hits it; one peaking at (x=10, y=30) hits a's mask only."""
    import torch

    from xaibench.data import load_dataset
    from harmony_testing import cli
    from xaibench.metrics import METRICS

    out = tmp_path / "export"
    cli("export-masks", str(out))
    assert "1 image(s) with masks" in capsys.readouterr().out
    ds = load_dataset(f"folder:{out}", split="val")
    assert len(ds) == 1 and ds[0].id == "tabby_cat/img0"
    sample = ds[0]
    assert sample.masks["mask"].shape == (H, W)
    assert torch.equal(sample.masks["mask"], torch.from_numpy(rect(0, 0, 24, 20)))
    assert torch.equal(sample.masks["box"], torch.from_numpy(rect(0, 0, 24, 40)))  # union of both annotators' boxes
    maps = torch.zeros(2, H, W)
    maps[0, 5, 5] = 1
    maps[1, 30, 10] = 1
    pointing = METRICS.get("pointing_game")
    masks = sample.masks["mask"].expand(2, H, W)
    assert pointing(attributions=maps, masks=masks).scores.tolist() == [1.0, 0.0]

    cli("export-masks", str(tmp_path / "a"), "--annotator", "mask_a", "--split", "train")
    sample = load_dataset(f"folder:{tmp_path / 'a'}", split="train")[0]
    assert pointing(attributions=maps, masks=sample.masks["mask"].expand(2, H, W)).scores.tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="no mask annotation"):
        cli("export-masks", str(tmp_path / "x"), "--annotator", "nobody")

    from xaibench.harmony.masks import mask_agreement

    m = mask_agreement()
    row = next(r for r in m["per_image"] if r["image"] == "img0")
    assert row["annotators"] == 2 and row["mask_iou"] == pytest.approx(0.5) and row["box_iou"] == pytest.approx(0.5)
    assert m["images_2plus"] == 1 and m["mean_mask_iou"] == pytest.approx(0.5)
    cli("analyze")
    assert "mean pairwise IoU of the masks 0.500" in capsys.readouterr().out


def test_concurrent_annotators_one_annotation_per_pair(masks_home):
    """(After the export test, which counts the annotations of a and b only.) 8 annotators save every image at once, each image twice in parallel threads: every
    annotation is stored exactly once, with one of the two masks posted."""
    import threading

    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.db.models import Count

    from xaibench.harmony.models import MaskAnnotation

    names = [f"crowd{i}" for i in range(8)]
    for name in names:
        get_user_model().objects.create_user(name, password="mask password 1")
    errors: list = []

    def work(name):
        try:
            c = client(name)
            for n in (1, 2, 3):
                twins = [threading.Thread(target=draw, args=(c, n, rect(0, 0, 8 + k, 8))) for k in (0, 1)]
                for t in twins:
                    t.start()
                for t in twins:
                    t.join()
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append((name, repr(err)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    rows = MaskAnnotation.objects.filter(annotator__username__in=names)
    assert rows.count() == len(names) * 3
    assert not rows.values("annotator", "image").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert set(rows.values_list("inside", flat=True)) <= {64, 72}


# --- a real browser: draw, undo, zoom, save; the exported mask is what was drawn ---


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory, chromium):
    from django.contrib.auth import get_user_model
    from django.db import connections

    from harmony_testing import LiveServer, cli, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-masks-browser"))
    cli("load-masks", str(make_mask_dataset(tmp_path_factory.mktemp("masks-browser") / "set")))
    get_user_model().objects.create_user("painter", password="painter password")
    connections.close_all()
    with LiveServer(home, threads=4) as live:
        yield live


def test_browser_draw_undo_zoom_save_export(browser_server, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from test_harmony_browser import off_loop

    base = browser_server.url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"], headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(20000)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(base + "/accounts/login/")
        page.fill("#id_username", "painter")
        page.fill("#id_password", "painter password")
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        page.click("#mask-card a")
        page.wait_for_url(base + "/masks/1/")
        page.wait_for_function("document.getElementById('overlay').dataset.ready === '1'")
        page.click("#zoom-in")
        box = page.locator("#overlay").bounding_box()
        scale = box["width"] / W
        assert abs(box["height"] / H - scale) < 1e-6 and scale > 2  # zoomed in, aspect kept

        def to_page(x, y):
            return box["x"] + x * scale, box["y"] + y * scale

        # brush: a horizontal stroke along y = 10 from x = 5 to x = 20 (size 8: radius 4)
        page.mouse.move(*to_page(5, 10))
        page.mouse.down()
        for x in range(5, 21):
            page.mouse.move(*to_page(x, 10))
        page.mouse.up()
        # a polygon in the bottom right, then undone
        page.keyboard.press("p")
        for x, y in ((30, 25), (45, 25), (45, 38), (30, 38)):
            page.mouse.click(*to_page(x, y))
        page.keyboard.press("Enter")
        page.click("#undo")
        # a second polygon in the top right, kept
        for x, y in ((30, 2), (44, 2), (44, 12), (30, 12)):
            page.mouse.click(*to_page(x, y))
        page.keyboard.press("Enter")
        # a box
        page.keyboard.press("x")
        page.mouse.move(*to_page(2, 20))
        page.mouse.down()
        page.mouse.move(*to_page(12, 30))
        page.mouse.move(*to_page(14, 35))
        page.mouse.up()
        page.screenshot(path=str(tmp_path / "mask-drawn.png"), full_page=True)
        assert not errors, errors
        page.click("#save")
        page.wait_for_url(base + "/masks/2/")
        browser.close()

    def export():
        from django.db import connections

        from xaibench.harmony.masks import export_masks

        connections.close_all()
        return export_masks(tmp_path / "out")

    assert off_loop(export)["images"] == 1
    from xaibench.data import load_dataset

    sample = load_dataset(f"folder:{tmp_path / 'out'}", split="val")[0]
    mask = sample.masks["mask"].numpy()
    assert mask.shape == (H, W)
    assert mask[10, 5:21].all() and mask[7:14, 12].all() and not mask[16, 12]  # the stroke, radius 4
    assert mask[3:12, 31:44].all()  # the kept polygon
    assert not mask[26:38, 31:45].any()  # the undone polygon
    assert 15 * 8 < mask.sum() < 15 * 8 + 14 * 10 + 120
    boxes = sample.masks["box"].numpy()
    assert boxes[20:35, 2:14].all() and boxes.sum() == 12 * 15
