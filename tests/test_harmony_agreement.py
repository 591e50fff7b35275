"""Metric-human agreement: verdicts, the human majority, agreement rates, alpha with the metric as a
rater (against the `krippendorff` package), and `analyze --metrics` on a loaded study whose answer
is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xaibench.errors import InputError, UnknownNameError
from xaibench.harmony.agreement import agreement, human_majority, score_maps, verdicts

F, O, N = "finetuned", "original", "neither"
# condition A, 3 annotators: example -> (labels, metric verdict as (original score, fine-tuned score))
HAND = {
    "1": ((F, F, O), (0.2, 0.9)),  # majority F, metric F: agree
    "2": ((O, O, F), (0.8, 0.1)),  # majority O, metric O: agree
    "3": ((F, F, F), (0.7, 0.3)),  # majority F, metric O: disagree
    "4": ((N, N, F), (0.1, 0.5)),  # majority neither: left out
    "5": ((F, O, N), (0.1, 0.5)),  # no majority: left out
    "6": ((O, O, O), (0.4, 0.4)),  # metric tie: left out (rates "neither" in alpha)
    "7": ((F, F, O), (np.nan, 0.5)),  # metric undefined: left out (missing rating in alpha)
}


def _frames():
    labels, scores = [], []
    for ex, (choices, (so, sf)) in HAND.items():
        labels += [{"annotator": f"a{i}", "example": ex, "choice": c, "dataset": "D", "metric": "M", "model": "m",
                    "method": "A"} for i, c in enumerate(choices)]
        scores.append({"dataset": "D", "metric": "M", "model": "m", "method": "A", "example": ex, "scored": "rma",
                       "original_score": so, "finetuned_score": sf, "higher_is_better": True})
        # a lower-is-better metric that reads the same scores: the opposite verdicts
        scores.append({**scores[-1], "scored": "lower", "higher_is_better": False})
    for ex, choice in (("1", F), ("2", O)):  # condition B: two examples, both agree with rma
        labels += [{"annotator": f"a{i}", "example": ex, "choice": choice, "dataset": "D", "metric": "M", "model": "m",
                    "method": "B"} for i in range(3)]
        so, sf = (0.0, 1.0) if choice == F else (1.0, 0.0)
        scores.append({"dataset": "D", "metric": "M", "model": "m", "method": "B", "example": ex, "scored": "rma",
                       "original_score": so, "finetuned_score": sf, "higher_is_better": True})
    return pd.DataFrame(labels), pd.DataFrame(scores)


def test_verdicts_and_majority():
    assert list(verdicts([1, 2, 3, np.nan], [2, 1, 3, 1], True)) == [F, O, "tie", "undefined"]
    assert list(verdicts([1, 2], [2, 1], False)) == [O, F]
    assert list(human_majority(np.array([[2, 1, 0], [1, 1, 1], [0, 0, 3], [0, 0, 0]]))) == [F, "none", N, "none"]


def test_hand_built_agreement_per_condition_pooled_and_ranking():
    labels, scores = _frames()
    result = agreement(labels, scores)
    a = next(r for r in result["conditions"] if r["method"] == "A" and r["scored"] == "rma")
    assert (a["examples"], a["compared"], a["agree"]) == (7, 3, 2)
    assert (a["human_finetuned"], a["human_original"], a["human_neither"], a["human_none"]) == (3, 2, 1, 1)
    assert (a["metric_finetuned"], a["metric_original"], a["metric_tie"], a["metric_undefined"]) == (3, 2, 1, 1)
    assert a["rate"] == pytest.approx(2 / 3)
    from scipy.stats import binomtest

    ci = binomtest(2, 3).proportion_ci(method="wilson")
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((ci.low, ci.high))
    lower = next(r for r in result["conditions"] if r["method"] == "A" and r["scored"] == "lower")
    assert (lower["compared"], lower["agree"]) == (3, 1)  # the opposite verdicts: only example 3 agrees
    pooled = {r["scored"]: r for r in result["pooled"]}
    assert (pooled["rma"]["compared"], pooled["rma"]["agree"], pooled["rma"]["conditions"]) == (5, 4, 2)
    assert pooled["lower"]["rate"] == pytest.approx(1 / 3)
    assert result["ranking"] == ["rma", "lower"]


def test_alpha_with_the_metric_as_a_rater_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    labels, scores = _frames()
    row = next(r for r in agreement(labels, scores)["conditions"] if r["method"] == "A" and r["scored"] == "rma")
    code = {F: 0, O: 1, N: 2}
    humans = np.array([[code[c[i]] for c, _ in HAND.values()] for i in range(3)], dtype=float)
    rating = {F: 0, O: 1, "tie": 2, "undefined": np.nan}
    metric = [rating[v] for v in verdicts(*np.array([s for _, s in HAND.values()]).T, True)]
    expected_humans = krippendorff.alpha(reliability_data=humans, level_of_measurement="nominal")
    expected = krippendorff.alpha(reliability_data=np.vstack([humans, metric]), level_of_measurement="nominal")
    assert row["alpha_humans"] == pytest.approx(expected_humans)
    assert row["alpha_with_metric"] == pytest.approx(expected)
    assert row["alpha_with_metric"] != pytest.approx(row["alpha_humans"])


def test_score_maps_uses_the_registered_metric_and_refuses_model_metrics():
    original = np.zeros((2, 8, 8), np.float32)
    finetuned = np.zeros((2, 8, 8), np.float32)
    masks = np.zeros((2, 8, 8), bool)
    masks[:, :4] = True
    original[:, 6, 6] = 1  # peak outside the mask
    finetuned[:, 1, 1] = 1  # peak inside
    so, sf = score_maps("pointing_game", original, finetuned, masks)
    assert list(so) == [0, 0] and list(sf) == [1, 1]
    masks[1] = False  # an example without a mask: undefined
    so, sf = score_maps("pointing_game", original, finetuned, masks)
    assert np.isnan(so[1]) and np.isnan(sf[1]) and sf[0] == 1
    so, sf = score_maps("deletion", original, finetuned)  # no image, no models: undefined
    assert np.isnan(so).all() and np.isnan(sf).all()
    with pytest.raises(InputError, match="needs explainer"):
        score_maps("max_sensitivity", original, finetuned)
    with pytest.raises(UnknownNameError, match="Did you mean 'pointing_game'"):
        score_maps("pointing_gam", original, finetuned, masks)


# --- end to end: a loaded study whose maps and labels are built so that the answer is known ---

SIZE = 16


def _study(root):
    """Two conditions of 4 examples. The mask is the left half. Condition 0: the fine-tuned map's peak
    lies in the mask for examples 0-2 (pointing game prefers fine-tuned), outside for 3; condition 1:
    the original's peak is inside for every example. Sparseness: the fine-tuned map is a single
    pixel (sparser) everywhere."""
    root.mkdir()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "pic.png")
    conditions = []
    for c in range(2):
        examples = []
        for e in range(4):
            original = np.full((SIZE, SIZE), 0.1, np.float32)
            finetuned = np.zeros((SIZE, SIZE), np.float32)
            inside, outside = (3, 2), (3, SIZE - 2)
            if c == 0:
                original[outside] = 1
                finetuned[inside if e < 3 else outside] = 1
            else:
                original[inside] = 1
                finetuned[outside] = 1
            np.save(root / f"o{c}{e}.npy", original)
            np.save(root / f"f{c}{e}.npy", finetuned)
            examples.append({"id": str(e), "image": "pic.png", "original": "pic.png", "finetuned": "pic.png",
                             "prediction": "x", "original_map": f"o{c}{e}.npy", "finetuned_map": f"f{c}{e}.npy",
                             "mask": "mask.png", "label_index": 0})
        conditions.append({"dataset": "Hand", "metric": "PG", "model": "m", "method": f"X{c}",
                           "metric_name": "pointing_game", "method_name": "gradcam", "examples": examples})
    (root / "manifest.json").write_text(json.dumps({"format": "xaibench-harmony-study", "version": 1, "conditions": conditions}))
    return root


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    pytest.importorskip("django")
    from harmony_testing import cli, use_home

    use_home(tmp_path_factory.mktemp("harmony-agreement-home"))
    cli("load", str(_study(tmp_path_factory.mktemp("agreement") / "study")))
    from django.contrib.auth import get_user_model

    from xaibench.harmony.models import Example, Label

    users = [get_user_model().objects.create_user(f"agree{i}", password="pw-agree-123") for i in range(3)]
    for ex in Example.objects.filter(condition__dataset="Hand"):
        # annotators prefer the map whose peak is inside the mask, except: condition 0 example 3 -> neither
        inside_is_finetuned = ex.condition.method == "X0" and ex.key != "3"
        choice = N if (ex.condition.method == "X0" and ex.key == "3") else (F if inside_is_finetuned else O)
        for i, user in enumerate(users):
            Label.objects.create(annotator=user, example=ex, choice=F if (i == 2 and ex.key == "0") else choice)
    return cli


def test_analyze_metrics_json_text_and_html(loaded, capsys, tmp_path):
    cli = loaded
    assert cli("analyze", "--json", "--metrics", "pointing_game,sparseness") == 0
    out = json.loads(capsys.readouterr().out)
    pooled = {r["scored"]: r for r in out["agreement"]["pooled"]}
    # pointing game: condition 0 examples 0-2 majority F, verdict F; example 3 neither (left out);
    # condition 1 all majority O, verdict O -> 7 / 7. Sparseness always says F -> 3 / 7.
    assert (pooled["pointing_game"]["agree"], pooled["pointing_game"]["compared"]) == (7, 7)
    assert (pooled["sparseness"]["agree"], pooled["sparseness"]["compared"]) == (3, 7)
    assert pooled["pointing_game"]["human_neither"] == 1
    assert out["agreement"]["ranking"] == ["pointing_game", "sparseness"]
    cond = {(r["method"], r["scored"]): r for r in out["agreement"]["conditions"]}
    assert cond[("X1", "sparseness")]["agree"] == 0 and cond[("X1", "sparseness")]["compared"] == 4

    html = tmp_path / "report.html"
    assert cli("analyze", "--metrics", "sparseness", "--html", str(html)) == 0
    text = capsys.readouterr().out
    assert "Metric-human agreement" in text and "pointing_game 1.000 [0.646, 1.000] (n = 7)" in text
    # 7 / 7 against 3 / 7: the Wilson intervals overlap, so no metric is named first
    assert "no metric is clearly first" in text and "humans agree most with" not in text
    page = html.read_text()
    assert "Metrics humans agree with most" in page and "<script" not in page


def test_analyze_metrics_says_when_examples_carry_no_maps(loaded, capsys, tmp_path):
    from xaibench.harmony.sample import make_sample_dataset

    cli = loaded
    cli("load", str(make_sample_dataset(tmp_path / "plain", conditions=1, examples=2, size=16)))
    assert cli("analyze", "--metrics", "pointing_game") == 0
    assert "2 of 10 examples carry no maps as arrays" in capsys.readouterr().out
    with pytest.raises(InputError, match="needs explainer"):
        cli("analyze", "--metrics", "avg_sensitivity")


def test_no_maps_at_all_is_said_clearly(tmp_path, capsys):
    pytest.importorskip("django")
    from xaibench.harmony.sample import make_sample_dataset
    from harmony_testing import cli, use_home

    use_home(tmp_path / "home")
    cli("load", str(make_sample_dataset(tmp_path / "plain", conditions=1, examples=2, size=16)))
    assert cli("analyze", "--metrics", "pointing_game") == 0
    assert "none of the 2 examples carries the two maps as arrays" in capsys.readouterr().out


def test_published_study_carries_no_maps(legacy_db, tmp_path, capsys):
    from harmony_testing import cli, use_home

    use_home(tmp_path / "home")
    cli("import-legacy", str(legacy_db))
    capsys.readouterr()
    assert cli("analyze", "--metrics", "pointing_game") == 0
    out = capsys.readouterr().out
    assert "none of the 6000 examples carries the two maps as arrays" in out
    assert "IoULearnableMetric" in out  # the usual tables are still there


def test_model_metrics_score_each_map_with_its_own_model(tmp_path):
    """Condition 0 names two (random) models: deletion scores the original map with the original
    model and the fine-tuned map with the fine-tuned one, on the stored image, as the metric called
    directly; condition 1 names none: its scores are undefined and it is reported."""
    import torch

    from xaibench.harmony.agreement import study_scores
    from harmony_testing import cli, use_home
    from xaibench.metrics import METRICS
    from xaibench.models import load_model, save_model

    use_home(tmp_path / "home")
    root = _study(tmp_path / "study")
    for side, seed in (("original", 1), ("finetuned", 2)):
        save_model(load_model("torchvision:resnet18", num_classes=3, seed=seed, device="cpu"), root / f"{side}.pt",
                   "torchvision:resnet18", num_classes=3)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["conditions"][0].update(original_model="file:original.pt", finetuned_model="file:finetuned.pt")
    (root / "manifest.json").write_text(json.dumps(manifest))
    cli("load", str(root))
    scores, info = study_scores(["deletion"], device="cpu")
    assert info["without_models"] == ["Hand / PG / m / X1"]
    deletion = scores[scores["scored"] == "deletion"].set_index(["method", "example"]).sort_index()
    assert deletion.loc["X1", ["original_score", "finetuned_score"]].isna().all().all()

    x = torch.from_numpy(np.asarray(Image.open(root / "pic.png"), dtype=np.float32) / 255).permute(2, 0, 1)[None].repeat(4, 1, 1, 1)
    maps = {side: torch.from_numpy(np.stack([np.load(root / f"{side[0]}0{e}.npy") for e in range(4)])) for side in ("original", "finetuned")}
    models = {side: load_model(f"file:{root / f'{side}.pt'}", device="cpu") for side in ("original", "finetuned")}
    metric = METRICS.get("deletion")

    def direct(side, model):
        return metric(model=models[model], inputs=x, attributions=maps[side], targets=torch.zeros(4, dtype=torch.long)).scores.double().numpy()

    got = deletion.loc["X0"]
    np.testing.assert_allclose(got["original_score"].to_numpy(), direct("original", "original"), rtol=1e-6)
    np.testing.assert_allclose(got["finetuned_score"].to_numpy(), direct("finetuned", "finetuned"), rtol=1e-6)
    assert not np.allclose(got["finetuned_score"].to_numpy(), direct("finetuned", "original"), rtol=1e-6)
