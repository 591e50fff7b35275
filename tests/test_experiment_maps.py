"""The MAPS recipe end to end on the built-in digits with a SIMULATED observer: the planted observer
model must be found as the best model, and the observer's reliability must match its trial count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench import load_model
from xaibench.cli import main
from xaibench.errors import InputError, UnknownNameError
from xaibench.experiments import load_table, run_experiment
from xaibench.models import save_model


@pytest.fixture(scope="module")
def digit_models(tmp_path_factory):
    """Three digits CNNs that behave differently: the trained one and two with perturbed weights."""
    folder = tmp_path_factory.mktemp("models")
    specs = {}
    for k, scale in enumerate((0.0, 0.15, 0.3)):
        model = load_model("builtin:digits-cnn")
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
        specs[f"m{k}"] = f"file:{save_model(model, folder / f'm{k}.pt', 'builtin:digits-cnn')}"
    return specs


def _config(specs, **extra):
    return {
        "seed": 0,
        "data": {"spec": "builtin:digits", "n": 160},
        "models": {label: {"spec": spec} for label, spec in specs.items()},
        "methods": {"saliency": {}, "gradcam": {}},
        "observers": {"sim": {"simulate": "m1", "trials": 16}},
        "percentiles": [50, 80],
        "proxy_percentile": 75,
        "splits": 4,
        "n_boot": 300,
        **extra,
    }


def test_maps_recipe_recovers_the_simulated_observer(tmp_path, digit_models):
    out = run_experiment("maps", _config(digit_models), tmp_path / "maps")
    ranking = load_table(out, "model_consistency")
    assert ranking.iloc[0]["model"] == "m1" and ranking.iloc[0]["best"]
    rel = load_table(out, "reliability")
    assert rel["simulated"].all() and set(rel["method"]) == {"clean", "saliency", "gradcam"}
    clean = rel[rel["method"] == "clean"].iloc[0]
    assert clean["reliability"] == pytest.approx(clean["expected_reliability"], abs=0.12)
    emis = load_table(out, "i1_emi")
    assert set(emis["percentile"]) == {50.0, 75.0, 80.0} and len(emis) == 3 * 2 * 3 * 3 * 160
    # fewer visible pixels, lower accuracy on EMIs (mean over models and methods)
    by_p = emis.groupby("percentile")["i1"].mean()
    assert by_p[50.0] > by_p[80.0]
    assert set(load_table(out, "best_method")["method"]) == {"saliency", "gradcam"}
    assert {"config_hash", "seed", "experiment"} <= set(ranking.columns)
    from xaibench.report.experiment import build_experiment_report

    page = build_experiment_report(out).read_text()
    for needle in ("SIMULATED OBSERVERS", "Model consistency", "Best-method proxy", "Best-method claim", "ground-truth check", "EMIs of"):
        assert needle in page


def test_maps_config_errors(tmp_path, digit_models):
    with pytest.raises(InputError, match="at least two"):
        run_experiment("maps", _config({"m0": digit_models["m0"]}), tmp_path / "a")
    with pytest.raises(UnknownNameError, match="saliency"):
        run_experiment("maps", _config(digit_models, methods={"salency": {}}), tmp_path / "b")
    with pytest.raises(InputError, match="simulate = 'm9' is not a model label"):
        run_experiment("maps", _config(digit_models, observers={"x": {"simulate": "m9"}}), tmp_path / "c")
    with pytest.raises(InputError, match=r"each must be a number in \[0, 100\]"):
        run_experiment("maps", _config(digit_models, percentiles=[50, 120]), tmp_path / "d")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_maps_recorded_trials_missing_file_is_named(tmp_path, digit_models, capsys):
    cfg = tmp_path / "maps.toml"
    models = "\n".join(f'[models.{k}]\nspec = "{v}"' for k, v in digit_models.items())
    cfg.write_text(f'[data]\nspec = "builtin:digits"\nn = 40\n{models}\n[methods.saliency]\n'
                   f'[observers.humans]\nclean = "nowhere.csv"\n')
    assert main(["experiment", "maps", str(cfg), "--out", str(tmp_path / "e")]) == 2
    assert "[observers.humans]: behaviour file not found: nowhere.csv" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def _proxy(medians: dict[str, float], splits: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"target": "t", "reference": "r", "method": m, "split": k,
                          "proxy": v + 0.01 * rng.standard_normal()} for m, v in medians.items() for k in range(splits)])


def test_a_best_method_claim_contradicted_by_its_ground_truth_is_not_highlighted():
    from xaibench.experiments.maps import best_method_claim

    proxy = _proxy({"input_x_gradient": 0.8, "saliency": 0.5, "gradcam": 0.3, "occlusion": 0.2, "rise": 0.1})
    agree = pd.DataFrame({"method": ["input_x_gradient", "saliency", "gradcam", "occlusion", "rise"],
                          "agreement": [0.1, 0.2, 0.3, 0.4, 0.5]})  # the ground truth ranks the methods in reverse
    claim = best_method_claim(proxy, agree)
    assert claim["best"] == "input_x_gradient" and claim["separated"] and claim["contradicted"]
    assert not claim["highlight"] and "contradicts the proxy" in claim["text"]
    assert claim["check"].estimate == pytest.approx(-1.0) and claim["check"].n == 5
    # the same proxy confirmed by the ground truth: highlighted, with its interval and runner-up
    confirmed = best_method_claim(proxy, agree.assign(agreement=agree["agreement"][::-1].to_numpy()))
    assert confirmed["highlight"] and confirmed["runner_up"] == "saliency" and "runner-up saliency" in confirmed["text"]
    # two methods the half-splits cannot tell apart: not highlighted either
    a = [0.5, 0.6, 0.4, 0.55, 0.45, 0.5, 0.52, 0.48]
    b = [0.599, 0.499, 0.449, 0.399, 0.549, 0.479, 0.499, 0.519]  # per split above and below a
    close = best_method_claim(pd.DataFrame({"target": "t", "reference": "r", "method": ["a"] * 8 + ["b"] * 8,
                                            "split": list(range(8)) * 2, "proxy": a + b}), None)
    assert not close["separated"] and not close["highlight"] and "not separated" in close["text"]


def test_a_best_model_is_claimed_only_when_its_interval_clears_the_runner_up():
    from xaibench.experiments.maps import best_model_claims

    ranking = pd.DataFrame({"observer": ["h"] * 3 + ["k"] * 2, "model": ["a", "b", "c", "a", "b"],
                            "consistency": [0.9, 0.5, 0.4, 0.8, 0.7], "low": [0.8, 0.4, 0.3, 0.6, 0.5],
                            "high": [1.0, 0.6, 0.5, 0.9, 0.85]})
    claims, rows = best_model_claims(ranking)
    assert rows == [0]  # observer h: [0.8, 1.0] above [0.4, 0.6]; observer k: [0.6, 0.9] overlaps [0.5, 0.85]
    assert claims[0].startswith("Best model for h: a 0.900 [0.800, 1.000]; runner-up b")
    assert claims[1].startswith("No best model for k")
