"""`xaibench plan`: passes per image from the declared costs (checked by hand), totals, the worker
estimate and the command's output."""

from __future__ import annotations

import json
import math

import pytest

from xaibench.cli import main
from xaibench.cli.plan import Calibration, calibrate, cost_table, estimate
from xaibench.runner import parse_config

RAW = {
    "name": "plan",
    "shard_size": 4,
    "model": {"spec": "builtin:digits-cnn"},
    "data": {"spec": "builtin:digits", "split": "test", "n": 10},
    "methods": {"grad": {"method": "saliency"}, "ig": {"method": "integrated_gradients", "steps": 4}},
    "metrics": {
        "deletion": {"steps": 4},
        "max_sensitivity": {"n_samples": 2},
        "pointing_game": {"mask": "digit"},
    },
}
TOML = """
name = "plan"
shard_size = 4
[model]
spec = "builtin:digits-cnn"
[data]
spec = "builtin:digits"
n = 10
[methods.grad]
method = "saliency"
[methods.ig]
method = "integrated_gradients"
steps = 4
[metrics.deletion]
steps = 4
[metrics.max_sensitivity]
n_samples = 2
"""


def _by_pair(rows):
    return {(r["method"], r["metric"]): (r["explanations"], r["forwards"], r["backwards"]) for r in rows}


def test_cost_table_by_hand():
    rows = _by_pair(cost_table(parse_config(RAW), (32, 32), None))
    # maps: saliency 1 forward + 1 backward; integrated gradients `steps` of each
    assert rows[("grad", "(maps)")] == (1.0, 1.0, 1.0)
    assert rows[("ig", "(maps)")] == (1.0, 4.0, 4.0)
    # deletion: steps + 1 forwards, whatever the method
    assert rows[("grad", "deletion")] == (0.0, 5.0, 0.0)
    assert rows[("ig", "deletion")] == (0.0, 5.0, 0.0)
    # max-sensitivity: n_samples + 1 explanations and forwards, each explanation the method's passes
    assert rows[("grad", "max_sensitivity")] == (3.0, 3.0 + 3 * 1, 3.0 * 1)
    assert rows[("ig", "max_sensitivity")] == (3.0, 3.0 + 3 * 4, 3.0 * 4)
    assert rows[("ig", "pointing_game")] == (0.0, 0.0, 0.0)


def test_estimate_prices_passes_and_rounds_of_shards():
    rows = [{"explanations": 1.0, "forwards": 10.0, "backwards": 2.0, "unknown": ""},
            {"explanations": 0.0, "forwards": 5.0, "backwards": 0.0, "unknown": "K forwards"}]
    cal = Calibration("cpu", 0, forward=0.001, backward=0.003, load=2.0, measured=False)
    plan = estimate(rows, cal, n_images=100, shard_size=30, workers=[1, 3, 8], task_overhead=0.5)
    seconds = 100 * (15 * 0.001 + 2 * 0.003)
    assert plan["seconds"] == pytest.approx(seconds)
    assert plan["shards"] == 4
    assert plan["unknown"] == ["K forwards"]
    assert plan["totals"] == {"explanations": 100.0, "forwards": 1500.0, "backwards": 200.0}
    per_shard = seconds / 4
    assert plan["workers"][1] == pytest.approx(2.0 + 4 * (per_shard + 0.5))
    assert plan["workers"][3] == pytest.approx(2.0 + 2 * (per_shard + 0.5))  # ceil(4 / 3) rounds
    assert plan["workers"][8] == pytest.approx(2.0 + 1 * (per_shard + 0.5))


def test_calibration_times_forward_and_backward(tiny_cnn):
    cal = calibrate(tiny_cnn, (16, 16), batch=4, device="cpu", repeats=1)
    assert cal.forward > 0 and cal.backward >= 0 and cal.measured and cal.batch == 4


def test_plan_command_json_and_text(tmp_path, capsys):
    path = tmp_path / "plan.toml"
    path.write_text(TOML)
    assert main(["plan", str(path), "--json", "--forward-ms", "1", "--backward-ms", "2", "--workers", "1,2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 10 and out["shards"] == 3
    per_image_fwd = (1 + 4) + 2 * 5 + (3 + 3) + (3 + 12)  # maps, deletion, max-sensitivity on both methods
    per_image_bwd = (1 + 4) + (3 + 12)
    assert out["totals"]["forwards"] == 10 * per_image_fwd
    assert out["totals"]["backwards"] == 10 * per_image_bwd
    assert out["seconds"] == pytest.approx(10 * (per_image_fwd * 1e-3 + per_image_bwd * 2e-3))
    assert out["workers"]["2"] < out["workers"]["1"]
    assert main(["plan", str(path), "--images", "50000", "--image-size", "32", "--batches", "1", "--pairs"]) == 0
    text = capsys.readouterr().out
    assert "50000 images of 32x32 in 12500 shards" in text and "max_sensitivity" in text and "workers" in text
    assert "per (method, metric) pair" in text and text.count("max_sensitivity") == 3  # summary + 2 pairs


def test_plan_errors(tmp_path, capsys):
    path = tmp_path / "plan.toml"
    path.write_text(TOML)
    assert main(["plan", str(path), "--workers", "1,x"]) == 2
    assert "--workers: expected numbers" in capsys.readouterr().err
    assert main(["plan", str(path), "--forward-ms", "1"]) == 2
    assert "go together" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_plan_on_a_device_this_machine_lacks_is_a_clear_error(tmp_path, capsys, monkeypatch, device):
    from xaibench import devices

    monkeypatch.setattr(devices, "_backend_count", lambda kind: 1 if kind == "cpu" else 0)
    path = tmp_path / "plan.toml"
    path.write_text(TOML)
    assert main(["plan", str(path), "--device", device, "--images", "8", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert f"device '{device}' is not available" in err and "Available: cpu" in err and "Traceback" not in err
