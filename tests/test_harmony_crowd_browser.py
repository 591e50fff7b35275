"""A crowdsourced study run end to end against the real server: 20 people open their Prolific
links, 3 of them in Chromium (Playwright; one declines the consent, one reloads and opens a second
tab) and 17 over plain HTTP, concurrently (one fails the attention checks, one presses one key
throughout, one answers fast). Every participant reaches a completion code; the analysis reports
the planted exclusions and balanced counts. (Chromium for all 20 would take minutes on 2 cores:
the browser covers the pages, keys and tabs, HTTP the numbers.)"""

from __future__ import annotations

import json
import re
import threading
from contextlib import redirect_stdout
from io import StringIO

import pytest
from test_harmony_crowd_load import HttpParticipant, honest, study_link

from harmony_testing import cli

pytest.importorskip("django")

STUDY = "crowd-browser"
SETTINGS = {"catch_rate": 0.5, "examples_per_participant": 4, "labels_per_example": 8,
            "redirect_url": "https://app.prolific.com/submissions/complete?cc={code}",
            "exclusions": {"attention_max_failed": 0.5, "min_median_response_ms": 500, "straightlining_max_share": 0.9}}
DELAY = 1.0  # seconds an attentive participant looks at a step (the speed rule's threshold is 0.5 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium):
    from xaibench.harmony.dataset import load_dataset
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path_factory.mktemp("harmony-crowd-browser-home"))
    load_dataset(make_sample_dataset(tmp_path_factory.mktemp("harmony-crowd-browser-study"), conditions=2, examples=5,
                                     size=48, name=STUDY, crowdsourcing=SETTINGS))
    from django.db import connections

    connections.close_all()
    from django.conf import settings

    # the server must check links with this process's key (set by the first home the process used)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SECRET_KEY", settings.SECRET_KEY)
        with LiveServer(home, threads=8) as live:
            live.links = {pid: study_link(live.url, STUDY, pid) for pid in [f"B{i}" for i in range(3)] + [f"H{i:02d}" for i in range(17)]}
            connections.close_all()
            yield live


def off_loop(fn, *args):
    """Run ``fn`` in a worker thread (Playwright's sync API keeps an event loop in this one, and
    Django's ORM refuses to run inside an event loop)."""
    from concurrent.futures import ThreadPoolExecutor

    def call():
        from django.db import connections

        try:
            return fn(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def _expected(pid: str, n: int) -> tuple[str, str]:
    from xaibench.harmony.crowd import keyed_hash
    from xaibench.harmony.models import Trial

    trial = Trial.objects.get(participant__pid_hash=keyed_hash("pid", pid), position=n)
    return trial.kind, trial.expected


KEYS = {"left": "1", "neither": "2", "right": "3"}


def answer_in_browser(page, pid: str, main_keys: list[str]) -> None:
    """Answer the step the page shows: checks as expected, main examples with the next of ``main_keys``."""
    n = int(re.search(r"/s/(\d+)/$", page.url).group(1))
    kind, expected = off_loop(_expected, pid, n)
    page.locator("#picture-left").wait_for(state="visible")
    if kind == "main":
        page.wait_for_timeout(DELAY * 1000)  # looks before answering, as the speed rule expects
    page.keyboard.press(KEYS[expected] if kind != "main" else KEYS[main_keys.pop(0)])
    page.wait_for_function(f"() => !location.pathname.endsWith('/s/{n}/') || document.querySelector('#continue')")
    if page.locator("#continue").count():
        assert "Practice" in page.inner_text("main") and "as expected" in page.inner_text("#feedback-result")
        page.click("#continue")
        page.wait_for_url(re.compile(r".*/s/(\d+|done)/$"))


def fresh_page(browser):
    """A new browser profile (no cookies) and a page in it."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30000)
    return context, page


def browser_participants(server, chromium) -> dict:
    from playwright.sync_api import sync_playwright

    codes = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"], headless=True)
        # B0 declines the consent
        context, page = fresh_page(browser)
        page.goto(server.links["B0"])
        assert "You are invited" in page.inner_text("#consent-text")
        page.click("#decline")
        assert "You declined" in page.inner_text("#declined")
        context.close()

        # B1: consent, instructions, practice, keys; a reload, the link again, a second tab
        context, page = fresh_page(browser)
        page.goto(server.links["B1"])
        page.click("#accept")
        page.wait_for_url(re.compile(r".*/s/instructions/$"))
        assert "Pick the heat map" in page.inner_text("#instructions-text")
        page.click("#start")
        page.wait_for_url(re.compile(r".*/s/1/$"))
        for sel in ("#picture-image", "#picture-left", "#picture-right"):
            page.locator(sel).wait_for(state="visible")
            assert page.evaluate("(s) => document.querySelector(s).naturalWidth", sel) == 48
        keys = ["left", "right", "neither", "left"]
        for _ in range(4):
            answer_in_browser(page, "B1", keys)
        at = page.url
        page.reload()
        assert page.url == at
        page.goto(server.links["B1"])  # the link again: resumes, no second consent
        page.wait_for_url(at)
        second = context.new_page()
        second.set_default_timeout(30000)
        second.goto(server.links["B1"])
        second.wait_for_url(at)
        answer_in_browser(second, "B1", keys)  # answered in the second tab
        second.close()
        page.reload()  # the first tab still shows that step, now with the second tab's answer
        assert page.url == at and page.locator("button.answer.chosen").count() == 1
        page.goto(server.links["B1"])  # the link resumes at the next unanswered step
        page.wait_for_url(lambda url: url != at)
        while not page.url.endswith("/s/done/"):
            answer_in_browser(page, "B1", keys)
        codes["B1"] = page.inner_text("#completion-code")
        assert page.get_attribute("#return", "href") == f"https://app.prolific.com/submissions/complete?cc={codes['B1']}"
        context.close()

        # B2: a plain run with clicks
        context, page = fresh_page(browser)
        page.goto(server.links["B2"])
        page.click("#accept")
        page.click("#start")
        page.wait_for_url(re.compile(r".*/s/1/$"))
        keys = ["right", "neither", "left", "right"]
        while not page.url.endswith("/s/done/"):
            answer_in_browser(page, "B2", keys)
        codes["B2"] = page.inner_text("#completion-code")
        context.close()
        browser.close()
    return codes


def http_participants(server) -> dict:
    def inattentive(p, n, html):  # practice right (there is feedback), attention checks wrong
        expected = p.attentive_side(n)
        if expected is None:
            return honest_choice(p, n, html)
        return expected if "Practice" in html else {"left": "right", "right": "left", "neither": "left"}[expected]

    honest_choice = honest(1)

    def straight(p, n, html):
        return p.attentive_side(n) or "left"

    people = {pid: HttpParticipant(server.links[pid]) for pid in server.links if pid.startswith("H")}
    plans = {pid: (honest(i), DELAY) for i, pid in enumerate(people)}
    plans["H01"] = (inattentive, DELAY)
    plans["H02"] = (straight, DELAY)
    errors = []

    def run(pid, choose, delay, stop_after=None):
        try:
            p = people[pid]
            if not p.answers:
                url, html = p.consent_page()
                p.decide(html)
            p.run(choose, delay=delay, stop_after=stop_after)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append((pid, repr(err)))

    # H03 leaves after 3 answers and comes back on another device with the same link
    run("H03", plans["H03"][0], DELAY, stop_after=3)
    moved = HttpParticipant(server.links["H03"])
    moved.answers = dict(people["H03"].answers)
    url, _ = moved.open(moved.link)  # no consent again: straight to the next step
    assert url.endswith("/s/4/"), url  # after 3 answers (the 2 practice steps and one more)
    people["H03"] = moved
    threads = [threading.Thread(target=run, args=(pid, *plans[pid])) for pid in people if pid != "H16"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    run("H16", plans["H16"][0], 0.0)  # the fast one, alone (its times are then the server's, not the queue's)
    assert not errors, errors[:3]
    return {pid: p.code for pid, p in people.items()}


def test_crowdsourced_study_end_to_end(server, chromium):
    codes = browser_participants(server, chromium)
    codes.update(http_participants(server))

    def check():
        from django.db.models import Count, Q

        from xaibench.harmony.crowd import keyed_hash
        from xaibench.harmony.models import Label, Participant, Study, Trial

        study = Study.objects.get(name=STUDY)
        assert study.refusals == 1 and not Participant.objects.filter(pid_hash=keyed_hash("pid", "B0")).exists()
        assert Participant.objects.filter(study=study).count() == 19
        assert Participant.objects.filter(study=study, completed_at__isnull=False).count() == 19
        for pid, code in codes.items():
            assert code == Participant.objects.get(pid_hash=keyed_hash("pid", pid)).completion_code, pid
        assert len(set(codes.values())) == 19
        assert Label.objects.count() == 19 * 4
        per_example = Trial.objects.filter(kind="main").values("example").annotate(
            n=Count("id"), left=Count("id", filter=Q(finetuned_left=True)))
        assert sorted({r["n"] for r in per_example}) in ([7, 8], [8])  # 76 places over 10 examples
        assert all(abs(2 * r["left"] - r["n"]) <= 1 for r in per_example)
        buffer = StringIO()
        with redirect_stdout(buffer):
            cli("analyze", "--json")
        return json.loads(buffer.getvalue())["studies"][STUDY]

    result = off_loop(check)
    rules = {r["rule"]: (r["participants"], r["labels"]) for r in result["exclusions"]}
    assert rules == {"attention_max_failed": (1, 4), "min_median_response_ms": (1, 4), "straightlining_max_share": (1, 4)}, result
    assert result["participants"] == result["completed"] == 19
    assert result["excluded_participants"] == 3 and result["kept"]["n_labels"] == 16 * 4
    assert result["balance"]["labels_per_example_min"] >= 7 and result["balance"]["labels_per_example_max"] <= 8
    assert sorted(result["balance"]["labels_per_condition"].values()) == [38, 38]
    assert result["balance"]["side_imbalance_max"] <= 1
    print(f"exclusions {rules}; labels per example {result['balance']['labels_per_example_min']}-"
          f"{result['balance']['labels_per_example_max']}, per condition {result['balance']['labels_per_condition']}")
