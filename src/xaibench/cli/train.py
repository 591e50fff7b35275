"""`xaibench train CONFIG --out DIR [--resume] [--device D]`: train a model from a training config."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier from a training config (TOML): settings baseline, fp, ap, fl and their mixes",
        description="Train the model of a TOML training config (see docs/training.md). DIR receives model.pt "
        "(load it with the model spec file:DIR/model.pt), train.toml, log.csv (one row per epoch) and "
        "checkpoints/ for --resume.",
    )
    p.add_argument("config", help="TOML training config file")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training in DIR (same config only)")
    p.add_argument("--device", default=None, help="device override: cpu, cuda, cuda:1, auto (not part of the config hash)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.training import load_train_config, parse_train_config, train

    cfg = load_train_config(args.config)
    if args.device:
        cfg = parse_train_config({**cfg.raw, "device": args.device})
    try:
        result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        words = ["xaibench", "train", args.config, "--out", args.out, "--resume"]
        print(f"xaibench: interrupted; continue the training with:\n  {shlex.join(words)}", file=sys.stderr)
        return 130
    if result.best_epoch < 0:  # a DDP worker process: rank 0 reports
        return 0
    row = result.log.loc[result.log["selected"]].iloc[0]
    print(f"model {result.model_path} (epoch {result.best_epoch} of {len(result.log)}: "
          f"validation accuracy {row['val_accuracy']:.4f}, ECE {row['ece']:.4f}); log {result.model_path.parent / 'log.csv'}")
    return 0
