"""HARMONY hardening: pictures re-encoded so only pixels differ between the sides, failed-login
throttling, password validators, hostile `load` paths and strings, static-path traversal, server-side
response times, per-annotator example order."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from harmony_testing import cli, make_annotator as annotator

pytest.importorskip("django")

PASSWORD = "correct horse 1"
TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')


def answer_tokens(html: str) -> dict[str, str]:
    return {side: token for token, side in TOKEN_RE.findall(html)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import use_home

    home = use_home(tmp_path_factory.mktemp("harmony-security-home"))
    data = make_sample_dataset(tmp_path_factory.mktemp("harmony-security-study"), conditions=1, examples=8, size=32)
    cli("load", str(data))
    return {"home": home, "data": data}


def logged_in(name: str):
    from django.test import Client

    client = Client()
    client.force_login(annotator(name))
    return client


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG file."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(png):
        (n,) = struct.unpack(">I", png[i: i + 4])
        out.append((png[i + 4: i + 8], png[i + 8: i + 8 + n]))
        i += 12 + n
    return out


# ---------------------------------------------------------------- blinding: only pixels differ


def leaky_study(root: Path) -> Path:
    """One example whose two maps carry tell-tale metadata and different encodings."""
    from xaibench.harmony.sample import make_sample_dataset

    make_sample_dataset(root, conditions=1, examples=1, size=24, name="leaky")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["conditions"][0]["dataset"] = "Leaky"
    (root / "manifest.json").write_text(json.dumps(manifest))
    folder = root / "c0" / "000"
    original = np.asarray(Image.open(folder / "original.png").convert("RGB"))
    finetuned = np.asarray(Image.open(folder / "finetuned.png").convert("RGB"))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "finetuned model, epoch 12")
    rgba = np.concatenate([finetuned, np.full(finetuned.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "finetuned.png", pnginfo=info, compress_level=1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "original pipeline")
    Image.fromarray(original).save(folder / "original.png", pnginfo=info, dpi=(300, 300), optimize=True)
    return root


def test_pictures_differ_only_in_pixels(study, tmp_path):
    from xaibench.harmony.models import Assignment, Condition, Presentation

    root = leaky_study(tmp_path / "leaky")
    sources = {p: np.asarray(Image.open(root / "c0" / "000" / f"{p}.png").convert("RGB")) for p in ("original", "finetuned")}
    assert b"finetuned model" in (root / "c0" / "000" / "finetuned.png").read_bytes()
    cli("load", str(root))
    from django.contrib.auth import get_user_model

    from xaibench.harmony.dataset import assign_conditions

    client = logged_in("ann_leak")
    user = client.session["_auth_user_id"]
    leaky = Condition.objects.get(dataset="Leaky")
    assign_conditions(get_user_model().objects.get(pk=user), [leaky])
    card = [a.condition_id for a in Assignment.objects.filter(annotator_id=user).order_by("position", "id")].index(leaky.pk) + 1
    served = {}
    for slot in ("image", "left", "right"):
        r = client.get(f"/card/{card}/1/picture/{slot}.png")
        assert r.status_code == 200
        served[slot] = r.content
    for slot, png in served.items():
        types = [t for t, _ in chunks(png) if t != b"IDAT"]
        assert types == [b"IHDR", b"IEND"], (slot, types)
        assert not any(word in png for word in (b"finetuned", b"original", b"tEXt", b"pHYs"))
        assert Image.open(io.BytesIO(png)).mode == "RGB"
    assert len(served["left"]) == len(served["right"])  # byte sizes say nothing about the sides
    layout = [[(t, len(d)) for t, d in chunks(served[slot])] for slot in ("left", "right")]
    assert layout[0] == layout[1] and chunks(served["left"])[0] == chunks(served["right"])[0]  # same IHDR
    pres = Presentation.objects.get(annotator_id=user, example__condition=leaky)
    for slot, side in (("left", pres.finetuned_left), ("right", not pres.finetuned_left)):
        pixels = np.asarray(Image.open(io.BytesIO(served[slot])))
        np.testing.assert_array_equal(pixels, sources["finetuned" if side else "original"])


def test_uncompressed_maps_of_one_size_have_one_length(tmp_path):
    from xaibench.harmony.dataset import canonical_png

    rng = np.random.default_rng(0)
    lengths = set()
    for i, pixels in enumerate([np.zeros((70, 90, 3), np.uint8), rng.integers(0, 256, (70, 90, 3), dtype=np.uint8),
                                np.repeat(np.arange(90, dtype=np.uint8)[None, :, None], 70, 0).repeat(3, 2)]):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png", optimize=True)
        data = canonical_png(tmp_path / f"{i}.png", compress=False)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
        lengths.add(len(data))
    assert len(lengths) == 1  # flat, noise and gradient: the same number of bytes


def test_transparent_and_16_bit_pictures_become_8_bit_rgb(tmp_path):
    from xaibench.harmony.dataset import canonical_png

    gray16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = np.asarray(Image.open(io.BytesIO(canonical_png(tmp_path / "g16.png"))))
    np.testing.assert_array_equal(out[..., 0], np.round(gray16 / 257).astype(np.uint8))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red, transparent becomes white, half alpha halfway
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1, 0] = (0, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(Image.open(io.BytesIO(canonical_png(tmp_path / "a.png"))))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255] and out[1, 0].tolist() == [127] * 3


# ---------------------------------------------------------------- load: paths, lengths, sizes


def sample(root: Path, edit) -> Path:
    from xaibench.harmony.sample import make_sample_dataset

    make_sample_dataset(root, conditions=1, examples=2, size=16)
    manifest = json.loads((root / "manifest.json").read_text())
    edit(root, manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_load_refuses_symlinks_out_of_the_folder(study, tmp_path):
    from xaibench.errors import InputError

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (16, 16)).save(outside / "secret.png")

    def link_file(root, m):
        (root / "c0" / "000" / "image.png").unlink()
        (root / "c0" / "000" / "image.png").symlink_to(outside / "secret.png")

    def link_folder(root, m):
        (root / "elsewhere").symlink_to(outside, target_is_directory=True)
        m["conditions"][0]["examples"][1]["original"] = "elsewhere/secret.png"

    for name, edit in (("file", link_file), ("folder", link_folder)):
        root = sample(tmp_path / name, edit)
        with pytest.raises(InputError, match="outside the data-set folder"):
            cli("load", str(root))
    # a link that stays inside the folder is fine
    root = sample(tmp_path / "inside", lambda r, m: (r / "alias").symlink_to(r / "c0", target_is_directory=True))
    from xaibench.harmony.dataset import read_manifest

    assert read_manifest(root).conditions[0].examples[0].key == "000"


def test_load_bounds_paths_and_strings(study, tmp_path):
    from xaibench.errors import InputError
    from xaibench.harmony.models import Example

    n = Example.objects.count()
    cases = [
        (lambda r, m: m["conditions"][0]["examples"][0].update(image="a/" * 3000 + "x.png"), "longer than 512 characters"),
        (lambda r, m: m["conditions"][0]["examples"][0].update(image="a" * 300 + ".png"), "cannot open .*File name too long"),
        (lambda r, m: m["conditions"][0]["examples"][0].update(prediction="x" * 200_000), "'prediction' has 200,000 characters; at most 256"),
        (lambda r, m: m["conditions"][0]["examples"][1].update(label="y" * 1000), "'label' has 1,000 characters"),
        (lambda r, m: m.update(description="z" * 100_000), "'description' has 100,000"),
        (lambda r, m: m.update(name="n" * 129), "'name' has 129 characters"),
    ]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(InputError, match=message):
            cli("load", str(sample(tmp_path / f"case{i}", edit)))
    with pytest.raises(InputError, match="longer than 4096 characters"):
        cli("load", "/tmp/" + "d" * 6000)
    with pytest.raises(InputError, match="cannot read it"):
        cli("load", "/tmp/" + "d" * 300)
    assert Example.objects.count() == n


def test_load_checks_picture_sizes(study, tmp_path):
    from xaibench.errors import InputError

    def resize_map(root, m):
        Image.new("RGB", (17, 16)).save(root / "c0" / "001" / "finetuned.png")

    with pytest.raises(InputError, match=r"examples\[1\]: the two maps differ in size \(original 16x16, finetuned 17x16"):
        cli("load", str(sample(tmp_path / "sizes", resize_map)))

    def huge_image(root, m):
        Image.new("L", (5000, 1)).save(root / "c0" / "000" / "image.png")

    with pytest.raises(InputError, match="5000x1 pixels; at most 4096"):
        cli("load", str(sample(tmp_path / "huge", huge_image)))

    def truncated(root, m):
        path = root / "c0" / "000" / "original.png"
        path.write_bytes(path.read_bytes()[:-30])

    with pytest.raises(InputError, match="original.png is not a readable PNG"):
        cli("load", str(sample(tmp_path / "truncated", truncated)))


# ---------------------------------------------------------------- accounts


def post_login(client, username, password, addr, path="/accounts/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=addr)


def test_failed_logins_throttled_per_account(study, monkeypatch):
    from django.test import Client

    from xaibench.harmony import throttle

    annotator("thr_account")
    for i in range(5):
        r = post_login(Client(), "thr_account", f"wrong {i}", addr=f"10.1.0.{i}")
        assert r.status_code == 200 and "correct username and password" in r.content.decode()
        assert "Too many" not in r.content.decode()
    client = Client()
    r = post_login(client, "thr_account", PASSWORD, addr="10.1.1.1")  # right password, new address: refused
    assert r.status_code == 429 and "Too many failed logins" in r.content.decode() and "_auth_user_id" not in client.session
    annotator("thr_other")
    assert post_login(Client(), "thr_other", PASSWORD, addr="10.1.0.1").status_code == 302  # other accounts unaffected
    later = throttle.time.time() + 901
    monkeypatch.setattr(throttle.time, "time", lambda: later)
    assert post_login(Client(), "thr_account", PASSWORD, addr="10.1.1.1").status_code == 302  # the window ended


def test_failed_logins_throttled_per_client(study):
    from django.test import Client

    annotator("thr_client")
    for i in range(20):
        assert post_login(Client(), f"nobody{i}", "guess", addr="10.2.0.1").status_code == 200
    assert post_login(Client(), "thr_client", PASSWORD, addr="10.2.0.1").status_code == 429
    assert post_login(Client(), "thr_client", PASSWORD, addr="10.2.0.2").status_code == 302


def test_success_clears_the_account_counter_and_admin_login_is_throttled(study):
    from django.contrib.auth import get_user_model
    from django.test import Client

    annotator("thr_reset")
    for _ in range(2):
        for i in range(4):
            post_login(Client(), "thr_reset", "wrong", addr=f"10.3.{_}.{i}")
        assert post_login(Client(), "thr_reset", PASSWORD, addr="10.3.9.9").status_code == 302
    get_user_model().objects.create_user("thr_staff", password=PASSWORD, is_staff=True, is_superuser=True)
    for i in range(5):
        post_login(Client(), "thr_staff", "wrong", addr=f"10.4.0.{i}", path="/admin/login/")
    r = post_login(Client(), "thr_staff", PASSWORD, addr="10.4.1.1", path="/admin/login/")
    assert r.status_code == 200 and "Too many failed logins" in r.content.decode()


def test_concurrent_wrong_passwords_get_exactly_the_limit_through(study):
    """60 logins at once naming one account (from 60 addresses): exactly the account's limit (5)
    get their password checked, on SQLite and (in the PostgreSQL pass) on PostgreSQL."""
    import threading

    from django.db import connection
    from django.test import Client

    annotator("thr_burst")
    barrier, codes = threading.Barrier(60), []

    def attempt(i: int) -> None:
        try:
            barrier.wait()
            r = post_login(Client(), "thr_burst", f"wrong {i}", addr=f"10.6.{i // 250}.{i % 250}")
            codes.append(r.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [429] * 55  # 200: password checked (and wrong); 429: refused


def test_client_address_behind_a_trusted_proxy(study):
    from django.test import RequestFactory, override_settings

    from xaibench.harmony.throttle import client_address

    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 10.5.0.7")
    assert client_address(request) == "127.0.0.1"  # no trusted proxy: the header is ignored
    with override_settings(HARMONY_TRUSTED_PROXIES=["127.0.0.1"]):
        assert client_address(request) == "10.5.0.7"  # the proxy's own entry, not the client's claim
        direct = RequestFactory().get("/", REMOTE_ADDR="10.5.0.8", HTTP_X_FORWARDED_FOR="1.2.3.4")
        assert client_address(direct) == "10.5.0.8"


def test_add_annotator_runs_the_password_validators(study, monkeypatch):
    from django.contrib.auth import get_user_model

    from xaibench.errors import InputError

    for name, password, message in (("weak", "password", "too common"), ("weak", "abc123", "too short"),
                                    ("weakling", "weakling", "too similar to the username"),
                                    ("weak", "8246139075", "entirely numeric")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        with pytest.raises(InputError, match=f"password refused for '{name}': .*{message}"):
            cli("add-annotator", name, "--password-stdin")
    with pytest.raises(InputError, match="reserved for imported legacy annotators"):
        cli("add-annotator", "legacy.annotator_1")
    assert not get_user_model().objects.filter(username__in=["weak", "weakling", "legacy.annotator_1"]).exists()


# ---------------------------------------------------------------- static files, response time, order


def test_static_path_traversal_is_404(study):
    from wsgiref.util import setup_testing_defaults

    from xaibench.harmony.wsgi import application

    def status(path: str) -> str:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ.update(PATH_INFO=path, **{"wsgi.errors": io.StringIO()})
        got = []
        b"".join(application(environ, lambda s, headers, exc=None: got.append(s)))
        return got[0]

    assert status("/static/harmony/harmony.css").startswith("200")
    for path in ("/static/../..", "/static/../../settings.py", "/static/harmony/../../../../etc/passwd", "/static/" + "a" * 5000):
        assert status(path).startswith("404"), path


def test_response_time_measured_on_the_server(study):
    from datetime import timedelta

    from django.utils import timezone

    from xaibench.harmony.models import Label, Presentation

    client = logged_in("ann_time")
    html = client.get("/card/1/1/").content.decode()
    tokens = answer_tokens(html)
    Presentation.objects.filter(annotator__username="ann_time").update(shown_at=timezone.now() - timedelta(seconds=5))
    client.post("/card/1/1/", {"choice": tokens["left"], "rt": "1"})
    label = Label.objects.get(annotator__username="ann_time")
    assert label.client_response_ms == 1 and 5000 <= label.response_ms < 60_000
    for bad in ("1e308", "nan", "-5", "x" * 10_000):
        client.post("/card/1/1/", {"choice": tokens["right"], "rt": bad})
        label.refresh_from_db()
        assert label.client_response_ms is None and label.response_ms >= 5000


def test_each_annotator_has_an_own_stable_example_order(study):
    from xaibench.harmony.models import Assignment, Label
    from xaibench.harmony.views import example_order

    first, orders = [], []
    for i in range(4):
        name = f"ann_order{i}"
        client = logged_in(name)
        client.post("/card/1/1/", {"choice": answer_tokens(client.get("/card/1/1/").content.decode())["neither"]})
        first.append(Label.objects.get(annotator__username=name).example_id)
        assignment = Assignment.objects.get(annotator__username=name)
        order = example_order(assignment)
        assert order == example_order(assignment) and order[0] == first[-1]
        assert sorted(order) == sorted(assignment.condition.examples.values_list("id", flat=True))
        orders.append(order)
    assert len(set(first)) > 1 and len({tuple(o) for o in orders}) == 4


def test_migration_moves_old_response_times_to_the_client_column(study):
    from django.core.management import call_command
    from django.db import connection

    from xaibench.harmony.models import Label

    client = logged_in("ann_migrate")
    client.post("/card/1/2/", {"choice": answer_tokens(client.get("/card/1/2/").content.decode())["left"], "rt": "10"})
    pk = Label.objects.get(annotator__username="ann_migrate").pk
    call_command("migrate", "harmony", "0001", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE harmony_label SET response_ms = 777 WHERE id = %s", [pk])
    call_command("migrate", "harmony", verbosity=0)
    label = Label.objects.get(pk=pk)
    assert label.client_response_ms == 777 and label.response_ms is None
    assert os.environ["XAIBENCH_HARMONY_HOME"] == str(study["home"])


def test_load_reports_unreadable_json_without_a_traceback(study, tmp_path):
    from xaibench.errors import InputError

    for name, text, message in (
        ("digits", '{"format": "xaibench-harmony-study", "version": ' + "9" * 5000 + "}", "cannot read the JSON"),
        ("nested", "[" * 100_000 + "]" * 100_000, "cannot read the JSON"),
        ("key", json.dumps({"k" * 100_000: 1}), r"unknown key\(s\) 'kkkk.*\(100,002 characters\)"),
    ):
        root = tmp_path / name
        root.mkdir()
        (root / "manifest.json").write_text(text)
        with pytest.raises(InputError, match=message):
            cli("load", str(root))


def test_migration_moves_accounts_imported_by_older_versions_to_the_legacy_namespace(study):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from xaibench.harmony.models import Example, Label

    User = get_user_model()
    example = Example.objects.filter(condition__dataset="Sample").first()
    old = User.objects.create_user("annotator_9")  # imported before: no password, labels from the import only
    old.set_unusable_password()
    old.save()
    Label.objects.create(annotator=old, example=example, choice="neither", legacy_id=5)
    mixed = User.objects.create_user("annotator_8")  # also labelled live: stays
    mixed.set_unusable_password()
    mixed.save()
    Label.objects.create(annotator=mixed, example=example, choice="neither", legacy_id=6)
    Label.objects.create(annotator=mixed, example=Example.objects.filter(condition__dataset="Sample")[1], choice="neither")
    live = User.objects.create_user("annotator_7", password=PASSWORD)  # can log in: stays
    Label.objects.create(annotator=live, example=example, choice="neither", legacy_id=7)
    call_command("migrate", "harmony", "0002", verbosity=0)
    call_command("migrate", "harmony", verbosity=0)
    old.refresh_from_db()
    assert old.username == "legacy.annotator_9" and not old.is_active
    assert User.objects.filter(username__in=["annotator_8", "annotator_7"]).count() == 2
