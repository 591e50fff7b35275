"""Load through the link flow: 32 participants enrol by their links at once (8 of them on two
devices whose consents race) and answer their whole sequences against the real server; one
participant per identifier, every answer stored exactly once, every main answer a label."""

from __future__ import annotations

import http.cookiejar
import io
import re
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("django")

PARTICIPANTS = 32
TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
CODE_RE = re.compile(r'id="completion-code">([^<]+)<')
STEP_RE = re.compile(r"/s/(\d+)/$")


def study_link(base: str, name: str, pid: str) -> str:
    """The study's Prolific link as the platform fills it for ``pid`` (run off any event loop)."""
    from xaibench.harmony.crowd import join_link
    from xaibench.harmony.models import Study

    url = join_link(Study.objects.get(name=name), base)
    return url.replace("{{%PROLIFIC_PID%}}", pid).replace("{{%STUDY_ID%}}", "").replace("{{%SESSION_ID%}}", "s-" + pid)


class HttpParticipant:
    """A participant's browser over plain HTTP (cookies, redirects followed). ``choose(kind, n, html)``
    picks a side; ``attentive_side`` answers checks by looking at the two maps."""

    def __init__(self, link: str):
        self.link = link
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.base = link.split("/join/")[0]
        self.answers: dict[int, str] = {}
        self.code = None

    def open(self, url: str, data: dict | None = None) -> tuple[str, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        with self.opener.open(urllib.request.Request(url, data=body), timeout=60) as r:
            assert r.status == 200
            return r.geturl(), r.read().decode()

    def consent_page(self) -> tuple[str, str]:
        url, html = self.open(self.link)
        assert url.endswith("/s/consent/") or "/s/" in url, url
        return url, html

    def decide(self, html: str, decision: str = "accept") -> tuple[str, str]:
        return self.open(self.base + "/s/consent/", {"decision": decision, "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})

    def pictures(self, n: int) -> dict[str, np.ndarray]:
        out = {}
        for slot in ("left", "right"):
            with self.opener.open(f"{self.base}/s/{n}/picture/{slot}.png", timeout=60) as r:
                out[slot] = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
        return out

    def attentive_side(self, n: int) -> str | None:
        """The expected answer of a check (the same map twice: neither; a grey map: the other side),
        None for a main example (two different real maps)."""
        maps = self.pictures(n)
        if np.array_equal(maps["left"], maps["right"]):
            return "neither"
        flat = {s: bool((m == m.reshape(-1, 3)[0]).all()) for s, m in maps.items()}
        if flat["left"] != flat["right"]:
            return "right" if flat["left"] else "left"
        return None

    def run(self, choose, delay: float = 0.0, stop_after: int | None = None) -> None:
        """From the current step to the completion code (or ``stop_after`` answers), waiting
        ``delay`` seconds before each answer (without one the answer follows the page at once)."""
        url, html = self.open(self.base + "/s/")
        done = 0
        while not url.endswith("/s/done/") and (stop_after is None or done < stop_after):
            if 'id="continue"' in html:  # a practice answer's feedback
                url, html = self.open(self.base + "/s/")
                continue
            n = int(STEP_RE.search(url).group(1))
            tokens = {side: token for token, side in TOKEN_RE.findall(html)}
            side = choose(self, n, html)
            if delay:
                time.sleep(delay)
            else:  # answer at once: show the step again (its time starts there), then answer
                url, html = self.open(url)
            url, html = self.open(url, {"choice": tokens[side], "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})
            self.answers[n] = side
            done += 1
        if url.endswith("/s/done/"):
            self.code = CODE_RE.search(html).group(1)


def honest(index: int):
    """Checks answered right; main examples cycle through the keys from ``index`` (never one key throughout)."""
    keys = ("left", "right", "neither")
    count = [0]

    def choose(p: HttpParticipant, n: int, html: str) -> str:
        expected = p.attentive_side(n)
        if expected is not None:
            return expected
        count[0] += 1
        return keys[(index + count[0]) % 3]

    return choose


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from xaibench.harmony.dataset import load_dataset
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-crowd-load-home"))
    load_dataset(make_sample_dataset(tmp_path_factory.mktemp("harmony-crowd-load-study"), conditions=2, examples=5, size=24,
                                     name="crowd-load", crowdsourcing={"catch_rate": 0.25, "examples_per_participant": 4}))
    from django.db import connections

    connections.close_all()
    from django.conf import settings

    # the server must check links with this process's key (set by the first home the process used)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SECRET_KEY", settings.SECRET_KEY)
        with LiveServer(home, threads=8) as live:
            yield live


def enrol_and_answer(link: str, index: int, people: list, errors: list, twin: bool) -> None:
    try:
        p = HttpParticipant(link)
        _, page = p.consent_page()
        if twin:  # the same identifier on a second device, consenting at the same moment
            q = HttpParticipant(link)
            _, page_q = q.consent_page()
            other = threading.Thread(target=lambda: q.decide(page_q))
            other.start()
            p.decide(page)
            other.join(60)
        else:
            p.decide(page)
        p.run(honest(index))
        people[index] = p
    except Exception as err:  # noqa: BLE001 - reported by the test
        errors.append((index, repr(err)))


def test_concurrent_participants_by_link_every_answer_exactly_once(server):
    from django.db.models import Count

    from xaibench.harmony.crowd import keyed_hash
    from xaibench.harmony.models import Label, Participant, Trial

    links = [study_link(server.url, "crowd-load", f"LOAD{i:03d}") for i in range(PARTICIPANTS)]
    from django.db import connections

    connections.close_all()
    people: list = [None] * PARTICIPANTS
    errors: list = []
    threads = [threading.Thread(target=enrol_and_answer, args=(links[i], i, people, errors, i % 4 == 0))
               for i in range(PARTICIPANTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "participant threads did not finish"
    assert not errors, errors[:3]

    assert Participant.objects.count() == PARTICIPANTS
    assert Label.objects.count() == PARTICIPANTS * 4
    assert not Label.objects.values("annotator", "example").annotate(n=Count("id")).filter(n__gt=1).exists()
    codes = set()
    for i, p in enumerate(people):
        participant = Participant.objects.get(pid_hash=keyed_hash("pid", f"LOAD{i:03d}"))
        trials = {t.position: t for t in Trial.objects.filter(participant=participant)}
        assert len(trials) == 2 + 4 + 1 and {n: t.answer for n, t in trials.items()} == p.answers
        assert all(t.answer == t.expected for t in trials.values() if t.kind != "main")  # the maps told the checks
        for t in trials.values():
            if t.kind == "main":
                label = Label.objects.get(annotator=participant.user, example=t.example)
                assert label.choice == ("neither" if t.answer == "neither" else
                                        "finetuned" if (t.answer == "left") == t.finetuned_left else "original")
        assert p.code == participant.completion_code and participant.completed_at is not None
        codes.add(p.code)
    assert len(codes) == PARTICIPANTS
