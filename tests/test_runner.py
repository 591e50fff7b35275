"""Benchmark runner: config validation, rows against direct metric calls, provenance, resume after SIGKILL."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import xaibench
from xaibench.errors import InputError, UnknownNameError
from xaibench.runner import load_config, parse_config, run
from xaibench.runner import layout
from xaibench.store import load_curves

# Cheap registered components: a deterministic gradient method, a method with seeded noise,
# a mask metric (used twice, once per mask), a curve metric and a seeded robustness metric.
METHOD_A = "saliency"
METHOD_B = "smoothgrad"
MASK_METRIC = "relevance_mass_accuracy"
CURVE_METRIC = "deletion"
SEEDED_METRIC = "max_sensitivity"

BASE = {
    "name": "tiny",
    "seed": 3,
    "shard_size": 4,
    "explain_batch": 3,
    "model": {"spec": "builtin:digits-spurious-cnn"},
    "data": {"spec": "builtin:digits-spurious", "split": "test", "n": 10},
    "methods": {"grad": {"method": METHOD_A}, "noisy": {"method": METHOD_B, "n_samples": 3}},
    "metrics": {
        "rma_digit": {"metric": MASK_METRIC, "mask": "digit"},
        "rma_square": {"metric": MASK_METRIC, "mask": "square"},
        CURVE_METRIC: {"steps": 4},
        SEEDED_METRIC: {"n_samples": 2},
    },
}


def _cfg(**changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        raw[key] = value
    return raw


def _toml(raw: dict) -> str:
    """A TOML rendering of a (two-level) config dict, for the file-based paths."""
    def value(v):
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section in ("model", "data"):
        lines += [f"[{section}]"] + [f"{k} = {value(v)}" for k, v in raw[section].items()]
    for section in ("methods", "metrics"):
        for label, table in raw[section].items():
            lines += [f"[{section}.{label}]"] + [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error", "pattern"),
    [
        (_cfg(sede=1), InputError, r"unknown key 'sede'. Did you mean 'seed'"),
        (_cfg(data={"spec": "builtin:digits", "nn": 3}), InputError, r"\[data\]: unknown key 'nn'. Did you mean 'n'"),
        (_cfg(methods={"x": {"method": METHOD_A[:-1] + "x"}}), UnknownNameError, rf"\[methods.x\]: unknown method .*Did you mean '{METHOD_A}'"),
        (_cfg(metrics={"delet": {}}), UnknownNameError, r"\[metrics.delet\]: unknown metric 'delet'. Did you mean .*'deletion'"),
        (_cfg(metrics={CURVE_METRIC: {"stepz": 3}}), InputError, r"\[metrics.deletion\]: unknown key 'stepz'. Did you mean 'steps'"),
        (_cfg(metrics={CURVE_METRIC: {"steps": "4"}}), InputError, r"\[metrics.deletion\].steps: expected int"),
        (_cfg(metrics={CURVE_METRIC: {"mask": "digit"}}), InputError, r"does not use human masks"),
        (_cfg(data={"spec": "builtin:digits", "n": "10"}), InputError, r"\[data\].n: expected int, got str"),
        (_cfg(seed=True), InputError, r"config seed: expected int, got bool"),
        (_cfg(target="label_smoothing"), InputError, r"target: must be one of"),
        (_cfg(model={}), InputError, r"\[model\].: missing required key 'spec'|missing required key 'spec'"),
        (_cfg(methods={}), InputError, r"at least one method"),
        (_cfg(metrics={"m": 3}), InputError, r"\[metrics.m\]: expected a table, got int"),
    ],
)
def test_validation_errors(raw, error, pattern):
    with pytest.raises(error, match=pattern):
        parse_config(raw)


def test_config_file_hash_and_canonical_form(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(_toml(BASE))
    cfg = load_config(path)
    assert cfg.hash == parse_config(BASE).hash
    # Defaults filled in, registry names explicit, device excluded: same hash.
    explicit = _cfg(device="cuda:7", target="predicted", max_batch=256)
    explicit["data"] = {**BASE["data"], "seed": 3}
    explicit["methods"] = {**BASE["methods"]}
    assert parse_config(explicit).hash == cfg.hash
    # Any change of substance changes it.
    changed = _cfg()
    changed["metrics"][CURVE_METRIC] = {"steps": 5}
    assert parse_config(changed).hash != cfg.hash
    assert parse_config(cfg.raw).raw == cfg.raw  # canonical form is a fixed point
    (tmp_path / "bad.toml").write_text("seed = \n")
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")


# --- a real run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    run(parse_config(BASE), out)
    return out


def test_rows_match_direct_metric_calls(finished):
    from xaibench.data import collate, load_dataset
    from xaibench.metrics import METRICS
    from xaibench.models import model_hash

    df = xaibench.load_results(finished)
    manifest = layout.read_manifest(finished)
    n = BASE["data"]["n"]
    assert len(df) == n * len(BASE["methods"]) * len(BASE["metrics"])
    assert not df.duplicated(["image_id", "method", "metric"]).any()
    assert sorted(df["shard"].unique()) == [0, 1, 2]

    # Reference: the same images, the model's predictions, maps and metric calls made by hand.
    model = xaibench.load_model(BASE["model"]["spec"]).eval()
    ds = load_dataset(BASE["data"]["spec"], split="test")
    batch = collate([ds[i] for i in manifest["positions"]])
    with torch.no_grad():
        preds = model(batch.images).argmax(1)
    maps = xaibench.explainer(METHOD_A, model)(batch.images, preds)
    rma = METRICS.get(MASK_METRIC).fn
    grad = df[df["method"] == "grad"].set_index(["metric", "image_id"])
    for mask in ("digit", "square"):
        want = rma(attributions=maps, masks=batch.masks[mask], **_extra(rma, model, batch, preds))
        got = grad.loc[f"rma_{mask}"].loc[list(batch.ids), "score"].to_numpy()
        torch.testing.assert_close(torch.tensor(got), want.scores.double(), rtol=1e-5, atol=1e-6)
        assert set(grad.loc[f"rma_{mask}", "mask"]) == {mask}
    first = df.drop_duplicates("image_id").set_index("image_id").loc[list(batch.ids)]
    assert first["target"].tolist() == preds.tolist()
    assert first["label"].tolist() == batch.labels.tolist()
    assert (first["correct"] == (first["prediction"] == first["label"])).all()

    # Provenance on every row.
    import captum

    prov = {
        "config_hash": parse_config(BASE).hash,
        "seed": 3,
        "model_spec": BASE["model"]["spec"],
        "model_hash": model_hash(model),
        "dataset_spec": BASE["data"]["spec"],
        "xaibench_version": xaibench.__version__,
        "torch_version": torch.__version__,
        "captum_version": captum.__version__,
    }
    for column, value in prov.items():
        assert (df[column] == value).all(), column
    # Class names travel with the data set; parameters as run and per-image wall time per (shard, method, metric).
    assert (first["label_name"] == first["label"].astype(str)).all()
    assert (first["prediction_name"] == first["prediction"].astype(str)).all()
    assert (first["target_name"] == first["target"].astype(str)).all()
    assert df["same_as"].isna().all()  # the digits CNN has ReLUs: no method equals another
    deletion = df[df["metric"] == CURVE_METRIC]
    params = {json.loads(p)["steps"] for p in deletion["params"]}
    assert params == {4} and json.loads(deletion["params"].iloc[0])["seed"] is not None
    assert (df["seconds"] >= 0).all() and df["seconds"].notna().all()
    assert (df.groupby(["shard", "method", "metric"])["seconds"].nunique() == 1).all()
    # Undefined scores carry a reason; defined ones none.
    assert (df["score"].isna() == df["nan_reason"].notna()).all()
    # Curves: one per image and method for the curve metric, steps + 1 points.
    curves = load_curves(finished)
    assert len(curves) == n * len(BASE["methods"]) and {len(c) for c in curves["curve"]} == {5}


def _extra(fn, model, batch, preds):
    """Vocabulary words besides attributions/masks that the mask metric takes."""
    info = fn.info
    words = {"model": model, "inputs": batch.images, "targets": preds, "labels": batch.labels}
    return {w: words[w] for w in info.requires if w in words}


def test_existing_run_refused_and_changed_config_refused(finished):
    with pytest.raises(InputError, match="already holds a run.*--resume"):
        run(parse_config(BASE), finished)
    changed = _cfg()
    changed["metrics"][CURVE_METRIC] = {"steps": 3}
    with pytest.raises(InputError, match="refusing to resume"):
        run(parse_config(changed), finished, resume=True)
    # Resuming a finished run is a no-op that keeps the rows.
    before = xaibench.load_results(finished)
    run(parse_config(BASE), finished, resume=True)
    pd.testing.assert_frame_equal(before, xaibench.load_results(finished))


def test_resume_after_sigkill_gives_identical_rows(finished, tmp_path):
    """Kill a real run twice (after its first and second shard), resume, compare with the uninterrupted run."""
    config = tmp_path / "bench.toml"
    config.write_text(_toml(BASE))
    out = tmp_path / "killed"
    code = "import sys; from xaibench.runner import run; run(sys.argv[1], sys.argv[2], resume=True)"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for done in (1, 2):
        proc = subprocess.Popen([sys.executable, "-c", code, str(config), str(out)], env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "shards").glob("shard-*.parquet"))) >= done:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    n_done = len(list((out / "shards").glob("shard-*.parquet")))
    assert 1 <= n_done < 3, "the run must have been interrupted after its first shard"
    run(load_config(config), out, resume=True)
    # Identical rows but for the wall time of each metric call.
    pd.testing.assert_frame_equal(xaibench.load_results(out).drop(columns="seconds"),
                                  xaibench.load_results(finished).drop(columns="seconds"))
    pd.testing.assert_frame_equal(load_curves(out), load_curves(finished))
    assert not list(Path(out).rglob("*.tmp"))


def test_resources_are_validated_not_hashed_and_reach_the_ray_tasks():
    from xaibench.runner.ray_executor import RayExecutor

    base = {"model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits"},
            "methods": {"saliency": {}}, "metrics": {"sparseness": {}}}
    plain = parse_config(base)
    sized = parse_config({**base, "resources": {"cpus": 2, "gpus": 0.5, "memory": 2**30}})
    assert plain.hash == sized.hash and sized.resources == {"cpus": 2, "gpus": 0.5, "memory": 2**30}
    spec = SimpleNamespace(config=sized.raw)
    assert RayExecutor()._options([spec]) | {"max_calls": 0} == {
        "num_cpus": 2, "num_gpus": 0.5, "memory": 2**30, "max_retries": 3, "max_calls": 0}
    assert RayExecutor(cpus=4)._options([spec])["num_cpus"] == 4  # an argument wins over the config
    assert RayExecutor()._options([SimpleNamespace(config=plain.raw)])["num_gpus"] == 0  # CPU config
    with pytest.raises(InputError, match=r"\[resources\]\.cpus: must be > 0"):
        parse_config({**base, "resources": {"cpus": 0}})
    with pytest.raises(InputError, match="unknown key 'gpu'"):
        parse_config({**base, "resources": {"gpu": 1}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_device_this_machine_lacks_is_a_clear_error_before_anything_is_written(tmp_path):
    for device, message in (("gpu", "unknown device 'gpu'. Did you mean 'cuda'"), ("cuda", "no cuda device")):
        with pytest.raises(InputError, match=message):
            run(parse_config(BASE), tmp_path / device, device=device)
        assert not (tmp_path / device).exists()


def test_shipped_configs_are_found_by_name(tmp_path, monkeypatch, capsys):
    from xaibench.cli import main
    from xaibench.config import EXAMPLES, example_config
    from xaibench.runner.config import load_config

    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    assert load_config("demo-digits").hash == load_config("demo-digits.toml").hash == load_config(
        EXAMPLES / "demo-digits.toml").hash
    assert example_config("runs/demo-digits") is None and example_config("no-such-config") is None
    with pytest.raises(InputError, match="config file not found: demo-digitz. Did you mean 'demo-digits'"):
        load_config("demo-digitz")
    assert main(["experiment", "--list"]) == 0
    listed = [line.split("(example: ")[1].rstrip(")") for line in capsys.readouterr().out.splitlines()
              if "(example: " in line]
    assert listed and all(Path(path).is_file() for path in listed)
