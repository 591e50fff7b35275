"""Load: 20 annotators label concurrently against the real server (loopback only, bounded):
every label is stored exactly once and none is lost."""

from __future__ import annotations

import http.cookiejar
import re
import threading
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("django")

ANNOTATORS = 20
CONDITIONS = 2
EXAMPLES = 5
TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
SIDES = ("left", "right", "neither")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from xaibench.harmony.dataset import load_dataset
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-load-home"))
    data = make_sample_dataset(tmp_path_factory.mktemp("harmony-load-study"), conditions=CONDITIONS, examples=EXAMPLES, size=32)
    load_dataset(data)
    from django.contrib.auth import get_user_model

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition

    for i in range(ANNOTATORS):
        user = get_user_model().objects.create_user(f"load{i:02d}", password=f"password-{i:02d}")
        assign_conditions(user, list(Condition.objects.all()))
    from django.db import connections

    connections.close_all()
    with LiveServer(home, threads=8) as live:
        yield live


class Client:
    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as r:
            assert r.status == 200
            return r.read().decode()

    def post(self, path: str, data: dict) -> str:
        body = urllib.parse.urlencode(data).encode()
        with self.opener.open(urllib.request.Request(self.base + path, data=body), timeout=30) as r:
            assert r.status == 200
            return r.geturl()


def annotate(base: str, index: int, record: dict, errors: list) -> None:
    try:
        c = Client(base)
        page = c.get("/accounts/login/")
        landed = c.post("/accounts/login/", {"username": f"load{index:02d}", "password": f"password-{index:02d}",
                                              "csrfmiddlewaretoken": CSRF_RE.search(page).group(1)})
        assert landed.endswith("/"), landed
        for card in range(1, CONDITIONS + 1):
            for n in range(1, EXAMPLES + 1):
                html = c.get(f"/card/{card}/{n}/")
                tokens = {side: tok for tok, side in TOKEN_RE.findall(html)}
                side = SIDES[(index + card + n) % 3]
                # every annotator answers the first example twice (first a different side) to exercise updates
                if n == 1:
                    c.post(f"/card/{card}/{n}/", {"choice": tokens[SIDES[(index + card) % 3 - 1]],
                                                  "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})
                c.post(f"/card/{card}/{n}/", {"choice": tokens[side], "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})
                record[(card, n)] = side
        assert "is done" in c.get(f"/card/{CONDITIONS}/done/")
    except Exception as err:  # noqa: BLE001 - reported by the test
        errors.append((index, repr(err)))


def test_concurrent_annotators_every_label_exactly_once(server):
    records = [dict() for _ in range(ANNOTATORS)]
    errors: list = []
    threads = [threading.Thread(target=annotate, args=(server.url, i, records[i], errors)) for i in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "annotator threads did not finish"
    assert not errors, errors[:3]

    from django.db.models import Count

    from xaibench.harmony.models import Assignment, Example, Label, Presentation
    from xaibench.harmony.views import example_order

    assert Label.objects.count() == ANNOTATORS * CONDITIONS * EXAMPLES
    assert not Label.objects.values("annotator", "example").annotate(n=Count("id")).filter(n__gt=1).exists()
    for i in range(ANNOTATORS):
        name = f"load{i:02d}"
        assignments = list(Assignment.objects.filter(annotator__username=name).order_by("position", "id"))
        for (card, n), side in records[i].items():
            example = Example.objects.get(pk=example_order(assignments[card - 1])[n - 1])
            label = Label.objects.get(annotator__username=name, example=example)
            pres = Presentation.objects.get(annotator__username=name, example=example)
            expected = "neither" if side == "neither" else ("finetuned" if (side == "left") == pres.finetuned_left else "original")
            assert label.choice == expected, (name, card, n)
