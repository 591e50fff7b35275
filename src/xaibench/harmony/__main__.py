"""``python -m xaibench.harmony ACTION ...``: the same as ``xaibench harmony ACTION ...``."""

from __future__ import annotations

import argparse
import sys

from xaibench.errors import exit_status
from xaibench.harmony.commands import register

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="xaibench")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["harmony", *sys.argv[1:]])
    sys.exit(exit_status(lambda: args.func(args)))
