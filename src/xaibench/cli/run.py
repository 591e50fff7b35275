"""`xaibench run CONFIG --out DIR [--resume] [--device D]`: run a benchmark config."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a benchmark config (TOML) into a results directory",
        description="Run every method x metric of a TOML config on its images; results go to DIR as "
        "sharded Parquet (read them with xaibench.load_results(DIR)).",
    )
    p.add_argument("config", help="TOML config file")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in DIR (same config only)")
    p.add_argument("--device", default=None, help="device override, e.g. cpu or cuda:0 (not part of the config hash)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.runner import run
    from xaibench.store import load_results

    out = run(args.config, args.out, resume=args.resume, device=args.device)
    rows = load_results(out)
    print(f"{len(rows)} rows in {out} (load them with xaibench.load_results({str(out)!r}))")
    return 0
