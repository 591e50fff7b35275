"""`xaibench run CONFIG --out DIR [--resume | --overwrite] [--device D] [--executor ray [--address A]]`: run a
benchmark config."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a benchmark config (TOML) into a results directory",
        description="Run every method x metric of a TOML config on its images; results go to DIR as "
        "sharded Parquet (read them with xaibench.load_results(DIR)). The config is checked and tried "
        "on two images before DIR is written.",
    )
    p.add_argument("config", help="TOML config file, or the name of a shipped example (demo-digits)")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish an interrupted run in DIR (same config, model and images; files verified)")
    again.add_argument("--overwrite", action="store_true", help="delete the run in DIR and start it again")
    p.add_argument("--device", default=None, help="device override, e.g. cpu or cuda:0 (not part of the config hash)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: shards one after the other in this process; ray: every shard a Ray task (extra 'ray')")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="with --executor ray: an existing Ray cluster (e.g. auto, ray://head:10001); default: start a "
                   "local one")
    p.set_defaults(func=handle)


def resume_command(args: argparse.Namespace) -> str:
    """The exact command that finishes the run of `args`."""
    words = ["xaibench", "run", args.config, "--out", args.out, "--resume"]
    if args.device:
        words += ["--device", args.device]
    if args.executor != "local":
        words += ["--executor", args.executor] + (["--address", args.address] if args.address else [])
    return shlex.join(words)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xaibench.errors import InputError
    from xaibench.runner import load_config, run
    from xaibench.runner.layout import read_manifest
    from xaibench.store import committed_shards, load_results

    executor = None
    if args.executor == "ray":
        from xaibench.runner.ray_executor import RayExecutor

        executor = RayExecutor(args.address)
    elif args.address is not None:
        raise InputError("--address is the address of a Ray cluster: use it with --executor ray")
    try:
        out = run(args.config, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                  executor=executor)
    except KeyboardInterrupt:
        try:
            manifest = read_manifest(Path(args.out))
            ours = manifest is not None and manifest["config_hash"] == load_config(args.config).hash
        except InputError:
            ours = False
        if not ours:  # before this run wrote its manifest (an older run there is untouched)
            print("xaibench: interrupted before the run started; nothing was saved", file=sys.stderr)
        else:
            print(f"xaibench: interrupted; {committed_shards(args.out)} of {manifest['n_shards']} shards are saved "
                  f"in {args.out}. Finish the run with:\n  {resume_command(args)}", file=sys.stderr)
        return 130
    rows = load_results(out)
    print(f"{len(rows)} rows in {out} (load them with xaibench.load_results({str(out)!r}))")
    return 0
