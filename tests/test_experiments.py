"""The experiment mechanism: plan, commit, skip on resume, redo what was damaged, refuse a changed config."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from xaibench.cli import main
from xaibench.errors import InputError, UnknownNameError
from xaibench.experiments import REQUIRED, Plot, Recipe, Step, Table, Text, load_table, recipes, run_experiment
from xaibench.experiments.base import run_recipe

CALLS: list[str] = []


def _make(ctx):
    CALLS.append("make")
    values = pd.DataFrame({"i": range(ctx.cfg["n"]), "v": [ctx.seed("v", i) % 97 for i in range(ctx.cfg["n"])]})
    ctx.write_table("values", values)


def _total(ctx):
    CALLS.append("total")
    values = ctx.experiment.table("values")
    ctx.write_table("total", pd.DataFrame({"total": [int(values["v"].sum())]}))


def _report(exp):
    return [Text("toy"), Table(exp.table("total")[["total"]], "sum"),
            Plot("bars", exp.table("values")[["v"]], "values")]


TOY = Recipe(
    name="toy-mechanism",
    summary="two steps for the tests",
    schema={"n": ((int,), REQUIRED)},
    plan=lambda cfg: [Step("make", _make), Step("total", _total, needs=("make",))],
    report=_report,
)
if "toy-mechanism" not in recipes():
    recipes().add(TOY.name, TOY)


def test_run_resume_and_redo(tmp_path):
    CALLS.clear()
    out = tmp_path / "exp"
    run_recipe(TOY, TOY.parse({"n": 5, "seed": 3}), out)
    assert CALLS == ["make", "total"]
    first = load_table(out, "total")
    assert {"config_hash", "seed", "experiment", "xaibench_version", "step"} <= set(first.columns)
    with pytest.raises(InputError, match="already holds an experiment"):
        run_recipe(TOY, TOY.parse({"n": 5, "seed": 3}), out)
    CALLS.clear()
    run_recipe(TOY, TOY.parse({"n": 5, "seed": 3}), out, resume=True)
    assert CALLS == []  # everything committed and intact
    # damage the first step's table: it is redone, and so is the step that needs it
    (out / "steps" / "make" / "tables" / "values.parquet").write_bytes(b"broken")
    CALLS.clear()
    run_recipe(TOY, TOY.parse({"n": 5, "seed": 3}), out, resume=True)
    assert CALLS == ["make", "total"]
    pd.testing.assert_frame_equal(load_table(out, "total"), first)
    with pytest.raises(InputError, match="refusing to resume"):
        run_recipe(TOY, TOY.parse({"n": 6, "seed": 3}), out, resume=True)
    CALLS.clear()
    run_recipe(TOY, TOY.parse({"n": 6, "seed": 3}), out, overwrite=True)
    assert CALLS == ["make", "total"] and len(load_table(out, "values")) == 6


def test_one_writer_and_no_foreign_directory(tmp_path):
    from xaibench.runner import layout

    out = tmp_path / "exp"
    with layout.run_lock(out):
        with pytest.raises(InputError, match="is being written by process"):
            run_recipe(TOY, TOY.parse({"n": 2}), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text("{}")
    with pytest.raises(InputError, match="not empty and holds no experiment"):
        run_recipe(TOY, TOY.parse({"n": 2}), tmp_path / "other")
    run_recipe(TOY, TOY.parse({"n": 2}), out)  # the lock was released
    assert not (out / layout.LOCK).exists()


def test_uncommitted_step_is_redone_from_scratch(tmp_path):
    out = tmp_path / "exp"
    boom = Recipe("toy-fail", "fails", {}, lambda cfg: [Step("a", _fail)], lambda exp: [])
    with pytest.raises(RuntimeError):
        run_recipe(boom, boom.parse({}), out)
    manifest = json.loads((out / "experiment.json").read_text())
    assert manifest["steps"] == {} and "finished" not in manifest


def _fail(ctx):
    (ctx.folder / "half.txt").write_text("partial")
    raise RuntimeError("killed")


def test_config_errors_and_unknown_recipe(tmp_path):
    with pytest.raises(InputError, match="unknown key 'nn'.*'n'"):
        TOY.parse({"nn": 3})
    with pytest.raises(InputError, match="missing required key 'n'"):
        TOY.parse({})
    with pytest.raises(UnknownNameError, match="toy-mechanism|toy_mechanism"):
        run_experiment("toy-mechanisn", {"n": 1}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_runs_lists_and_reports(tmp_path, capsys):
    cfg = tmp_path / "toy.toml"
    cfg.write_text("n = 4\nseed = 1\n")
    assert main(["experiment", "toy-mechanism", str(cfg), "--out", str(tmp_path / "e")]) == 0
    page = (tmp_path / "e" / "report.html").read_text()
    assert "two steps for the tests" in page and "<table>" in page and "data:image/png;base64" in page
    assert main(["experiment", "--list"]) == 0
    assert "toy-mechanism" in capsys.readouterr().out
    assert main(["experiment", "toy-mechanism", str(cfg), "--out", str(tmp_path / "e")]) == 2
    assert "already holds an experiment" in capsys.readouterr().err


def test_ctrl_c_says_what_is_saved_and_how_to_resume(tmp_path, capsys):
    cfg = tmp_path / "toy.toml"
    cfg.write_text("n = 3\n")

    def interrupt(ctx):
        raise KeyboardInterrupt

    halting = Recipe("toy-interrupted", "stops at its second step", TOY.schema,
                     lambda c: [Step("make", _make), Step("total", interrupt, needs=("make",))], _report)
    if "toy-interrupted" not in recipes():
        recipes().add(halting.name, halting)
    assert main(["experiment", "toy-interrupted", str(cfg), "--out", str(tmp_path / "e")]) == 130
    err = capsys.readouterr().err
    assert "1 of 2 steps are saved" in err and f"--out {tmp_path / 'e'} --resume" in err


def test_failed_validation_writes_nothing(tmp_path, monkeypatch):
    """A missing data set folder, a missing model file or a device this machine lacks is refused
    before DIR/experiment.json exists, so the corrected config runs in the same folder."""
    from xaibench import devices

    monkeypatch.setattr(devices, "_backend_count", lambda kind: 1 if kind == "cpu" else 0)
    schema = {"n": ((int,), REQUIRED), "data": ((dict,), {}), "models": ((dict,), {})}
    recipe = Recipe("toy-data", "reads a data set", schema, lambda cfg: [Step("make", _make)], _report)
    out = tmp_path / "exp"
    bad = [({"data": {"spec": f"folder:{tmp_path / 'missing'}"}}, InputError, r"config \[data\]: .*does not exist"),
           ({"data": {"spec": "builtin:digts"}}, UnknownNameError, r"config \[data\]: unknown built-in"),
           ({"models": {"a": {"spec": f"file:{tmp_path / 'no.pt'}"}}}, InputError, r"config \[models.a\]: model file"),
           ({"device": "cuda"}, InputError, "device 'cuda' is not available")]
    for extra, error, message in bad:
        with pytest.raises(error, match=message):
            run_recipe(recipe, recipe.parse({"n": 2, **extra}), out)
        assert not (out / "experiment.json").exists()
    (tmp_path / "images" / "a").mkdir(parents=True)
    run_recipe(recipe, recipe.parse({"n": 2, "data": {"spec": f"folder:{tmp_path / 'images'}"}}), out)
    assert (out / "experiment.json").exists()


def _save_model(ctx):
    from xaibench.experiments.base import stored_path
    from xaibench.models import DigitsCNN, save_model

    path = ctx.root / "models" / "cnn" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_model(DigitsCNN().eval(), path, spec="builtin:digits-cnn")
    ctx.write_table("models", pd.DataFrame({"model_path": [stored_path(ctx.root, path)]}))


def _benchmark(ctx):
    from xaibench.experiments.base import located_path
    from xaibench.store import load_results

    path = located_path(ctx.root, ctx.experiment.table("models")["model_path"].iloc[0])
    config = {"shard_size": 2, "model": {"spec": f"file:{path}"}, "data": {"spec": "builtin:digits", "n": 2},
              "methods": {"grad": {"method": "saliency"}}, "metrics": {"deletion": {"steps": 2}}}
    out = ctx.run_benchmark("bench", config)
    if INTERRUPT:
        raise KeyboardInterrupt
    ctx.write_table("scores", load_results(out)[["image_id", "score"]])


INTERRUPT: list[str] = []


def test_a_moved_experiment_resumes(tmp_path):
    """Paths inside the experiment are stored and hashed relative to it: moved after an
    interruption, it resumes at its new place (its benchmark run is resumed, not refused)."""
    import shutil

    from xaibench.runner import parse_config
    from xaibench.config import paths_relative_to

    recipe = Recipe("toy-moved", "a model file and a benchmark of it", {},
                    lambda cfg: [Step("model", _save_model), Step("bench", _benchmark, needs=("model",))], _report)
    INTERRUPT.append("once")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, recipe.parse({}), tmp_path / "a" / "exp")
    INTERRUPT.clear()
    moved = tmp_path / "b" / "deeper" / "exp"
    shutil.move(tmp_path / "a" / "exp", moved)
    run_recipe(recipe, recipe.parse({}), moved, resume=True)
    assert load_table(moved, "models")["model_path"].iloc[0] == "models/cnn/model.pt"
    assert len(load_table(moved, "scores")) == 2
    # the hash sees paths under the root relative to it, everything else as written
    raw = {"model": {"spec": f"file:{moved}/models/m.pt"}, "data": {"spec": "builtin:digits"}, "name": "/abs"}
    with paths_relative_to(moved):
        portable = parse_config({**raw, "methods": {"g": {"method": "saliency"}}, "metrics": {"deletion": {}}}).hash
    with paths_relative_to(tmp_path / "elsewhere"):
        moved_raw = {**raw, "model": {"spec": f"file:{tmp_path}/elsewhere/models/m.pt"}}
        assert parse_config({**moved_raw, "methods": {"g": {"method": "saliency"}}, "metrics": {"deletion": {}}}).hash \
            == portable
