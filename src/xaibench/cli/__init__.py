"""The `xaibench` command. Each sub-command lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib

from xaibench import __version__
from xaibench.errors import exit_status

COMMANDS = ("methods", "metrics", "explain", "plan", "run", "train", "finetune", "report", "reliability", "experiment", "demo", "harmony",
            "conformance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench",
        description="Measure how good the explanations of image classifiers are.",
    )
    parser.add_argument("--version", action="version", version=f"xaibench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"xaibench.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))
