"""The documentation runs: every ```python block of README.md and docs/*.md is executed, the blocks of
one file in order in one namespace (as a reader types them), in an empty working directory.

A block that cannot run here (it needs a server or a cluster) is preceded by the line
``<!-- not run: REASON -->``; such blocks are few and listed in `NOT_RUN`, so a new one is a
deliberate change of this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

FENCE = re.compile(r"^(?P<marker><!-- not run: (?P<reason>[^>]*) -->\n)?```python\n(?P<code>.*?)^```$",
                   re.MULTILINE | re.DOTALL)
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = {  # file -> the reasons of its blocks that are not run
    "docs/distributed.md": ["needs a Ray cluster and shared storage"],
}


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, reason not run or None) of every ```python block of `path`."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m["code"], m["reason"]) for m in FENCE.finditer(text)]


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_blocks_not_run_are_the_listed_ones():
    marked = {}
    for path in DOCUMENTS:
        reasons = [reason for _, _, reason in python_blocks(path) if reason is not None]
        if reasons:
            marked[_name(path)] = reasons
    assert marked == NOT_RUN


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)], ids=_name)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for line, code, reason in python_blocks(path):
        if reason is None:
            padded = "\n" * (line - 1) + code  # tracebacks give the line in the document
            exec(compile(padded, _name(path), "exec"), namespace)


def test_site_builds_strictly_offline(tmp_path):
    """`make docs`: the guides and the API reference from the docstrings, every warning an error
    (broken links, unknown references, docstrings mkdocstrings cannot read); no fonts or plugins
    that fetch anything."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "metrics" / "index.html").read_text().count("deletion") > 3
