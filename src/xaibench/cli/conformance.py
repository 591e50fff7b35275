"""`xaibench conformance [--json | --markdown PATH]`: xaibench side by side with the reference libraries
installed here (see docs/conformance.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "conformance",
        help="run xaibench's metrics and explainers side by side with Quantus, Captum, krippendorff, ...",
        description="Run every conformance case (xaibench.conformance): xaibench and the reference implementation "
        "on the same seeded inputs. One row each: name, reference and version, case, max difference, tolerance, "
        "status (holds, documented difference, not installed, differs). Exit status 1 when a case differs.",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as JSON (NaN as null)")
    out.add_argument("--markdown", metavar="PATH", help="write the documentation page (docs/conformance.md) to PATH")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xaibench.conformance import DIFFERS, conformance, format_difference, markdown

    rows = conformance()
    if args.json:
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(r).items()}
                   for r in rows]
        print(json.dumps(records, indent=2))
    elif args.markdown:
        Path(args.markdown).write_text(markdown(rows))
        print(f"wrote {args.markdown}")
    else:
        cells = [("name", "reference", "version", "case", "max diff", "tol", "status")]
        cells += [(r.name, r.reference, r.version, r.case, format_difference(r.max_difference), format_difference(r.tolerance),
                   f"{r.status}: {r.note}" if r.note else r.status) for r in rows]
        widths = [min(max(len(c[i]) for c in cells), 44) for i in range(len(cells[0]) - 1)]
        for c in cells:
            print("  ".join(v[:w].ljust(w) for v, w in zip(c, widths)) + "  " + c[-1])
    return 1 if any(r.status == DIFFERS for r in rows) else 0
