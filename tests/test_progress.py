"""Progress output and the planned cost: declared passes evaluated, cost-weighted ETA, plain
lines outside a terminal, the metric named in a terminal, Ctrl-C's resume command."""

from __future__ import annotations

import io
import json

import pytest

import xaibench
from xaibench.passes import Passes
from xaibench.runner import parse_config, run
from xaibench.runner import bench, layout, progress as progress_mod
from xaibench.runner.cost import Cost, evaluate_cost, method_cost, metric_cost, pair_cost, plan_costs
from xaibench.runner.progress import RunProgress, format_seconds

# --- the cost formulas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passes", "env", "want"),
    [
        (Passes(forwards="steps + 1"), {"steps": 10}, Cost(forwards=11)),
        (Passes(forwards="1", backwards="1"), {}, Cost(forwards=1, backwards=1)),
        (Passes(forwards="n_samples + 1", explanations="n_samples + 1"), {"n_samples": 4},
         Cost(forwards=5, explanations=5)),
        (Passes(forwards="2 * (steps + 1)"), {"steps": 3}, Cost(forwards=8)),
        (Passes(forwards="(len(percentages) + 1) * (2 if lerf else 1)", note="+ one sparse solve per image"),
         {"percentages": [0.1, 0.5], "lerf": True}, Cost(forwards=6)),
        (Passes(forwards="ceil(H * W / features_per_step) + 1"), {"H": 4, "W": 5, "features_per_step": 3},
         Cost(forwards=8)),
        (Passes(forwards="min(r, ceil(H / p) * floor(W // p)) + 1"), {"r": 100, "H": 5, "W": 7, "p": 2},
         Cost(forwards=10)),
        (Passes(forwards="S + 1", note="S superpixels"), {"S": 9}, Cost(forwards=10)),
        (Passes(note="maps of mosaics"), {}, Cost()),
        (Passes(explanations="L + 1"), {"L": 11}, Cost(explanations=12)),
    ],
)
def test_evaluate_cost(passes, env, want):
    assert evaluate_cost(passes, env) == want


def test_unknown_names_are_listed_not_guessed():
    cost = evaluate_cost(Passes(forwards="1 + K", backwards="1", note="K = channels of the layer"), {})
    assert cost == Cost(backwards=1, unknown=("1 + K forwards",))
    assert "unknown: 1 + K forwards" in str(cost)
    assert evaluate_cost(Passes(forwards="steps + 1"), {"steps": None}).unknown == ("steps + 1 forwards",)


def test_passes_read_as_text_and_name_what_they_use():
    assert str(Passes(forwards="1", backwards="1")) == "1 forward, 1 backward"
    assert str(Passes(forwards="n + 1", explanations="n + 1")) == "n + 1 forwards, n + 1 explanations"
    assert str(Passes(forwards="1 + K", note="K = channels")) == "1 + K forwards (K = channels)"
    assert str(Passes()) == "no model passes"
    assert Passes(forwards="ceil(H / patch) * W", explanations="L + 1").names() == {"H", "patch", "W", "L"}


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "x.y", "x ** 2", "[1][0]", "f(1)",
                                  "max(*xs)", "ceil(x=1)", "1 forwards", "lambda: 1"])
def test_passes_refuse_anything_but_arithmetic(text):
    with pytest.raises((ValueError, SyntaxError)):
        Passes(forwards=text)


def test_every_declared_count_names_only_parameters_and_sizes():
    """A misspelt name in a declared count would silently become an unknown term: each name is a
    parameter of the method or metric, or one of the sizes the planner fills in."""
    import inspect

    from xaibench.explainers import METHODS
    from xaibench.metrics import METRICS
    from xaibench.runner.config import method_factory

    sizes = {"H", "W", "F", "features", "S", "L", "K"}
    entries = [(n, METHODS.get(n).cost, method_factory(METHODS.get(n))) for n in METHODS]
    entries += [(n, METRICS.get(n).info.cost, METRICS.get(n).fn) for n in METRICS]
    for name, passes, fn in entries:
        assert passes.names() <= sizes | set(inspect.signature(fn).parameters), name


def test_a_cost_in_words_is_refused_at_declaration():
    from xaibench.explainers.base import register
    from xaibench.metrics.base import MetricInfo

    with pytest.raises(TypeError, match="cost must be a Passes"):
        MetricInfo("m", "faithfulness", True, (0.0, 1.0), ("model",), "steps + 1 forwards")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost must be a Passes"):
        register("some_method", cost="1 forward", resolution="input")  # type: ignore[arg-type]


def test_method_metric_and_pair_costs():
    assert method_cost("integrated_gradients", {"steps": 8}) == Cost(forwards=8, backwards=8)
    assert metric_cost("deletion", {"steps": 10}) == Cost(forwards=11)
    own = metric_cost("max_sensitivity", {"n_samples": 4})
    assert own == Cost(forwards=5, explanations=5)
    pair = pair_cost(method_cost("saliency"), own)  # 5 own forwards + 5 saliency explanations (1 fwd + 1 bwd)
    assert pair == Cost(forwards=10, backwards=5) and pair.units == 20
    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    mprt = metric_cost("model_parameter_randomisation", {"layers": "blocks"}, model=model)
    assert mprt == Cost(explanations=8)  # 7 blocks + the original explanation


def test_the_runner_randomises_blocks_by_default_and_plans_their_cost():
    raw = {"model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits"},
           "methods": {"saliency": {}}, "metrics": {"model_parameter_randomisation": {}, "deletion": {"steps": 9}}}
    cfg = parse_config(raw)
    assert cfg.metrics[0].params == {"layers": "blocks"}
    assert cfg.raw["metrics"]["model_parameter_randomisation"]["layers"] == "blocks"  # in the hash
    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    rows = {r.label: r for r in plan_costs(cfg, image_size=(32, 32), model=model)}
    assert rows["saliency"].units == 3 and rows["deletion"].units == 10
    assert rows["model_parameter_randomisation"].units == 8 * 3


def test_blocks_are_randomised_as_wholes():
    import torch
    from torch import nn

    from xaibench.explainers.gradient import SaliencyExplainer
    from xaibench.metrics.randomisation import model_parameter_randomisation

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.stage = nn.Conv2d(3, 3, 1), Block()
            self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.pool(self.stage(self.stem(x))).flatten(1))

    net = Net().eval()
    calls = []
    x = torch.rand(2, 3, 8, 8)
    result = model_parameter_randomisation(net, x, torch.tensor([0, 1]), SaliencyExplainer(net), layers="blocks",
                                           randomise=lambda layer, gen: calls.append(layer))
    assert result.params["layers"] == ["head", "stage", "stem"] and result.curves.shape == (2, 3)
    assert calls == [net.head, net.stage.conv, net.stage.bn, net.stem]  # the block's layers together, one step


# --- progress ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_weighs_steps_by_their_declared_cost(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    weights = {("m", None): 1.0, ("m", "cheap"): 1.0, ("m", "dear"): 98.0}
    p = RunProgress("r", weights, {0: 1}, 1, stream=io.StringIO(), terminal=False)
    p.step(0, "m", None, False)
    clock.now = 1.0
    p.step(0, "m", None, True)
    # One unit of 100 took a second: 99 s to go (counting steps as equal would say 2 s).
    assert p.eta() == pytest.approx(99.0)


def test_plain_lines_outside_a_terminal_at_a_modest_rate(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    stream = io.StringIO()
    weights = {("grad", None): 1.0, ("grad", "deletion"): 3.0}
    p = RunProgress("bench", weights, {1: 4, 2: 4, 3: 4}, 4, done_before=1, stream=stream, terminal=False,
                    interval=30)
    for shard, t in ((1, 0.0), (2, 10.0), (3, 40.0)):
        clock.now = t
        p.step(shard, "grad", None, False)
        p.step(shard, "grad", None, True)
        p.step(shard, "grad", "deletion", False)
        clock.now = t + 5
        p.step(shard, "grad", "deletion", True)
        if t < 40:
            p.shard_done()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "bench: shard 2 of 4 | grad / maps | elapsed 0s | ETA ?"
    # Ten seconds later nothing; after the interval the current step, elapsed time and the ETA
    # (at 40 s: 2 of 3 shards' weight done -> 20 s to go).
    assert lines[1:] == ["bench: shard 4 of 4 | grad / maps | elapsed 40s | ETA 20s"]
    p.shard_done()
    assert stream.getvalue().splitlines()[2] == "bench: 4 of 4 shards done | elapsed 45s"


def test_the_terminal_bar_names_the_metric():
    stream = io.StringIO()
    p = RunProgress("bench", {("grad", None): 1.0, ("grad", "deletion"): 3.0}, {0: 2}, 1, stream=stream, terminal=True)
    p.step(0, "grad", "deletion", False)
    assert "bench: shard 1/1 grad / deletion" in stream.getvalue()
    p.shard_done()
    p.close()
    assert "bench: 1 of 1 shards done" in stream.getvalue()


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 61, 3600 * 2 + 7 * 60)] == ["0s", "59s", "1m01s", "2h07m"]


BASE = {
    "name": "prog",
    "shard_size": 2,
    "model": {"spec": "builtin:digits-cnn"},
    "data": {"spec": "builtin:digits", "n": 4},
    "methods": {"grad": {"method": "saliency"}},
    "metrics": {"deletion": {"steps": 2}},
}


def test_a_run_outside_a_terminal_prints_the_plan_and_plain_progress(tmp_path, capsys):
    run(parse_config(BASE), tmp_path / "run")
    err = capsys.readouterr().err
    assert "planned cost for 4 images" in err and "deletion" in err
    assert "prog: shard 1 of 2 | grad / maps | elapsed" in err
    assert "prog: 2 of 2 shards done" in err
    assert "\r" not in err  # no bar
    layout.results_path(tmp_path / "run", 1).unlink()
    run(parse_config(BASE), tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    assert "planned cost for 2 images" in err and "prog: shard 2 of 2 | grad / maps" in err


def test_ctrl_c_says_how_many_shards_are_saved_and_how_to_resume(tmp_path, monkeypatch, capsys):
    from xaibench.cli import main

    config = tmp_path / "bench.toml"
    config.write_text("\n".join([
        'name = "prog"', "shard_size = 2",
        "[model]", 'spec = "builtin:digits-cnn"', "[data]", 'spec = "builtin:digits"', "n = 6",
        "[methods.grad]", 'method = "saliency"', "[metrics.deletion]", "steps = 2"]) + "\n")
    real, calls = bench.execute_shard, []

    def interrupted_second(spec, progress=None):
        calls.append(spec.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec, progress)

    monkeypatch.setattr(bench, "execute_shard", interrupted_second)
    out = tmp_path / "my run"
    assert main(["run", str(config), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "1 of 3 shards are saved" in err
    assert f"xaibench run {config} --out '{out}' --resume" in err
    monkeypatch.setattr(bench, "execute_shard", real)
    assert main(["run", str(config), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["n_shards"] == 3
    # Interrupted while checking a changed config to --overwrite the run: the old run is untouched.
    config.write_text(config.read_text().replace("steps = 2", "steps = 3"))
    monkeypatch.setattr(bench, "_preflight", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--overwrite"]) == 130
    assert "interrupted before the run started; nothing was saved" in capsys.readouterr().err
    assert len(xaibench.load_results(out)) == 6
