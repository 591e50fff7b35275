"""`build_experiment_report(DIR)` -> DIR/report.html for an experiment directory: the recipe's section
(tables, and figures it describes as data: `Plot` blocks drawn here) with the run's provenance, in the
style of the run report. Provenance columns are shown once, at the end, not in every table."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib.pyplot as plt

from xaibench.experiments import ExperimentDir, Plot, Table, Text, recipes
from xaibench.experiments.base import Block
from xaibench.files import write_text
from xaibench.report.html import CSS, html_table
from xaibench.report.plots import EXPERIMENT_PLOTS, to_data_uri

PROVENANCE = ("experiment", "config_hash", "seed", "xaibench_version", "torch_version", "python_version", "step")


def _table(block: Table) -> str:
    """The run report's table, without the provenance columns (shown once, at the end); a reason
    column is blank where the value is defined (no reason), never a literal NaN."""
    frame = block.frame.drop(columns=[c for c in PROVENANCE if c in block.frame.columns])
    for column in [c for c in frame.columns if str(c).endswith("reason")]:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
    caption = f'<p class="note">{html.escape(block.caption)}</p>' if block.caption else ""
    return caption + html_table(frame, dict(block.highlight))


def draw(block: Plot) -> plt.Figure:
    """The matplotlib figure of a `Plot` block (its drawer in `EXPERIMENT_PLOTS`)."""
    return EXPERIMENT_PLOTS[block.kind](block.data, **block.options)


def render_block(block: Block) -> str:
    """HTML of one report block."""
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Plot):
        caption = html.escape(block.caption)
        img = f'<img class="plot" alt="{caption}" src="{to_data_uri(draw(block))}">'
        return img + (f'<p class="note">{caption}</p>' if caption else "")
    raise TypeError(f"not a report block: {type(block).__name__}")


def build_experiment_report(out: str | Path) -> Path:
    """Write DIR/report.html for the experiment in `out`; returns its path."""
    exp = ExperimentDir(out)
    manifest = exp.manifest
    recipe = recipes().get(manifest["recipe"])
    blocks = recipe.report(exp)
    done, planned = len(manifest.get("steps", {})), len(manifest.get("plan", []))
    partial = (
        f'<p class="bad"><strong>Partial experiment: {done} of {planned} steps finished.</strong> '
        f"Finish it with <code>xaibench experiment {html.escape(recipe.name)} CONFIG --out DIR --resume</code>.</p>"
        if "finished" not in manifest
        else ""
    )
    title = manifest["config"].get("name") or f"{recipe.name} experiment"
    provenance = {k: v for k, v in manifest.items() if k not in ("steps", "config")}
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>
<h1>{html.escape(title)}</h1><p class="note">{html.escape(recipe.summary)}</p>{partial}
<h2>Results</h2>{"".join(render_block(b) for b in blocks)}
<h2>Configuration and provenance</h2>
<pre>{html.escape(json.dumps(manifest["config"], indent=1, sort_keys=True))}</pre>
<pre>{html.escape(json.dumps(provenance, indent=1, sort_keys=True))}</pre>
</main></body></html>"""
    path = Path(out) / "report.html"
    write_text(path, page)
    return path
