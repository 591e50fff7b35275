"""`xaibench experiment NAME CONFIG --out DIR [--resume | --overwrite]` and `xaibench experiment --list`."""

from __future__ import annotations

import argparse
import shlex
import sys

from xaibench.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a paper's multi-step experiment recipe (train, benchmark, analyse, report)",
        description="Run the recipe NAME with a TOML config into DIR: each step writes its outputs to DIR "
        "and is skipped on --resume once done; DIR/report.html is written at the end. "
        "CONFIG may name a shipped example (experiment-spurious). `xaibench experiment --list` lists the "
        "recipes and the paths of their examples.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="recipe name (see --list)")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="TOML config of the recipe")
    p.add_argument("--out", metavar="DIR", help="experiment directory")
    p.add_argument("--list", action="store_true", help="list the recipes and their example configs")
    p.add_argument("--resume", action="store_true", help="finish an interrupted experiment in DIR")
    p.add_argument("--overwrite", action="store_true", help="delete what DIR holds and start again")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.experiments import recipes, run_experiment
    from xaibench.config import EXAMPLES

    if args.list:
        for _, recipe in recipes().items():
            example = f"  (example: {EXAMPLES / recipe.example})" if recipe.example else ""
            print(f"{recipe.name:<18} {recipe.summary}{example}")
        return 0
    if not (args.name and args.config and args.out):
        raise InputError("usage: xaibench experiment NAME CONFIG --out DIR (or --list)")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    from xaibench.report.experiment import build_experiment_report

    try:
        out = run_experiment(args.name, args.config, args.out, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"xaibench: interrupted; {_saved(args.out)} Finish it with:\n"
              f"  xaibench experiment {shlex.quote(args.name)} {shlex.quote(args.config)} "
              f"--out {shlex.quote(args.out)} --resume", file=sys.stderr)
        return 130
    print(f"report written to {build_experiment_report(out)}")
    return 0


def _saved(out: str) -> str:
    """How many steps of the experiment in `out` are committed (kept by --resume)."""
    from xaibench.experiments import ExperimentDir

    try:
        manifest = ExperimentDir(out).manifest
    except InputError:
        return "nothing was saved."
    return f"{len(manifest.get('steps', {}))} of {len(manifest.get('plan', []))} steps are saved in {out}."
