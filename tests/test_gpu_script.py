"""The GPU check script (benchmarks/gpu.py) in its CPU mode: the same code paths at tiny sizes."""

from __future__ import annotations

import json

from conftest import REPO


def test_gpu_script_quick_cpu_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    header = report["header"]
    assert header["device"] == "cpu"
    assert header["command"] == f"python -m benchmarks.gpu --device cpu --quick --out {out}"
    assert header["torch"] and header["date"].endswith("UTC") and header["sizes"]["n"] == gpu.QUICK.n
    assert report["device_tests"]["returncode"] == 0 and "passed" in report["device_tests"]["summary"]
    # the same seeded run twice on one device: every row bitwise the same
    assert report["same_rows"]["rows"] == gpu.QUICK.rows_n * 3 * 4 and report["same_rows"]["max_abs_diff"] == 0.0
    rows = {(r["section"], r["item"], r["implementation"]): r for r in report["timings"]}
    for section, items in {"metrics": ("deletion", "insertion", "road"),
                           "explainers": ("gradcam", "integrated_gradients", "smoothgrad"),
                           "training": ("baseline", "fp", "ap")}.items():
        for item in items:
            ours = "xaibench.training.train" if section == "training" else "xaibench"
            assert rows[section, item, ours]["seconds"] > 0 and rows[section, item, ours]["peak_mib"] >= 0
    # oracles among the timed items: the facade computes the same AUC as the metric, our IG and
    # Grad-CAM are Captum's, bfloat16 stays within the documented 5 %
    facade = "per-image loop: compat.ExplanationMetrics"
    assert rows["metrics", "deletion", facade]["agreement"] < 1e-5
    assert rows["metrics", "insertion", facade]["agreement"] < 1e-5
    assert rows["explainers", "integrated_gradients", "Captum"]["agreement"] < 1e-5
    assert rows["explainers", "gradcam", "Captum"]["agreement"] < 1e-5
    assert rows["metrics", "deletion", "xaibench, autocast bfloat16"]["agreement"] < 0.05
    # Quantus 0.6.0's ROAD indexes H*W masks with C*H*W indices: recorded as not running, not a failure
    assert rows["metrics", "road", "Quantus 0.6.0 ROAD (per image)"]["note"].startswith("does not run")
    assert report["failures"] == []
    assert "| metrics | deletion | xaibench |" in capsys.readouterr().out
