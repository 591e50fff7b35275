"""HARMONY web application through Django's test client: flow, auth, isolation, CSRF, blinding,
one label per (annotator, example), study data-set loading, admin progress/export, deploy check."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys

import pytest

from harmony_testing import cli, make_annotator

pytest.importorskip("django")

FORBIDDEN = re.compile(r"original|learn|fine.?tun", re.IGNORECASE)
TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import use_home

    home = use_home(tmp_path_factory.mktemp("harmony-web-home"))
    data = make_sample_dataset(tmp_path_factory.mktemp("harmony-web-study"), conditions=2, examples=3, size=48)
    cli("load", str(data))
    return {"home": home, "data": data}


class Browser:
    """A Django test client that enforces CSRF and records every response for the blinding check."""

    def __init__(self):
        from django.test import Client

        self.client = Client(enforce_csrf_checks=True)
        self.seen: list[tuple[str, object]] = []

    def get(self, url, **kw):
        r = self.client.get(url, **kw)
        self.seen.append((url, r))
        return r

    def post(self, url, data, **kw):
        r = self.client.post(url, data, **kw)
        self.seen.append((url, r))
        return r

    def csrf(self, html: str) -> str:
        return CSRF_RE.search(html).group(1)

    def login(self, name, password="correct horse 1"):
        page = self.get("/accounts/login/").content.decode()
        r = self.post("/accounts/login/", {"username": name, "password": password, "csrfmiddlewaretoken": self.csrf(page)})
        assert r.status_code == 302 and r["Location"] == "/", r.content[:300]

    def page(self, url):
        r = self.get(url)
        assert r.status_code == 200, (url, r.status_code)
        html = r.content.decode()
        return html, dict((side, tok) for tok, side in TOKEN_RE.findall(html)), self.csrf(html)

    def answer(self, url, side):
        html, tokens, csrf = self.page(url)
        return self.post(url, {"choice": tokens[side], "csrfmiddlewaretoken": csrf, "rt": "1234"})


def label_of(name, card, n):
    from xaibench.harmony.models import Assignment, Example, Label
    from xaibench.harmony.views import example_order

    a = Assignment.objects.filter(annotator__username=name).order_by("position", "id")[card - 1]
    example = Example.objects.get(pk=example_order(a)[n - 1])
    return Label.objects.filter(annotator__username=name, example=example), example


def test_full_flow_back_and_change(study):
    from xaibench.harmony.models import Label, Presentation

    make_annotator("ann_flow")
    b = Browser()
    assert b.get("/").status_code == 302
    b.login("ann_flow")
    home = b.get("/").content.decode()
    assert "Study 1" in home and "Study 2" in home and "0 / 3" in home
    r = b.get("/card/1/")
    assert r.status_code == 302 and r["Location"] == "/card/1/1/"
    html, tokens, _ = b.page("/card/1/1/")
    assert set(tokens) == {"left", "right", "neither"} and len(set(tokens.values())) == 3
    assert html.count("<img") == 3

    sides = ["left", "right", "neither"]
    for n, side in enumerate(sides, start=1):
        r = b.answer(f"/card/1/{n}/", side)
        assert r.status_code == 302
        assert r["Location"] == (f"/card/1/{n + 1}/" if n < 3 else "/card/1/")
        labels, example = label_of("ann_flow", 1, n)
        assert labels.count() == 1
        label = labels.get()
        pres = Presentation.objects.get(annotator__username="ann_flow", example=example)
        expected = "neither" if side == "neither" else (
            Label.FINETUNED if (side == "left") == pres.finetuned_left else Label.ORIGINAL)
        assert label.choice == expected and label.finetuned_left == pres.finetuned_left
        assert label.client_response_ms == 1234 and label.response_ms is not None
    r = b.get("/card/1/")
    assert r["Location"] == "/card/1/done/"
    assert "is done" in b.get("/card/1/done/").content.decode()
    assert "3 / 3" in b.get("/").content.decode()

    # go back to example 2: the saved answer is shown, then changed
    html, tokens, csrf = b.page("/card/1/2/")
    assert re.search(r'data-key="right" class="answer chosen"', html)
    assert 'id="previous"' in html and 'id="next"' in html
    before = label_of("ann_flow", 1, 2)[0].get()
    r = b.post("/card/1/2/", {"choice": tokens["left"], "csrfmiddlewaretoken": csrf})
    assert r.status_code == 302
    after = label_of("ann_flow", 1, 2)[0].get()
    assert after.pk == before.pk and after.choice != before.choice and after.revisions == 1
    assert re.search(r'data-key="left" class="answer chosen"', b.page("/card/1/2/")[0])

    # pictures: the image and both maps are served; the sides follow the stored presentation
    _, example = label_of("ann_flow", 1, 1)
    pres = Presentation.objects.get(annotator__username="ann_flow", example=example)
    from django.core.files.storage import default_storage

    for slot in ("image", "left", "right"):
        r = b.get(f"/card/1/1/picture/{slot}.png")
        assert r.status_code == 200 and r["Content-Type"] == "image/png" and "no-store" in r["Cache-Control"]
        assert "Content-Disposition" not in r
        if slot != "image":
            stored = example.finetuned_map if (slot == "left") == pres.finetuned_left else example.original_map
            assert r.content == default_storage.open(stored).read()
    assert b.get("/card/1/1/picture/other.png").status_code == 404


def test_auth_required_everywhere(study):
    from xaibench.harmony.models import Label

    make_annotator("ann_auth")
    b = Browser()
    urls = ["/", "/card/1/", "/card/1/1/", "/card/1/done/", "/card/1/1/picture/image.png", "/card/1/1/picture/left.png"]
    for url in urls:
        r = b.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/login/"), url
    n = Label.objects.count()
    r = b.client.post("/card/1/1/", {"choice": "x"})
    assert r.status_code in (302, 403)
    assert Label.objects.count() == n
    # the admin is for staff only
    b.login("ann_auth")
    for url in ["/admin/", "/admin/harmony/label/", "/admin/harmony/label/export/", "/admin/harmony/label/progress/"]:
        r = b.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), url


def test_csrf_enforced(study):
    make_annotator("ann_csrf")
    b = Browser()
    b.login("ann_csrf")
    html, tokens, csrf = b.page("/card/1/1/")
    r = b.client.post("/card/1/1/", {"choice": tokens["left"]})
    assert r.status_code == 403
    assert label_of("ann_csrf", 1, 1)[0].count() == 0
    r = b.client.post("/card/1/1/", {"choice": tokens["left"], "csrfmiddlewaretoken": "x" * 64})
    assert r.status_code == 403
    assert label_of("ann_csrf", 1, 1)[0].count() == 0


def test_one_label_per_pair_under_repeated_posts(study):
    make_annotator("ann_repeat")
    b = Browser()
    b.login("ann_repeat")
    html, tokens, csrf = b.page("/card/2/3/")
    for side in ["left", "left", "right", "neither", "right", "left", "left"]:
        r = b.post("/card/2/3/", {"choice": tokens[side], "csrfmiddlewaretoken": csrf})
        assert r.status_code == 302
    labels, _ = label_of("ann_repeat", 2, 3)
    assert labels.count() == 1 and labels.get().revisions == 4
    r = b.post("/card/2/3/", {"choice": "not-a-token", "csrfmiddlewaretoken": csrf})
    assert r.status_code == 400
    r = b.post("/card/2/3/", {"choice": "left", "csrfmiddlewaretoken": csrf})
    assert r.status_code == 400
    assert labels.count() == 1


def test_annotator_isolation(study):
    make_annotator("ann_a")
    make_annotator("ann_b")
    a, b = Browser(), Browser()
    a.login("ann_a")
    b.login("ann_b")
    _, tokens_a, csrf_a = a.page("/card/1/1/")
    a.post("/card/1/1/", {"choice": tokens_a["left"], "csrfmiddlewaretoken": csrf_a})
    html_b, tokens_b, csrf_b = b.page("/card/1/1/")
    assert "chosen" not in html_b and 'id="next"' not in html_b
    assert "0 / 3" in b.get("/").content.decode() and "1 / 3" in a.get("/").content.decode()
    assert set(tokens_a.values()).isdisjoint(tokens_b.values())
    # A's token means nothing to B
    assert b.post("/card/1/1/", {"choice": tokens_a["left"], "csrfmiddlewaretoken": csrf_b}).status_code == 400
    assert label_of("ann_b", 1, 1)[0].count() == 0
    assert b.get("/card/3/").status_code == 404 and b.get("/card/1/4/").status_code == 404
    assert b.get("/card/0/1/").status_code == 404


def test_blinding_nothing_leaks(study):
    from xaibench.harmony.models import Condition, Presentation

    names = [f"ann_blind{i}" for i in range(3)]
    visited = []
    for name in names:
        make_annotator(name)
        b = Browser()
        b.login(name)
        b.get("/")
        for card in (1, 2):
            b.get(f"/card/{card}/")
            for n in (1, 2, 3):
                html, tokens, csrf = b.page(f"/card/{card}/{n}/")
                for slot in ("image", "left", "right"):
                    b.get(f"/card/{card}/{n}/picture/{slot}.png")
                b.post(f"/card/{card}/{n}/", {"choice": tokens[["left", "right", "neither"][n - 1]], "csrfmiddlewaretoken": csrf})
            b.get(f"/card/{card}/done/")
            b.page(f"/card/{card}/2/")
        b.get("/static/harmony/harmony.css")
        b.get("/static/harmony/harmony.js")
        b.post("/accounts/logout/", {"csrfmiddlewaretoken": b.csrf(b.get("/").content.decode())})
        visited += b.seen
    secret_words = set()
    for c in Condition.objects.filter(dataset="Sample"):
        secret_words |= {c.metric, c.model, c.method, c.dataset}
    for url, r in visited:
        assert not FORBIDDEN.search(url), url
        for header, value in r.items():
            assert not FORBIDDEN.search(f"{header}: {value}"), (url, header, value)
        if r.get("Content-Type", "").startswith("image/"):
            continue
        body = b"".join(r.streaming_content) if getattr(r, "streaming", False) else r.content
        text = body.decode()
        assert not FORBIDDEN.search(text), (url, FORBIDDEN.search(text).group(0))
        for word in secret_words:
            assert word not in text, (url, word)
        for value in re.findall(r'value="([^"]*)"', text):
            assert not FORBIDDEN.search(value)
    # sides really are randomised (18 presentations: all equal has probability 2**-17)
    sides = set(Presentation.objects.filter(annotator__username__in=names).values_list("finetuned_left", flat=True))
    assert sides == {True, False}


def test_staff_progress_and_export(study):
    from django.contrib.auth import get_user_model

    make_annotator("ann_staffview")
    b = Browser()
    b.login("ann_staffview")
    b.answer("/card/1/1/", "neither")
    get_user_model().objects.create_user("coordinator", password="correct horse 1", is_staff=True, is_superuser=True)
    s = Browser()
    page = s.get("/admin/login/").content.decode()
    s.post("/admin/login/?next=/admin/", {"username": "coordinator", "password": "correct horse 1",
                                          "csrfmiddlewaretoken": s.csrf(page), "next": "/admin/"})
    progress = s.get("/admin/harmony/label/progress/")
    assert progress.status_code == 200 and "ann_staffview" in progress.content.decode()
    assert s.get("/admin/harmony/label/").status_code == 200
    r = s.get("/admin/harmony/label/export/")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    import pandas as pd

    df = pd.read_csv(io.StringIO(r.content.decode()))
    row = df[df["annotator"] == "ann_staffview"]
    assert len(row) == 1 and row["choice"].iloc[0] == "neither"
    assert {"metric", "model", "method", "example", "finetuned_side", "response_ms"} <= set(df.columns)


def test_cli_add_annotator_export_analyze(study, capsys, monkeypatch, tmp_path):
    cli("add-annotator", "ann_cli")
    out = capsys.readouterr().out
    password = re.search(r"password \(shown only once\): (\S+)", out).group(1)
    b = Browser()
    b.login("ann_cli", password)
    assert "Study 2" in b.get("/").content.decode()
    monkeypatch.setattr(sys, "stdin", io.StringIO("a fine password\n"))
    cli("add-annotator", "ann_cli2", "--password-stdin")
    assert "shown only once" not in capsys.readouterr().out
    Browser().login("ann_cli2", "a fine password")
    from xaibench.errors import InputError

    with pytest.raises(InputError, match="already exists"):
        cli("add-annotator", "ann_cli")
    b.answer("/card/1/1/", "left")
    out_csv = tmp_path / "labels.csv"
    cli("export", "-o", str(out_csv))
    capsys.readouterr()
    assert "ann_cli" in out_csv.read_text()
    cli("analyze", "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["n_labels"] >= 1 and result["conditions"]
    cli("analyze", "--labels", str(out_csv))
    assert "Per condition" in capsys.readouterr().out


def test_load_is_idempotent_and_validates(study, capsys, tmp_path):
    from xaibench.errors import InputError
    from xaibench.harmony.models import Condition, Example
    from xaibench.harmony.sample import make_sample_dataset

    n_cond, n_ex = Condition.objects.count(), Example.objects.count()
    cli("load", str(study["data"]))
    assert "0 new condition(s), 0 new, 0 updated, 6 unchanged" in capsys.readouterr().out
    assert (Condition.objects.count(), Example.objects.count()) == (n_cond, n_ex)

    def broken(edit, name):
        root = make_sample_dataset(tmp_path / name, conditions=1, examples=2, size=16)
        manifest = json.loads((root / "manifest.json").read_text())
        edit(root, manifest)
        if manifest is not None:
            (root / "manifest.json").write_text(json.dumps(manifest))
        return root

    root = broken(lambda r, m: (r / "c0" / "001" / "original.png").unlink(), "missing")
    with pytest.raises(InputError, match=r"file not found: .*c0/001/original\.png"):
        cli("load", str(root))
    root = broken(lambda r, m: m["conditions"][0]["examples"][0].update(heatmap="x.png"), "unknown")
    with pytest.raises(InputError, match=r"examples\[0\]: unknown key\(s\) 'heatmap'"):
        cli("load", str(root))
    root = broken(lambda r, m: m.update(colour="red"), "unknown-top")
    with pytest.raises(InputError, match="unknown key.*'colour'"):
        cli("load", str(root))
    root = broken(lambda r, m: m["conditions"][0].pop("metric"), "missing-key")
    with pytest.raises(InputError, match=r"conditions\[0\]: missing key\(s\) 'metric'"):
        cli("load", str(root))
    root = broken(lambda r, m: m["conditions"][0]["examples"][1].update(image="../../etc/passwd"), "escape")
    with pytest.raises(InputError, match="without '..'"):
        cli("load", str(root))
    root = broken(lambda r, m: (r / "c0" / "000" / "image.png").write_bytes(b"GIF89a...."), "notpng")
    with pytest.raises(InputError, match="is not a PNG"):
        cli("load", str(root))
    root = broken(lambda r, m: m.update(version=7), "version")
    with pytest.raises(InputError, match="unsupported 'version'"):
        cli("load", str(root))
    root = broken(lambda r, m: None, "badjson")
    (root / "manifest.json").write_text('{"format": "xaibench-harmony-study", "version": 1,,}')
    with pytest.raises(InputError, match="bad JSON at line 1"):
        cli("load", str(root))
    with pytest.raises(InputError, match="not a directory"):
        cli("load", str(tmp_path / "nowhere"))
    assert (Condition.objects.count(), Example.objects.count()) == (n_cond, n_ex)


def test_check_deploy_clean_under_production_settings(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "xaibench.harmony.settings_production",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "study.example.org",
        "XAIBENCH_HARMONY_HOME": str(tmp_path),
    }
    env.pop("DATABASE_URL", None)
    env.pop("DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "xaibench.harmony.manage", "check", "--deploy", "--fail-level", "WARNING"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout
    env.pop("SECRET_KEY")
    r = subprocess.run([sys.executable, "-m", "xaibench.harmony.manage", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "SECRET_KEY" in r.stderr


def test_database_url_and_home(tmp_path):
    code = ("import xaibench.harmony.settings as settings; "
            "d = settings.DATABASES['default']; print(d['ENGINE'], d['NAME'], d.get('OPTIONS', {}).get('transaction_mode'), settings.MEDIA_ROOT)")
    env = {**os.environ, "XAIBENCH_HARMONY_HOME": str(tmp_path / "h")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["django.db.backends.sqlite3", str(tmp_path / "h" / "db.sqlite3"), "IMMEDIATE", str(tmp_path / "h" / "media")]
    env["DATABASE_URL"] = "postgres://u:p@db.example.org:5432/harmony"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out[:3] == ["django.db.backends.postgresql", "harmony", "None"]


@pytest.mark.parametrize("url, names", [
    ("postgresql://someone:secret@127.0.0.1:1/harmony", ["postgresql://someone@127.0.0.1:1/harmony", "refused"]),
    ("sqlite:////nonexistent-folder/db.sqlite3", ["SQLite database /nonexistent-folder/db.sqlite3", "unable to open"]),
])
@pytest.mark.parametrize("action", [["export", "--out", "labels.csv"], ["manage", "migrate"]])
def test_unusable_database_is_one_line_naming_it(tmp_path, url, names, action):
    env = {**os.environ, "XAIBENCH_HARMONY_HOME": str(tmp_path / "h"), "DATABASE_URL": url}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    r = subprocess.run([sys.executable, "-m", "xaibench.cli", "harmony", *action], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("xaibench: error: cannot use the ") and all(n in lines[0] for n in names), lines
    assert "secret" not in r.stderr and "Traceback" not in r.stderr
