"""`xaibench report DIR`: write DIR/report.html for a finished (or partial) run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run directory",
        description="Write DIR/report.html: ranking with confidence intervals, reliability (Krippendorff's "
        "alpha), curves, score distributions, heatmap galleries, sanity checks, human alignment, provenance.",
    )
    p.add_argument("dir", metavar="DIR", help="run directory written by `xaibench run`")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.report import build_report

    print(f"report written to {build_report(args.dir)}")
    return 0
