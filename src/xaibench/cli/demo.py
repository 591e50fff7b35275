"""`xaibench demo [--out DIR] [--n N]`: the main job on the built-in digits, no downloads."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="benchmark a normal and a shortcut-learning digits model and write both reports",
        description="Train (or load cached) the built-in digits models, run the shipped demo configs "
        "(methods x metrics of every family), compute reliability statistics and write HTML reports.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default: runs/demo)")
    p.add_argument("--n", type=int, default=None, help="number of images per run (default: the configs' 200)")
    p.add_argument("--device", default=None, help="device override, e.g. cpu or cuda:0")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.demo import run_demo

    run_demo(args.out, n=args.n, device=args.device)
    return 0
