"""`xaibench metrics`: every registered metric with category, direction, range, cost and parameters."""

from __future__ import annotations

import inspect

import pytest

from xaibench.cli import main
from xaibench.metrics import METRICS


def test_lists_every_metric_with_its_metadata(capsys) -> None:
    assert main(["metrics"]) == 0
    text = capsys.readouterr().out
    names = {m.info.name for _, m in METRICS.items()}
    blocks = {b.split("  ", 1)[0]: b for b in text.strip().split("\n\n")}
    assert set(blocks) == names
    deletion = blocks["deletion"]
    assert "faithfulness, lower is better, range [0, inf]; cost per image: steps + 1 forwards" in deletion
    defaults = inspect.signature(METRICS.get("deletion").fn).parameters
    assert f"steps={defaults['steps'].default!r}" in deletion and "normalize='original'" in deletion
    assert "model=" not in deletion and "attributions=" not in deletion  # the shared vocabulary is not a parameter
    assert "needs masks" in blocks["pointing_game"]


def test_one_metric_a_category_and_unknown_names(capsys) -> None:
    assert main(["metrics", "road"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("road  ") and out.count("\n\n") == 0  # one block
    assert main(["metrics", "--category", "randomisation"]) == 0
    out = capsys.readouterr().out
    assert "model_parameter_randomisation" in out and "random_logit" in out and "deletion" not in out
    assert main(["metrics", "delet"]) == 2
    assert "Did you mean 'deletion'" in capsys.readouterr().err
    assert main(["metrics", "--category", "faith"]) == 2
    assert "faithfulness" in capsys.readouterr().err


def test_methods_marks_the_controls(capsys) -> None:
    assert main(["methods"]) == 0
    heads = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line and not line[0].isspace()}
    marked = {name for name, line in heads.items() if "[control:" in line}
    assert marked == {"random", "sobel"}
