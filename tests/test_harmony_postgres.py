"""HARMONY on PostgreSQL: the app's suites (flow, isolation, blinding, the 20-annotator load test, the
import of the published study, the browser, agreement, masks, crowdsourced studies: links, the
32-participant link-flow load test and the 20-participant browser run) run against a real PostgreSQL server
started for the tests, and a hard database restart in the middle of a concurrent load loses no
acknowledged label.

Needs the PostgreSQL server binaries (Debian: `apt-get install postgresql`; `.ci/run` installs
them): skipped locally without them, required in CI (CI set)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import REPO, _require

pytest.importorskip("django")

SUITES = ["test_harmony_web.py", "test_harmony_security.py", "test_harmony_load.py", "test_harmony_import.py",
          "test_harmony_browser.py", "test_harmony_agreement.py", "test_harmony_masks.py",
          "test_harmony_crowd.py", "test_harmony_crowd_load.py", "test_harmony_crowd_browser.py"]
RESTART_ENV = "HARMONY_TEST_DATABASE_RESTART"  # JSON argv that restarts the test database server


@pytest.fixture(scope="module")
def postgres():
    from harmony_testing import PostgresCluster

    bindir = PostgresCluster.find_bindir()
    _require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) not found; on Debian: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _require(False, "psycopg is not installed (pip install 'xaibench[web]')")
    with PostgresCluster(bindir) as cluster:
        yield cluster


def _databases(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'harmony_%'")]


def test_app_suites_on_postgresql(postgres):
    """The suites in a child pytest whose every ``use_home`` gets a fresh database on the server
    (a process configures Django once, so the switch from SQLite needs a new process); the restart
    test below runs there too, with the command that restarts this server."""
    suites = [str(REPO / "tests" / s) for s in SUITES if (REPO / "tests" / s).exists()]
    suites.append(f"{__file__}::test_database_restart_during_load_loses_no_acknowledged_label")
    env = {**os.environ, "HARMONY_TEST_DATABASE_URL": postgres.url, "OMP_NUM_THREADS": "1",
           RESTART_ENV: json.dumps(postgres.pg_ctl("restart", "-m", "immediate"))}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:xdist", "-p", "no:cacheprovider", "-rs", *suites],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    if os.environ.get("CI"):  # nothing skipped in CI (the browser, the published study)
        assert "skipped" not in summary, r.stdout[-3000:]
    assert len(_databases(postgres.url)) >= len(suites)  # every suite ran on its own PostgreSQL database(s)
    restart = [line for line in r.stdout.splitlines() if "restart after" in line]
    assert restart, r.stdout[-3000:]
    print(restart[0])


# --- a hard database restart in the middle of a concurrent load ---

ANNOTATORS = 20
CONDITIONS = 2
EXAMPLES = 6
TOKEN_RE = re.compile(r'name="choice" value="([^"]+)" data-key="(left|neither|right)"')
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
SIDES = ("left", "right", "neither")


class RetryingClient:
    """An annotator's browser that retries a request until the server acknowledges it (HTTP 200),
    as a person would click again after an error page."""

    def __init__(self, base: str, failures: list):
        self.base = base
        self.failures = failures
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def _open(self, request, deadline: float = 90.0):
        start = time.monotonic()
        while True:
            try:
                with self.opener.open(request, timeout=30) as r:
                    return r.geturl(), r.read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                code = getattr(err, "code", None)
                if code is not None and code < 500:
                    raise
                self.failures.append(code or type(err).__name__)
                if time.monotonic() - start > deadline:
                    raise
                time.sleep(0.2)

    def get(self, path: str) -> str:
        return self._open(self.base + path)[1]

    def post(self, path: str, data: dict) -> str:
        return self._open(urllib.request.Request(self.base + path, data=urllib.parse.urlencode(data).encode()))[0]


def annotate(base: str, index: int, acknowledged: dict, failures: list, errors: list, progress: list) -> None:
    try:
        c = RetryingClient(base, failures)
        page = c.get("/accounts/login/")
        c.post("/accounts/login/", {"username": f"pg{index:02d}", "password": f"password-{index:02d}",
                                    "csrfmiddlewaretoken": CSRF_RE.search(page).group(1)})
        for card in range(1, CONDITIONS + 1):
            for n in range(1, EXAMPLES + 1):
                html = c.get(f"/card/{card}/{n}/")
                tokens = {side: tok for tok, side in TOKEN_RE.findall(html)}
                side = SIDES[(index + card + n) % 3]
                c.post(f"/card/{card}/{n}/", {"choice": tokens[side], "csrfmiddlewaretoken": CSRF_RE.search(html).group(1)})
                acknowledged[(card, n)] = side  # only after the server answered 200
                progress.append(1)
    except Exception as err:  # noqa: BLE001 - reported by the test
        errors.append((index, repr(err)))


def test_database_restart_during_load_loses_no_acknowledged_label(tmp_path):
    """20 annotators label concurrently through the real server; when a third of the labels are
    acknowledged the database is restarted hard (``pg_ctl restart -m immediate``). Requests that fail
    meanwhile are retried; at the end every acknowledged answer is stored, exactly once."""
    if not (os.environ.get(RESTART_ENV) and os.environ.get("HARMONY_TEST_DATABASE_URL")):
        pytest.skip("runs inside test_app_suites_on_postgresql, against the PostgreSQL server it starts")
    from xaibench.harmony.dataset import assign_conditions, load_dataset
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path / "home")
    load_dataset(make_sample_dataset(tmp_path / "study", conditions=CONDITIONS, examples=EXAMPLES, size=32))
    from django.contrib.auth import get_user_model
    from django.db import connections

    from xaibench.harmony.models import Assignment, Condition, Example, Label, Presentation
    from xaibench.harmony.views import example_order

    for i in range(ANNOTATORS):
        assign_conditions(get_user_model().objects.create_user(f"pg{i:02d}", password=f"password-{i:02d}"),
                          list(Condition.objects.all()))
    connections.close_all()
    total = ANNOTATORS * CONDITIONS * EXAMPLES
    acknowledged = [dict() for _ in range(ANNOTATORS)]
    failures: list = []
    errors: list = []
    progress: list = []
    with LiveServer(home, threads=8) as live:
        threads = [threading.Thread(target=annotate, args=(live.url, i, acknowledged[i], failures, errors, progress))
                   for i in range(ANNOTATORS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(progress) < total // 3 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        at_restart = len(progress)
        subprocess.run(json.loads(os.environ[RESTART_ENV]), check=True, capture_output=True, timeout=120)
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "annotator threads did not finish"
    assert not errors, errors[:3]
    assert 0 < at_restart < total, at_restart  # the restart came in the middle of the load
    connections.close_all()
    assert Label.objects.count() == total
    for i in range(ANNOTATORS):
        name = f"pg{i:02d}"
        assignments = list(Assignment.objects.filter(annotator__username=name).order_by("position", "id"))
        assert len(acknowledged[i]) == CONDITIONS * EXAMPLES
        for (card, n), side in acknowledged[i].items():
            example = Example.objects.get(pk=example_order(assignments[card - 1])[n - 1])
            label = Label.objects.get(annotator__username=name, example=example)
            pres = Presentation.objects.get(annotator__username=name, example=example)
            expected = "neither" if side == "neither" else ("finetuned" if (side == "left") == pres.finetuned_left else "original")
            assert label.choice == expected, (name, card, n)
    print(f"restart after {at_restart}/{total} labels; {len(failures)} failed request(s) retried: {sorted(set(map(str, failures)))}")
