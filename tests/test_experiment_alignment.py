"""The explanation-alignment recipes end to end on their built-in stand-ins, and the spurious
recipe at full size against the paper's qualitative pattern (Bang, Boggust & Satyanarayan 2024)."""

from __future__ import annotations

import tomllib
from importlib import resources

import pandas as pd
import pytest
import torch

from xaibench.errors import InputError
from xaibench.experiments import load_table, recipes, run_experiment
from xaibench.experiments import alignment as al
from xaibench.metrics.shared_interest import CASES
from xaibench.report.experiment import build_experiment_report


def example(name: str) -> dict:
    text = resources.files("xaibench.configs").joinpath(f"experiment-{name}.toml").read_text()
    return tomllib.loads(text)


def test_alignment_recipes_are_registered_with_their_examples():
    for name in ("spurious", "bias", "feature-ranking", "model-comparison", "transfer"):
        recipe = recipes().get(name)
        assert recipe.example == f"experiment-{name}.toml"
        recipe.parse(example(name))  # the shipped config is valid


def test_spurious_full_size_reproduces_the_papers_pattern(tmp_path):
    cfg = example("spurious")
    cfg["batch"] = 270  # two shards per test set: the whole 540-image test sets
    out = run_experiment("spurious", cfg, tmp_path / "spurious")
    table = load_table(out, "alignment").set_index(["model", "test_set", "mask"])
    # the paper's table: model x test set x ground truth
    assert len(table) == 8 and table.index.is_unique
    assert set(table.index) == {(m, t, g) for m in ("normal", "shortcut") for t in ("correlated", "uncorrelated")
                                for g in ("digit", "square")}
    assert (table["images"] == 540).all() and (table["undefined"] == 0).all()
    for test in ("correlated", "uncorrelated"):
        normal_digit, normal_square = table.loc[("normal", test, "digit")], table.loc[("normal", test, "square")]
        short_digit, short_square = table.loc[("shortcut", test, "digit")], table.loc[("shortcut", test, "square")]
        # normal model: aligned with the digit, not the square (IoU and pointing game)
        assert normal_digit["iou"] > normal_square["iou"] + 0.08
        assert normal_digit["pg"] > 0.4 and normal_square["pg"] < 0.05
        # shortcut model: the reverse
        assert short_square["pg"] > 0.5 and short_digit["pg"] < 0.1
        # (the 36-pixel square bounds its IoU with the ~130 pixels the binarisation keeps: coverage shows it)
        assert short_square["iou"] > short_digit["iou"] and short_square["gtc"] > short_digit["gtc"] + 0.2
        assert normal_digit["accuracy"] > 0.95
    # the shortcut model is right on correlated data and near chance (10 classes) on uncorrelated data
    assert table.loc[("shortcut", "correlated", "digit"), "accuracy"] > 0.95
    assert table.loc[("shortcut", "uncorrelated", "digit"), "accuracy"] < 0.2
    # Shared Interest's eight cases: every image once per (model, test set, mask)
    cases = load_table(out, "cases")
    assert list(cases.columns[3:12]) == [*CASES, al.NO_CASE]
    assert (cases[[*CASES, al.NO_CASE]].sum(axis=1) == 540).all()
    page = build_experiment_report(out).read_text()
    assert "EA_IoU" in page and "human aligned" in page
    # per-image rows carry provenance of the runner and of the experiment
    images = load_table(out, "alignment_images")
    assert {"model_hash", "dataset_spec", "config_hash", "case", "iou", "pg"} <= set(images.columns)
    assert len(images) == 8 * 540


def test_per_image_scores_match_the_metrics_and_cases(tmp_path):
    """The tables are the metric functions' results: recompute a few images directly."""
    import xaibench
    from xaibench.data import collate, load_dataset
    from xaibench.metrics.localisation import pointing_game
    from xaibench.metrics.shared_interest import shared_interest, shared_interest_cases

    cfg = example("model-comparison")
    cfg["data"]["n"] = 40
    cfg["models"] = {"normal": {"spec": "builtin:digits-cnn"}}
    out = run_experiment("model-comparison", cfg, tmp_path / "mc")
    images = load_table(out, "alignment_images").sort_values("image_index")
    ds = load_dataset("builtin:digits")
    batch = collate([ds[i] for i in images["image_index"]])
    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    with torch.no_grad():
        pred = model(batch.images).argmax(1)
    maps = xaibench.explainer("gradcam", model)(batch.images, pred)
    mask = batch.masks["digit"]
    iou = shared_interest(maps, mask, binarize="threshold", t=0.5).scores
    assert torch.allclose(torch.tensor(images["iou"].to_numpy()), iou.double(), atol=1e-6)
    assert images["pg"].tolist() == pointing_game(maps, mask).scores.tolist()
    assert images["prediction"].tolist() == pred.tolist()
    cases = shared_interest_cases(maps, mask, pred == batch.labels, binarize="threshold", t=0.5).labels()
    assert images["case"].tolist() == [c or al.NO_CASE for c in cases]
    summary = load_table(out, "alignment")
    assert summary.loc[0, "iou"] == pytest.approx(float(iou.double().mean()))
    assert summary.loc[0, "parameters"] == sum(p.numel() for p in model.parameters())
    assert "data:image/png;base64" in build_experiment_report(out).read_text()  # the scatter


def test_summary_excludes_and_counts_undefined_images():
    frame = pd.DataFrame({
        "model": ["a"] * 4, "mask": ["m"] * 4, "correct": [True, True, False, True],
        "iou": [0.5, float("nan"), 0.1, 0.3], "gtc": [1, float("nan"), 0.2, 0.5],
        "sc": [0.5, float("nan"), 0.1, 0.4], "pg": [1.0, float("nan"), 0.0, 1.0],
    })
    row = al.summarise(frame, ["model"]).iloc[0]
    assert row["images"] == 4 and row["undefined"] == 1 and row["accuracy"] == 0.75
    assert row["iou"] == pytest.approx(0.3) and row["pg"] == pytest.approx(2 / 3)


def test_config_errors_name_the_key():
    spurious = recipes().get("spurious")
    cfg = example("spurious")
    with pytest.raises(InputError, match="saliency"):
        spurious.parse({**cfg, "saliency": "vanila"})
    with pytest.raises(InputError, match=r"\[data\].*'maks'.*'masks'"):
        spurious.parse({**cfg, "data": {"spec": "builtin:digits-spurious", "maks": ["digit"]}})
    with pytest.raises(InputError, match=r"\[models.normal\]"):
        spurious.parse({**cfg, "models": {"normal": {"spex": "builtin:digits-cnn"}}})
    bias = example("bias")
    with pytest.raises(InputError, match=r"majority"):
        recipes().get("bias").parse({**bias, "data": {**bias["data"], "majority": {"warm": 0}}})
    with pytest.raises(InputError, match=r"\[sizes.train\].*'minor'"):
        recipes().get("bias").parse({**bias, "sizes": {**bias["sizes"], "train": {"major": 3, "balanced": 2}}})
    with pytest.raises(InputError, match=r"epochz"):
        recipes().get("bias").parse({**bias, "train": {**bias["train"], "epochz": 1}})
    transfer = example("transfer")
    with pytest.raises(InputError, match=r"\[models.trained\]: give either"):
        models = {**transfer["models"], "trained": {**transfer["models"]["trained"], "spec": "builtin:digits-cnn"}}
        recipes().get("transfer").parse({**transfer, "models": models})


def test_feature_ranking_on_its_stand_in(tmp_path):
    cfg = example("feature-ranking")
    cfg["data"]["n"] = 60
    out = run_experiment("feature-ranking", cfg, tmp_path / "fr")
    ranking = load_table(out, "ranking")
    assert len(ranking) == 2 * 4 and set(ranking["region"]) == {"upper", "lower", "square", "background"}
    for model, part in ranking.groupby("model"):
        assert sorted(part["rank_iou"].tolist()) == [1, 2, 3, 4]
        assert part.sort_values("rank_iou")["iou"].is_monotonic_decreasing
    top = ranking[ranking["rank_iou"] == 1].set_index("model")["region"]
    assert top["shortcut"] == "square" and top["normal"] in ("upper", "lower")
    assert "rank_iou" in build_experiment_report(out).read_text()


def _tiny_training(table: dict) -> None:
    # a handful of steps: the one-cycle schedule of the example needs more than warmup x steps = 1
    table.update(epochs=1, batch_size=32, schedule="constant")


def test_bias_on_its_stand_in_at_a_tiny_budget(tmp_path):
    cfg = example("bias")
    cfg["sizes"] = {"train": {"major": 40, "minor": 2, "balanced": 21},
                    "test": {"major": 10, "minor": 3, "balanced": 6}}
    _tiny_training(cfg["train"])
    out = run_experiment("bias", cfg, tmp_path / "bias")
    subsets = load_table(out, "subsets").set_index(["subset", "group", "label"])["images"]
    assert subsets[("train-biased", "cool", 1)] == 40 and subsets[("train-biased", "cool", 0)] == 2
    assert subsets[("test-balanced", "warm", 1)] == 6
    table = load_table(out, "alignment")
    assert len(table) == 2 * 2 * 2  # model x test set x mask
    sizes = table.set_index(["model", "test_set", "mask"])["images"]
    assert sizes[("biased", "biased", "digit")] == 2 * 10 + 2 * 3 and sizes[("balanced", "balanced", "frame")] == 24
    groups = load_table(out, "alignment_groups")
    assert set(groups["group"]) == {"warm", "cool"} and len(groups) == 2 * 2 * 4 * 2
    images = load_table(out, "alignment_images")
    assert images["group"].notna().all()
    # the models are the trainer's files, evaluated through the runner
    assert images["model_spec"].str.startswith("file:").all()
    assert "human aligned" in build_experiment_report(out).read_text()
    # resume: everything committed is skipped, the tables are unchanged
    run_experiment("bias", cfg, out, resume=True)
    pd.testing.assert_frame_equal(load_table(out, "alignment"), table)


def test_transfer_on_its_stand_in_at_a_tiny_budget(tmp_path):
    cfg = example("transfer")
    cfg["source"]["n"] = 50
    for label in list(cfg["models"])[1:]:
        del cfg["models"][label]
    _tiny_training(cfg["models"]["trained"]["train"])
    cfg["models"]["builtin"] = {"spec": "builtin:digits-cnn"}  # a spec beside a trained model
    out = run_experiment("transfer", cfg, tmp_path / "transfer")
    summary = load_table(out, "alignment").set_index("model")
    assert set(summary.index) == {"trained", "builtin"}
    assert (summary["train_images"] == 5).all() and (summary["test_images"] == 269 - 5).all()
    assert summary.loc["builtin", "transfer_accuracy"] > 0.5  # it has seen the digits 5-9
    correlation = load_table(out, "correlation")
    assert len(correlation) == 2 and (correlation["models"] == 2).all()
    assert correlation["verdict"].str.startswith("too few models to conclude").all() or \
        correlation["verdict"].str.startswith("undefined").all()
    page = build_experiment_report(out).read_text()
    assert "few-shot accuracy" in page and ("too few models to conclude" in page or "undefined (n = 2" in page)


def test_few_shot_split_and_accuracy():
    from xaibench.experiments.transfer import few_shot_accuracy, few_shot_split

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    train, test = few_shot_split(labels, 1, seed=3)
    assert sorted(labels[train].tolist()) == [0, 1, 2] and len(test) == 6
    assert not set(train.tolist()) & set(test.tolist())
    # separable features: one shot per class suffices
    features = torch.nn.functional.one_hot(labels, 3).float() * 5
    assert few_shot_accuracy(features, labels, train, test) == 1.0
    with pytest.raises(InputError, match="class 0 has 3 images"):
        few_shot_split(labels, 3, seed=0)


def _celeba_fixture(root, n_per_cell: int = 3) -> None:
    """CelebA's published layout with n_per_cell images per (hair, smiling) cell in train and in test."""
    import numpy as np
    from PIL import Image

    names = ["Black_Hair", "Blond_Hair", "Smiling"]
    attrs, marks, parts = [], [], []
    rng = np.random.default_rng(0)
    k = 0
    for partition in (0, 2):
        for black in (1, -1):
            for smiling in (1, -1):
                for _ in range(n_per_cell):
                    k += 1
                    name = f"{k:06d}.jpg"
                    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
                    pixels = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / "img_align_celeba" / name)
                    attrs.append(f"{name} {black} {-black} {smiling}")
                    marks.append(f"{name} 10 14 26 14 18 20 11 28 25 29")
                    parts.append(f"{name} {partition}")
    (root / "list_attr_celeba.txt").write_text(f"{k}\n{' '.join(names)}\n" + "\n".join(attrs) + "\n")
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (root / "list_landmarks_align_celeba.txt").write_text(f"{k}\n{header}\n" + "\n".join(marks) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


def test_bias_reads_celeba_in_its_published_layout(tmp_path):
    """The paper's configuration (smiling vs black / blond hair, mouth box) on a tiny CelebA fixture."""
    _celeba_fixture(tmp_path / "celeba")
    cfg = example("bias")
    cfg["data"] = {"spec": f"celeba:{tmp_path / 'celeba'}#Smiling", "groups": ["Black_Hair", "Blond_Hair"],
                   "majority": {"Black_Hair": 1, "Blond_Hair": 0}, "masks": ["mouth"], "image_size": 32}
    cfg["sizes"] = {"train": {"major": 3, "minor": 1, "balanced": 2},
                    "test": {"major": 2, "minor": 1, "balanced": 1}}
    _tiny_training(cfg["train"])
    out = run_experiment("bias", cfg, tmp_path / "bias")
    groups = load_table(out, "alignment_groups")
    assert set(groups["group"]) == {"Black_Hair", "Blond_Hair"} and set(groups["mask"]) == {"mouth"}
    biased = groups[(groups["model"] == "biased") & (groups["test_set"] == "biased")].set_index(["group", "label"])
    assert biased.loc[("Black_Hair", 1), "images"] == 2 and biased.loc[("Black_Hair", 0), "images"] == 1
    assert load_table(out, "alignment")["undefined"].eq(0).all()  # every image has its mouth box
