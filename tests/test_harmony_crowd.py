"""Crowdsourced HARMONY studies through Django's test client: the manifest's crowdsourcing section,
signed links and their refusals, consent (declining stores only a count), one participant per
identifier (reload, second device, concurrent consent), pseudonymised identifiers, balanced
assignment, attention checks, practice feedback, deadline, completion, isolation, export and the
analysis with exclusions."""

from __future__ import annotations

import html
import io
import json
import random
import re
import threading
from contextlib import redirect_stdout
from datetime import timedelta

import pytest

from harmony_testing import cli

pytest.importorskip("django")

TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
SETTINGS = {"catch_rate": 0.5, "examples_per_participant": 4, "labels_per_example": 3, "platform_study_id": "S1",
            "redirect_url": "https://app.prolific.com/submissions/complete?cc={code}", "deadline_hours": 2,
            "exclusions": {"attention_max_failed": 0.5, "min_median_response_ms": 500, "straightlining_max_share": 0.9}}


def make_study(tmp_path_factory, name: str, dataset: str, **settings):
    """A sample study whose conditions are its own (data set ``dataset``) with a crowdsourcing section."""
    from xaibench.harmony.sample import make_sample_dataset

    root = make_sample_dataset(tmp_path_factory.mktemp(name), conditions=2, examples=4, size=24, name=name,
                               crowdsourcing={**SETTINGS, **settings})
    manifest = json.loads((root / "manifest.json").read_text())
    for cond in manifest["conditions"]:
        cond["dataset"] = dataset
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from harmony_testing import use_home

    home = use_home(tmp_path_factory.mktemp("harmony-crowd-home"))
    cli("load", str(make_study(tmp_path_factory, "crowd-a", "A")))
    cli("load", str(make_study(tmp_path_factory, "crowd-b", "B", completion_code="FIXED-CODE", platform_study_id="")))
    return home


def personal_link(study: str, pid: str) -> str:
    """A generic per-participant link (``?pid=``, the identifier signed into it)."""
    from xaibench.harmony.crowd import join_link
    from xaibench.harmony.models import Study

    return join_link(Study.objects.get(name=study), "", platform="generic", pid=pid)


def link(study: str, pid: str | None = None, study_id: str = "S1", session: str = "sess") -> str:
    """The study's Prolific link with the placeholders filled (left as they are without ``pid``)."""
    from xaibench.harmony.crowd import join_link
    from xaibench.harmony.models import Study

    url = join_link(Study.objects.get(name=study), "")
    if pid is not None:
        url = url.replace("{{%PROLIFIC_PID%}}", pid).replace("{{%STUDY_ID%}}", study_id).replace("{{%SESSION_ID%}}", session)
    return url


class Person:
    """One browser (cookie jar) of a participant, CSRF enforced."""

    def __init__(self):
        from django.test import Client

        self.client = Client(enforce_csrf_checks=True)

    def join(self, url: str):
        return self.client.get(url)

    def consent(self, decision: str = "accept"):
        page = self.client.get("/s/consent/")
        assert page.status_code == 200, page.content[:300]
        return self.client.post("/s/consent/", {"decision": decision, "csrfmiddlewaretoken": CSRF_RE.search(page.content.decode()).group(1)})

    def enrol(self, url: str):
        r = self.join(url)
        assert r.status_code == 302, r.content[:300]
        if r["Location"] == "/s/consent/":
            r = self.consent()
            assert r.status_code == 302 and r["Location"] == "/s/instructions/", r.content[:300]

    def step(self) -> str | None:
        """The URL of the next step, None when done."""
        r = self.client.get("/s/")
        assert r.status_code == 302, r.content[:300]
        return None if r["Location"] == "/s/done/" else r["Location"]

    def answer(self, url: str, side: str):
        html = self.client.get(url).content.decode()
        tokens = {s: t for t, s in TOKEN_RE.findall(html)}
        return self.client.post(url, {"choice": tokens[side], "csrfmiddlewaretoken": CSRF_RE.search(html).group(1), "rt": "900"})

    def run(self, choose=lambda trial: "left", stop_after: int | None = None) -> int:
        """Answer the steps (all, or ``stop_after``); at the end open the completion page."""
        done = 0
        while (url := self.step()) is not None and (stop_after is None or done < stop_after):
            self.answer(url, choose(trial_at(self, url)))
            done += 1
        if url is None:
            assert self.client.get("/s/done/").status_code == 200
        return done


def participant_of(person: Person):
    from xaibench.harmony.models import Participant

    return Participant.objects.get(user_id=int(person.client.session["_auth_user_id"]))


def trial_at(person: Person, url: str):
    return participant_of(person).trials.get(position=int(url.strip("/").split("/")[-1]))


def honest(trial) -> str:
    return trial.expected if trial.kind != "main" else "left"


def refusal(response) -> str:
    return html.unescape(re.search(r'id="refusal">([^<]*)<', response.content.decode()).group(1))


def test_manifest_crowdsourcing_section_validated(tmp_path_factory):
    from xaibench.errors import InputError
    from xaibench.harmony.dataset import read_manifest

    root = make_study(tmp_path_factory, "check", "C")
    spec = read_manifest(root).crowd
    assert spec.config["examples_per_participant"] == 4 and [i.key for i in spec.practice] == ["p1", "p2"]
    assert "pseudonym" in spec.consent and spec.config["exclusions"]["min_median_response_ms"] == 500.0
    manifest = json.loads((root / "manifest.json").read_text())
    cases = [
        ({"consent": None}, "consent"),
        ({"catch_rate": 1.5}, "'catch_rate' must be a number from 0 to 1"),
        ({"examples_per_participant": 2.5}, "'examples_per_participant' must be an integer"),
        ({"redirect_url": "javascript:alert(1)"}, "'redirect_url' must be an http(s) URL"),
        ({"exclusions": {"attention": 0.5}}, "unknown key(s) 'attention'"),
        ({"exclusions": {"straightlining_max_share": 2}}, "'straightlining_max_share' must be a number from 0 to 1"),
        ({"colour": 1}, "unknown key(s) 'colour'"),
        ({"consent": "missing.txt"}, "file not found"),
        ({"practice": [{"id": "x", "image": "practice/image.png", "map": "practice/map.png", "wrong": "c0/000/image.png"}]}, None),
    ]
    for change, message in cases:
        section = {**manifest["crowdsourcing"], **change}
        section = {k: v for k, v in section.items() if v is not None}
        (root / "manifest.json").write_text(json.dumps({**manifest, "crowdsourcing": section}))
        if message is None:
            read_manifest(root)  # the same size: accepted
            continue
        with pytest.raises(InputError, match=re.escape(message)):
            read_manifest(root)
    from PIL import Image

    Image.new("RGB", (5, 5)).save(root / "grey-small.png")
    bad = {**manifest["crowdsourcing"], "practice": [{"id": "x", "image": "practice/image.png", "map": "practice/map.png", "wrong": "grey-small.png"}]}
    (root / "manifest.json").write_text(json.dumps({**manifest, "crowdsourcing": bad}))
    with pytest.raises(InputError, match="'map' and 'wrong' differ in size"):
        read_manifest(root)


def test_malicious_links_are_refused(home):
    from xaibench.harmony.models import Participant, Study

    good = link("crowd-a", "victim01")
    token = good.split("/")[2]
    body, sig = token.rsplit(":", 1)
    altered_sig = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    other = link("crowd-b")  # a valid token of another study
    cases = {
        "/join/not-a-token/?PROLIFIC_PID=victim01&STUDY_ID=S1": (403, "signature does not match"),
        good.replace(token, f"{body}:{altered_sig}"): (403, "signature does not match"),
        good.replace(token, other.split("/")[2] + "x"): (403, "signature does not match"),
        link("crowd-a", "victim01", study_id="S2"): (403, "STUDY_ID is not this study's"),
        link("crowd-a", "bad pid!"): (400, "no valid participant identifier"),
        link("crowd-a").split("?")[0]: (400, "no valid participant identifier"),
        personal_link("crowd-a", "alice").replace("pid=alice", "pid=mallory"): (403, "identifier is not the one"),
    }
    for url, (status, text) in cases.items():
        r = Person().join(url)
        assert r.status_code == status and text in refusal(r), (url, r.status_code, r.content[:300])
    # a per-participant link works for its own identifier
    assert Person().join(personal_link("crowd-a", "alice")).status_code == 302
    # an identifier that took part in study A cannot join study B
    Person().enrol(link("crowd-a", "twostudies"))
    r = Person().join(link("crowd-b", "twostudies", study_id=""))
    assert r.status_code == 403 and "another study" in refusal(r)
    # a closed study takes nobody new
    Study.objects.filter(name="crowd-b").update(open=False)
    r = Person().join(link("crowd-b", "newcomer"))
    assert r.status_code == 403 and "closed" in refusal(r)
    Study.objects.filter(name="crowd-b").update(open=True)
    # the consent page without a checked link
    r = Person().client.get("/s/consent/")
    assert r.status_code == 400
    assert not Participant.objects.filter(study__name="crowd-b").exists()


def test_declining_consent_stores_only_the_count(home):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from xaibench.harmony.models import Participant, Study

    users, participants = get_user_model().objects.count(), Participant.objects.count()
    before = Study.objects.get(name="crowd-a").refusals
    p = Person()
    assert p.join(link("crowd-a", "decliner42"))["Location"] == "/s/consent/"
    page = p.client.get("/s/consent/").content.decode()
    assert "You are invited" in page and "pseudonym" in page
    r = p.consent("decline")
    assert r.status_code == 200 and "You declined" in r.content.decode()
    assert Study.objects.get(name="crowd-a").refusals == before + 1
    assert get_user_model().objects.count() == users and Participant.objects.count() == participants
    assert p.client.get("/s/consent/").status_code == 400  # the session ended
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert "decliner42" not in dump.getvalue()


def test_participant_flow_resume_second_device_and_completion(home):
    from django.core.management import call_command

    from xaibench.harmony.crowd import keyed_hash
    from xaibench.harmony.models import Label, Participant, Trial

    url = link("crowd-a", "prolific-77", session="session-77")
    first = Person()
    first.enrol(url)
    me = participant_of(first)
    assert me.pid_hash == keyed_hash("pid", "prolific-77") and me.session_hash == keyed_hash("session", "session-77")
    assert me.user.username == "crowd." + me.pseudonym and not me.user.has_usable_password() and not me.user.is_staff
    kinds = list(me.trials.values_list("kind", flat=True))
    assert kinds[:2] == ["practice", "practice"] and kinds.count("main") == 4 and kinds.count("catch") == 2
    assert first.client.get("/").status_code == 302  # the annotators' home sends a participant to the sequence

    # practice: feedback, not analysed
    step = first.step()
    assert step == "/s/1/"
    trial = trial_at(first, step)
    wrong = {"left": "right", "right": "left", "neither": "left"}[trial.expected]
    r = first.answer(step, wrong)
    assert r["Location"] == step
    page = first.client.get(step).content.decode()
    assert "not the expected answer" in page and trial.item.feedback in page
    assert first.run(honest, stop_after=3) == 3

    # a reload of the link, a second device with the same link, a second tab: the same participant, resumed
    assert first.join(url)["Location"] == "/s/"
    second = Person()
    assert second.join(url)["Location"] == "/s/"
    assert participant_of(second).pk == me.pk and second.step() == first.step() == "/s/5/"
    second.answer("/s/5/", honest(trial_at(second, "/s/5/")))
    assert first.step() == "/s/6/"
    first.run(honest)
    assert Participant.objects.filter(pid_hash=me.pid_hash).count() == 1
    assert Trial.objects.filter(participant=me, answer="").count() == 0
    assert Label.objects.filter(annotator=me.user).count() == 4  # main examples only

    done = first.client.get("/s/done/").content.decode()
    me.refresh_from_db()
    assert me.completed_at is not None and len(me.completion_code) == 8 and me.completion_code in done
    assert f"https://app.prolific.com/submissions/complete?cc={me.completion_code}" in done
    r = first.answer("/s/3/", "neither")
    assert r.status_code == 403 and "completed" in refusal(r)

    # the raw identifier and session id are stored nowhere
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert "prolific-77" not in dump.getvalue() and "session-77" not in dump.getvalue()


def test_concurrent_consents_make_one_participant(home):
    """Two devices accept the consent at the same moment: one participant, one sequence."""
    from django.db import connections

    from xaibench.harmony.models import Participant

    url = link("crowd-b", "racer-1", study_id="")
    people = [Person(), Person()]
    pages = []
    for p in people:
        assert p.join(url)["Location"] == "/s/consent/"
        pages.append(CSRF_RE.search(p.client.get("/s/consent/").content.decode()).group(1))
    barrier, results = threading.Barrier(2), []

    def accept(p, csrf):
        barrier.wait()
        try:
            results.append(p.client.post("/s/consent/", {"decision": "accept", "csrfmiddlewaretoken": csrf}).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=accept, args=(p, c)) for p, c in zip(people, pages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [302, 302]
    (only,) = Participant.objects.filter(study__name="crowd-b", user__username__in=[
        participant_of(p).user.username for p in people])
    assert participant_of(people[0]).pk == participant_of(people[1]).pk == only.pk
    assert only.trials.count() == 2 + 4 + 2
    assert only.completion_code == ""  # the study's own code
    people[0].run(honest)
    assert "FIXED-CODE" in people[0].client.get("/s/done/").content.decode()


def test_isolation_between_participants(home):
    from xaibench.harmony.models import Label

    a, b = Person(), Person()
    a.enrol(link("crowd-a", "iso-a"))
    b.enrol(link("crowd-a", "iso-b"))
    for p in (a, b):
        p.run(honest, stop_after=2)
    # b's page and tokens are b's own; a posting b's token to the same step is refused
    html_b = b.client.get("/s/3/").content.decode()
    token_b = TOKEN_RE.findall(html_b)[0][0]
    html_a = a.client.get("/s/3/").content.decode()
    assert token_b not in html_a
    r = a.client.post("/s/3/", {"choice": token_b, "csrfmiddlewaretoken": CSRF_RE.search(html_a).group(1)})
    assert r.status_code == 400
    # pictures, steps and labels are always the requester's: a participant has no other address to try
    assert a.client.get("/s/99/").status_code == 404
    assert a.client.get("/card/1/").status_code == 404 and a.client.get("/admin/").status_code == 302
    assert Person().client.get("/s/3/picture/left.png").status_code == 403
    mine = a.client.get("/s/3/picture/image.png")
    assert mine.status_code == 200 and mine["Cache-Control"] == "private, no-store"
    assert not Label.objects.filter(annotator=participant_of(a).user).exclude(
        example__in=participant_of(a).trials.values("example")).exists()
    # no other participant's pseudonym or identifier on any page
    pages = "".join(a.client.get(u).content.decode() for u in ("/s/instructions/", "/s/3/", "/s/1/"))
    assert participant_of(b).pseudonym not in pages and "iso-b" not in pages
    assert not re.search(r"original|learn|fine.?tun", pages, re.IGNORECASE)  # blinded like the annotators' pages


def test_deadline_ends_the_session_and_frees_its_places(home):
    from xaibench.harmony.crowd import _active_main_trials
    from xaibench.harmony.models import Participant, Study

    p = Person()
    p.enrol(link("crowd-a", "late-1"))
    me = participant_of(p)
    study = Study.objects.get(name="crowd-a")
    held = _active_main_trials(study).count()
    Participant.objects.filter(pk=me.pk).update(enrolled_at=me.enrolled_at - timedelta(hours=3))
    r = p.client.get("/s/")
    assert r.status_code == 410 and "time for this study is up" in refusal(r)
    assert p.join(link("crowd-a", "late-1")).status_code == 302 and p.client.get("/s/").status_code == 410
    assert _active_main_trials(study).count() == held - 4


def test_balanced_assignment_until_full(tmp_path_factory, home):
    """8 examples x 3 labels / 4 per participant: 6 participants fill the study exactly, each
    example 3 times (fine-tuned sides 2/1), each condition 12; the 7th is told it is full."""
    from django.db.models import Count, Q

    from xaibench.harmony.models import Trial

    cli("load", str(make_study(tmp_path_factory, "crowd-balance", "Bal", catch_rate=0.25)))
    for i in range(6):
        Person().enrol(link("crowd-balance", f"bal-{i}"))
    main = Trial.objects.filter(participant__study__name="crowd-balance", kind="main")
    per_example = main.values("example_id").annotate(n=Count("id"), left=Count("id", filter=Q(finetuned_left=True)))
    assert len(per_example) == 8 and {r["n"] for r in per_example} == {3}
    assert {r["left"] for r in per_example} <= {1, 2}
    assert sorted(main.values("example__condition").annotate(n=Count("id")).values_list("n", flat=True)) == [12, 12]
    for participant_trials in main.values("participant").annotate(c=Count("example__condition", distinct=True)):
        assert participant_trials["c"] == 2  # every participant sees both conditions (2 + 2)
    catch = Trial.objects.filter(participant__study__name="crowd-balance", kind="catch")
    assert catch.count() == 6 and set(catch.values_list("check_kind", flat=True)) <= {"same", "wrong"}
    p = Person()
    p.join(link("crowd-balance", "bal-6"))
    r = p.consent()
    assert r.status_code == 403 and "all the answers it needs" in refusal(r)


def test_generated_attention_checks(home):
    from django.core.files.storage import default_storage
    from PIL import Image

    from xaibench.harmony.models import Trial

    p = Person()
    p.enrol(link("crowd-a", "catcher"))
    catch = Trial.objects.filter(participant=participant_of(p), kind="catch")
    assert sorted(catch.values_list("check_kind", flat=True)) == ["same", "wrong"]  # two checks: one of each
    for trial in catch:
        if trial.check_kind == "same":
            assert trial.expected == "neither" and trial.wrong == ""
        else:
            assert trial.expected == ("left" if trial.finetuned_left else "right")
            with default_storage.open(trial.wrong) as fh, Image.open(fh) as grey:
                assert grey.getextrema() == ((128, 128),) * 3
            assert default_storage.size(trial.wrong) == default_storage.size(trial.map)  # same length on the wire
        served = {s: p.client.get(f"/s/{trial.position}/picture/{s}.png").content for s in ("left", "right")}
        assert (served["left"] == served["right"]) == (trial.check_kind == "same")


def test_export_codebook_analysis_with_exclusions_and_admin_progress(home, tmp_path, tmp_path_factory):
    """Planted: one participant fails the attention checks, one presses 'left' throughout, one is
    fast; their labels are removed by their rules and the analysis reports both versions."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from xaibench.harmony.models import Trial

    cli("load", str(make_study(tmp_path_factory, "crowd-x", "X", labels_per_example=None)))
    people = {name: Person() for name in ("good-1", "good-2", "inattentive", "straight", "fast")}
    rng = random.Random(0)
    for name, p in people.items():
        p.enrol(link("crowd-x", name))

        def choose(trial, name=name):
            if trial.kind != "main":
                wrong = {"left": "right", "right": "left", "neither": "left"}[trial.expected]
                return wrong if name == "inattentive" and trial.kind == "catch" else trial.expected
            return "left" if name == "straight" else rng.choice(["left", "right", "neither", "left"])

        p.run(choose)
    # response times as measured: the fast participant 200 ms, the others 2 s
    for name, p in people.items():
        Trial.objects.filter(participant=participant_of(p), kind="main").update(response_ms=200 if name == "fast" else 2000)
    # the 'straight' participant's main answers all 'left'; make sure nobody else is straight by chance
    for name in ("good-1", "good-2", "inattentive", "fast"):
        t = Trial.objects.filter(participant=participant_of(people[name]), kind="main").order_by("position")
        Trial.objects.filter(pk__in=[x.pk for x in t[:2]]).update(answer="left")
        Trial.objects.filter(pk__in=[x.pk for x in t[2:]]).update(answer="right")

    out = tmp_path / "deposit"
    cli("export-study", "crowd-x", "--out", str(out))
    import pandas as pd

    table = pd.read_csv(out / "crowd-x.csv")
    assert list(table.columns)[:3] == ["study", "participant", "completed"]
    assert len(table) == 5 * 8 and (table["trial_kind"] == "main").sum() == 20
    codebook = (out / "crowd-x-codebook.md").read_text()
    assert "`excluded_attention`" in codebook and "min_median_response_ms` = 500" in codebook
    flags = table.drop_duplicates("participant").set_index("participant")
    pseud = {name: participant_of(p).pseudonym for name, p in people.items()}
    assert flags.loc[pseud["inattentive"], "excluded_attention"] and flags.loc[pseud["straight"], "excluded_straightlining"]
    assert flags.loc[pseud["fast"], "excluded_speed"] and flags["excluded"].sum() == 3
    assert not table["participant"].isin(["good-1", "inattentive"]).any()  # pseudonyms only

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        cli("analyze", "--labels", str(out / "crowd-x.csv"), "--json")
    result = json.loads(buffer.getvalue())["studies"][str(out / "crowd-x.csv")]
    rules = {r["rule"]: (r["participants"], r["labels"]) for r in result["exclusions"]}
    assert rules == {"attention_max_failed": (1, 4), "min_median_response_ms": (1, 4), "straightlining_max_share": (1, 4)}
    assert result["excluded_labels"] == 12 and result["all"]["n_labels"] == 20 and result["kept"]["n_labels"] == 8
    assert result["completed"] == 5 and result["balance"]["side_imbalance_max"] <= 1
    with redirect_stdout(buffer := io.StringIO()):
        cli("analyze")
    text = buffer.getvalue()
    assert "Crowdsourced study crowd-x" in text and "== With exclusions ==" in text

    staff = get_user_model().objects.create_user("coordinator-x", password="x", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/harmony/label/progress/").content.decode()
    assert 'id="per-condition"' in page and 'id="per-example"' in page and "X / Metric0 / TinyNet / GradCAM" in page


def test_link_command(home, capsys):
    from xaibench.errors import InputError

    cli("link", "crowd-a", "--base-url", "https://harmony.example.org")
    out = capsys.readouterr().out.strip()
    assert out.startswith("https://harmony.example.org/join/") and out.endswith(
        "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")
    cli("link", "crowd-a", "--platform", "generic", "--pid", "W123")
    assert capsys.readouterr().out.strip().endswith("?pid=W123")
    with pytest.raises(InputError, match="no crowdsourced study named 'nope'"):
        cli("link", "nope")


def test_supplied_attention_checks_and_items_dropped_from_the_manifest(home, tmp_path_factory):
    """A study with its own attention checks uses only those; loading the folder again without a
    practice item stops showing it to new participants."""
    from xaibench.harmony.models import Trial

    root = make_study(tmp_path_factory, "crowd-supplied", "Sup", catch_rate=0.5)
    manifest = json.loads((root / "manifest.json").read_text())
    section = manifest["crowdsourcing"]
    section["catch_trials"] = [{**section["practice"][0], "id": "c1"}, {**section["practice"][1], "id": "c2"}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    cli("load", str(root))
    first = Person()
    first.enrol(link("crowd-supplied", "sup-1"))
    trials = participant_of(first).trials
    assert sorted(trials.filter(kind="catch").values_list("item__key", flat=True)) == ["c1", "c2"]
    expected = dict(trials.filter(kind="catch").values_list("item__key", "expected"))
    assert expected["c2"] == "neither" and expected["c1"] in {"left", "right"}  # c2 has no wrong map: one map twice
    section["practice"] = section["practice"][1:]
    (root / "manifest.json").write_text(json.dumps(manifest))
    cli("load", str(root))
    second = Person()
    second.enrol(link("crowd-supplied", "sup-2"))
    assert list(participant_of(second).trials.filter(kind="practice").values_list("item__key", flat=True)) == ["p2"]
    assert Trial.objects.filter(participant=participant_of(first), kind="practice").count() == 2  # kept as shown
