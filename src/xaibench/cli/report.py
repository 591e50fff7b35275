"""`xaibench report DIR`: write DIR/report.html for a finished (or partial) run or an experiment
directory; on a folder that holds several runs (e.g. the demo's ``runs/demo``), list them and write
the report of each."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run directory (or of every run in a folder)",
        description="Write DIR/report.html: summary and verdicts, ranking with confidence intervals, reliability "
        "(Krippendorff's alpha), curves, score distributions, a gallery of every method on the same images, sanity "
        "checks, human alignment, provenance. If DIR holds runs in sub-folders (as `xaibench demo` writes), "
        "list them and write a report for each.",
    )
    p.add_argument("dir", metavar="DIR", help="run directory written by `xaibench run`, or a folder of them")
    p.add_argument("--export", metavar="DEST",
                   help="also write every table as CSV and LaTeX (booktabs) and every figure as SVG and PDF at print "
                   "size into DEST (a folder of runs: DEST/<run>/)")
    p.set_defaults(func=handle)


def _export(source: Path, dest: Path) -> None:
    from xaibench.report.export import export

    written = export(source, dest)
    print(f"exported {len(written)} files (CSV, LaTeX, SVG, PDF) to {dest}")


def find_runs(folder: Path) -> list[Path]:
    """The run directories (holding a manifest) at any depth below `folder`, in path order."""
    from xaibench.runner.layout import MANIFEST

    return sorted(p.parent for p in folder.rglob(MANIFEST))


def handle(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError, XaibenchError
    from xaibench.experiments.base import MANIFEST as EXPERIMENT
    from xaibench.report import build_report
    from xaibench.runner.layout import MANIFEST, read_manifest

    folder = Path(args.dir)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a run directory written by `xaibench run`")
    if (folder / MANIFEST).exists() or (folder / EXPERIMENT).exists():
        if (folder / MANIFEST).exists():
            print(f"report written to {build_report(folder)}")
        else:
            from xaibench.report.experiment import build_experiment_report

            print(f"report written to {build_experiment_report(folder)}")
        if args.export:
            _export(folder, Path(args.export))
        return 0
    runs = find_runs(folder)
    if not runs:
        raise InputError(f"{folder} holds no run (no {MANIFEST} in it or below); create one with `xaibench run`")
    print(f"{folder} holds {len(runs)} runs:")
    failed = 0
    for run in runs:
        manifest = read_manifest(run) or {}
        name = manifest.get("config", {}).get("name") or run.name
        done = len(list((run / "shards").glob("shard-*.parquet")))
        state = f"{done} of {manifest.get('n_shards', '?')} shards"
        try:
            path = build_report(run)
        except XaibenchError as err:
            failed += 1
            print(f"  {run}  ({name}; {state}): no report: {err}")
            continue
        print(f"  {run}  ({name}; {state}): {path}")
        if args.export:
            _export(run, Path(args.export) / run.relative_to(folder))
    return 2 if failed == len(runs) else 0
