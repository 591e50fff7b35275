"""Import of the published HARMONY study database and the analysis reproducing its figures."""

from __future__ import annotations

import sqlite3

import pytest

from xaibench.harmony.legacy import LEGACY_PREFIX
from harmony_testing import cli

pytest.importorskip("django")

# (metric, model, method) -> (% fine-tuned, % original, % neither), 1,000 labels each
PUBLISHED = {
    ("IoULearnableMetric", "VGG", "GradCamAttributor"): (62.3, 3.9, 33.8),
    ("IoULearnableMetric", "ResNet", "GuidedBackpropAttributor"): (0.9, 85.1, 14.0),
    ("ISLearnableMetric", "ResNet", "ExcitationBackpropAttributor"): (70.5, 7.8, 21.7),
    ("ISLearnableMetric", "ResNet", "GradCamAttributor"): (0.0, 0.0, 100.0),
    ("FocusLearnableMetric", "VGG", "GradCamAttributor"): (51.1, 8.1, 40.8),
    ("ROADLearnableMetric", "VGG", "ExcitationBackpropAttributor"): (35.0, 20.0, 45.0),
    ("IROFLearnableMetric", "VGG", "ExcitationBackpropAttributor"): (24.9, 24.1, 51.0),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, legacy_db):
    from harmony_testing import use_home

    use_home(tmp_path_factory.mktemp("harmony-import-home"))
    from xaibench.harmony.legacy import import_legacy

    return import_legacy(legacy_db)


def test_import_counts_and_latest_wins(imported, legacy_db):
    from xaibench.harmony.models import Condition, Example, Label

    assert imported["conditions"] == 30 and imported["examples"] == 6000
    assert imported["labels_read"] == 30007 and imported["duplicates"] == 7
    assert imported["labels"] == 30000 and imported["labels_created"] == 30000 and imported["annotators"] == 5
    assert Condition.objects.count() == 30 and Example.objects.count() == 6000 and Label.objects.count() == 30000
    assert not Example.objects.exclude(image="").exists()  # imported without pictures
    assert set(Label.objects.values_list("choice", flat=True)) == {"finetuned", "original", "neither"}
    # the latest label of each duplicated pair wins
    con = sqlite3.connect(f"file:{legacy_db}?mode=ro", uri=True)
    dups = con.execute(
        "SELECT u.username, max(l.id) FROM relevavance_label l JOIN auth_user u ON u.id = l.user_id "
        "GROUP BY l.user_id, l.example_id HAVING count(*) > 1"
    ).fetchall()
    con.close()
    assert len(dups) == 7
    for username, latest in dups:
        assert Label.objects.filter(annotator__username=LEGACY_PREFIX + username, legacy_id=latest).count() == 1
    # imported accounts live in their own namespace and cannot log in
    from django.contrib.auth import get_user_model

    legacy = get_user_model().objects.filter(username__startswith=LEGACY_PREFIX)
    assert legacy.count() == 5 and not get_user_model().objects.filter(username__startswith="annotator_").exists()
    assert not any(u.has_usable_password() or u.is_active for u in legacy)


def test_import_is_idempotent(imported, legacy_db, capsys):
    from xaibench.harmony.models import Label

    cli("import-legacy", str(legacy_db))
    out = capsys.readouterr().out
    assert "7 duplicated (annotator, example) label(s)" in out and "0 labels created, 0 updated" in out
    assert Label.objects.count() == 30000


def test_analysis_reproduces_published_figures(imported):
    from xaibench.harmony.analysis import analyze
    from xaibench.harmony.export import labels_frame

    res = analyze(labels_frame())
    assert res["n_labels"] == 30000 and res["n_annotators"] == 5 and len(res["conditions"]) == 30
    by = {(c["metric"], c["model"], c["method"]): c for c in res["conditions"]}
    for key, (ft, orig, neither) in PUBLISHED.items():
        c = by[key]
        assert c["n"] == 1000, key
        assert (round(c["pct_finetuned"], 1), round(c["pct_original"], 1), round(c["pct_neither"], 1)) == (ft, orig, neither), key
        assert c["fleiss_raters"] == 5 and c["fleiss_items"] == 200
    vgg = by[("IoULearnableMetric", "VGG", "GradCamAttributor")]
    assert (vgg["finetuned"], vgg["original"], vgg["neither"]) == (623, 39, 338)
    assert vgg["preference"] == pytest.approx(623 / 662) and vgg["p_value"] < 1e-100
    assert 0.90 < vgg["ci_low"] < vgg["preference"] < vgg["ci_high"] < 0.97
    metrics = {m["metric"]: m for m in res["metrics"]}
    assert all(m["n"] == 6000 for m in metrics.values())
    assert round(metrics["IoULearnableMetric"]["pct_finetuned"], 1) == 34.5
    assert sum(a["n"] for a in res["annotators"]) == 30000
    assert round(res["overall"]["pct_neither"], 1) == 68.0


def test_import_errors(tmp_path):
    from xaibench.errors import InputError
    from xaibench.harmony.legacy import read_legacy

    with pytest.raises(InputError, match="not found"):
        read_legacy(tmp_path / "missing.sqlite3")
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="not an SQLite database"):
        read_legacy(bad)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(InputError, match="missing table"):
        read_legacy(other)


LEGACY_SCHEMA = """
CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username varchar(150), password varchar(128), is_staff bool);
CREATE TABLE relevavance_dataset (id INTEGER PRIMARY KEY, name varchar(128));
CREATE TABLE relevavance_experiment (id INTEGER PRIMARY KEY, name varchar(128));
CREATE TABLE relevavance_cnnmodel (id INTEGER PRIMARY KEY, name varchar(128));
CREATE TABLE relevavance_relevancymethod (id INTEGER PRIMARY KEY, name varchar(128));
CREATE TABLE relevavance_example (id INTEGER PRIMARY KEY, dataset_id bigint, experiment_id bigint, image varchar(512),
    relevancy_method_id bigint, cnn_model_id bigint, prediction varchar(512));
CREATE TABLE relevavance_label (id INTEGER PRIMARY KEY, choice varchar(128), example_id bigint, user_id INTEGER);
INSERT INTO auth_user VALUES (1, 'annotator_1', '', 0), (2, 'coordinator', '', 1);
INSERT INTO relevavance_dataset VALUES (1, 'ImageNet');
INSERT INTO relevavance_experiment VALUES (1, 'MiniMetric');
INSERT INTO relevavance_cnnmodel VALUES (1, 'VGG');
INSERT INTO relevavance_relevancymethod VALUES (1, 'GradCamAttributor');
INSERT INTO relevavance_example VALUES (1, 1, 1, 'x/1_image.png', 1, 1, 'dhole'), (2, 1, 1, 'x/2_image.png', 1, 1, 'van');
INSERT INTO relevavance_label VALUES (1, 'learn', 1, 1), (2, 'neither', 2, 1), (3, 'original', 1, 2), (4, 'learn', 2, 2);
"""


def mini_legacy(path, *sql: str):
    """A small database shaped like the published study's, changed by ``sql``."""
    con = sqlite3.connect(path)
    con.executescript("PRAGMA synchronous = OFF; BEGIN;" + LEGACY_SCHEMA + "COMMIT;")
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    return path


def test_import_reports_hostile_rows(tmp_path):
    from xaibench.errors import InputError
    from xaibench.harmony.legacy import read_legacy

    cases = [
        ("DROP TABLE relevavance_label", "missing table.*relevavance_label"),
        ("ALTER TABLE relevavance_label DROP COLUMN choice", r"missing column\(s\): relevavance_label lacks choice"),
        ("UPDATE relevavance_example SET prediction = NULL WHERE id = 2", r"1 x example: prediction is NULL \(id 2\)"),
        ("UPDATE relevavance_example SET image = X'00ff' WHERE id = 1", r"example: image is not text \(bytes\) \(id 1\)"),
        ("UPDATE relevavance_example SET image = CAST(X'ff41' AS TEXT) WHERE id = 1", r"image is not text \(invalid UTF-8\)"),
        ("INSERT INTO relevavance_label VALUES (9, 'learn', 1, 42)", r"1 x label whose user is missing \(id 9\)"),
        ("INSERT INTO relevavance_label VALUES (9, 'learn', 77, 1)", r"label whose example is missing.*\(id 9\)"),
        ("UPDATE relevavance_example SET prediction = printf('%.*c', 3000000, 'x') WHERE id = 1",
         "prediction is longer than 256 characters"),
        ("UPDATE auth_user SET username = '  ' WHERE id = 2", r"2 x label: username is empty \(id 3, 4\)"),
        ("UPDATE relevavance_label SET choice = 'maybe' WHERE id = 1", "unknown choice 'maybe'"),
        ("UPDATE relevavance_cnnmodel SET name = NULL", "example: model is NULL"),
        ("UPDATE relevavance_example SET image = 'y/1_image.png' WHERE id = 2", "image name repeats another"),
    ]
    for i, (sql, message) in enumerate(cases):
        db = mini_legacy(tmp_path / f"case{i}.sqlite3", sql)
        with pytest.raises(InputError, match=message):
            read_legacy(db)
    # --skip-invalid keeps the valid rows and says what it left out
    db = mini_legacy(tmp_path / "skip.sqlite3", "INSERT INTO relevavance_label VALUES (9, 'learn', 1, 42)",
                     "UPDATE relevavance_example SET prediction = NULL WHERE id = 2")
    data = read_legacy(db, skip_invalid=True)
    assert [e[0] for e in data["examples"]] == [1] and [lab[0] for lab in data["labels"]] == [1, 3]
    assert data["problems"] == {"example: prediction is NULL": [2], "label whose user is missing": [9],
                                "label whose example is missing or cannot be imported": [2, 4]}


def test_import_reports_a_damaged_database(tmp_path):
    from xaibench.errors import InputError
    from xaibench.harmony.legacy import read_legacy

    db = mini_legacy(tmp_path / "damaged.sqlite3", *[
        f"INSERT INTO relevavance_example VALUES ({i}, 1, 1, 'x/{i}_image.png', 1, 1, '{'p' * 200}')" for i in range(3, 800)
    ])
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[len(data) - 5 * page: len(data) - 3 * page] = b"\xa5" * (2 * page)
    db.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        read_legacy(db)


def test_legacy_annotators_never_merge_into_live_accounts(tmp_path, capsys):
    from harmony_testing import use_home

    use_home(tmp_path / "home")
    from django.contrib.auth import get_user_model

    from xaibench.errors import InputError
    from xaibench.harmony.legacy import import_legacy
    from xaibench.harmony.models import Label

    User = get_user_model()
    User.objects.create_user("coordinator", password="correct horse 1", is_staff=True, is_superuser=True)
    User.objects.create_user("annotator_1", password="correct horse 1")
    counts = import_legacy(mini_legacy(tmp_path / "study.sqlite3"))
    assert counts["annotators"] == 2 and counts["labels_created"] == 4
    assert not Label.objects.filter(annotator__username__in=["coordinator", "annotator_1"]).exists()
    for name in ("legacy.coordinator", "legacy.annotator_1"):
        user = User.objects.get(username=name)
        assert not user.is_active and not user.is_staff and not user.has_usable_password()
        assert Label.objects.filter(annotator=user).count() == 2
    live = User.objects.get(username="coordinator")
    assert live.is_staff and live.check_password("correct horse 1")
    assert import_legacy(tmp_path / "study.sqlite3")["labels_created"] == 0  # idempotent
    # an account in the legacy namespace that can log in is never taken over
    other = mini_legacy(tmp_path / "other.sqlite3", "UPDATE auth_user SET username = 'mallory' WHERE id = 1")
    User.objects.create_user("legacy.mallory", password="correct horse 1")
    with pytest.raises(InputError, match="'legacy.mallory' exists and is not an imported legacy annotator"):
        import_legacy(other)
    assert not Label.objects.filter(annotator__username="legacy.mallory").exists()
    # the command line stops on invalid rows, or skips them and says how many
    bad = mini_legacy(tmp_path / "bad.sqlite3", "INSERT INTO relevavance_label VALUES (9, 'learn', 1, 42)")
    with pytest.raises(InputError, match=r"label whose user is missing \(id 9\).*--skip-invalid"):
        cli("import-legacy", str(bad))
    cli("import-legacy", str(bad), "--skip-invalid")
    assert "4 labels read, 1 invalid row(s) skipped" in capsys.readouterr().out


def test_legacy_data_never_enters_a_live_study(tmp_path):
    """A live condition with the same names as an imported one: the import neither merges its
    examples into the live condition nor attaches legacy labels to live examples, and live
    annotators (existing or added later) never get imported cards."""
    import json
    import re

    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import make_annotator, use_home

    use_home(tmp_path / "home")
    from django.test import Client

    from xaibench.harmony.legacy import import_legacy
    from xaibench.harmony.models import Assignment, Condition, Example, Label

    root = make_sample_dataset(tmp_path / "live", conditions=1, examples=2, size=24)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["conditions"][0].update(dataset="ImageNet", metric="MiniMetric", model="VGG", method="GradCamAttributor")
    (root / "manifest.json").write_text(json.dumps(manifest))
    cli("load", str(root))
    alice = make_annotator("alice", dataset="ImageNet")
    live = Condition.objects.get()
    before = list(live.examples.values_list("id", "key", "prediction", "image").order_by("id"))

    counts = import_legacy(mini_legacy(tmp_path / "study.sqlite3"))
    assert counts["conditions"] == 1 and counts["labels_created"] == 4
    legacy = Condition.objects.get(legacy=True)
    assert legacy.pk != live.pk and not Condition.objects.get(pk=live.pk).legacy
    assert list(live.examples.values_list("id", "key", "prediction", "image").order_by("id")) == before
    assert not Label.objects.filter(example__condition=live).exists()
    assert Label.objects.filter(example__condition=legacy).count() == 4
    cli("load", str(root))  # loading the live study again touches nothing imported
    assert Example.objects.filter(condition=legacy).count() == 2 and live.examples.count() == 2

    client = Client()
    client.force_login(alice)
    home = client.get("/").content.decode()
    assert "injected" not in home and "dhole" not in home and len(re.findall(r'href="/card/\d+/', home)) >= 1
    assert not Assignment.objects.filter(annotator=alice, condition=legacy).exists()
    cli("add-annotator", "bob")
    assert set(Assignment.objects.filter(annotator__username="bob").values_list("condition_id", flat=True)) == {live.pk}
