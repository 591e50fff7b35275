"""Import of the published HARMONY study database and the analysis reproducing its figures."""

from __future__ import annotations

import sqlite3

import pytest

from xaibench.harmony.legacy import LEGACY_PREFIX
from xaibench.harmony.testing import cli

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
    from xaibench.harmony.testing import use_home

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
