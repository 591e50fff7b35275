"""`xaibench conformance`: every side-by-side case holds (or stays within its documented difference) with
the references installed here, and docs/conformance.md is the table the command writes."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from xaibench.cli import main
from xaibench.conformance import CASES, DIFFERS, DOCUMENTED, HOLDS, NOT_INSTALLED, check, conformance, markdown


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_agrees_with_its_reference(case):
    row = check(case)
    assert row.status in (HOLDS, DOCUMENTED, NOT_INSTALLED), row
    assert (row.status == DOCUMENTED) == bool(case.difference) or row.status == NOT_INSTALLED


def _without_differences(page: str) -> list[list[str]]:
    """The table's rows without the max-difference column (floating-point noise differs by machine)."""
    rows = [line.split(" | ") for line in page.splitlines() if line.startswith("| `")]
    return [row[:4] + row[5:] for row in rows]


def test_committed_page_is_up_to_date():
    committed = (REPO / "docs" / "conformance.md").read_text()
    fresh = markdown(conformance())
    assert committed.split("| name |")[0] == fresh.split("| name |")[0]
    assert _without_differences(committed) == _without_differences(fresh), (
        "docs/conformance.md is stale: regenerate it with `xaibench conformance --markdown docs/conformance.md`")


def test_cli_json_and_exit_status(capsys, monkeypatch):
    import xaibench.conformance as conf

    monkeypatch.setattr(conf, "CASES", CASES[:2])
    assert main(["conformance", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [c.name for c in CASES[:2]] and rows[0]["status"] == HOLDS
    broken = conf.Case("broken", "krippendorff", "a wrong answer", 0.0, lambda: (conf.np.zeros(2), conf.np.ones(2)))
    monkeypatch.setattr(conf, "CASES", (broken,))
    assert main(["conformance"]) == 1
    assert DIFFERS in capsys.readouterr().out
