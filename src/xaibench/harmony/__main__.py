"""``python -m xaibench.harmony ACTION ...``: the same as ``xaibench harmony ACTION ...``."""

from __future__ import annotations

import argparse
import sys

from xaibench.errors import XaibenchError


def main(argv: list[str] | None = None) -> int:
    from xaibench.cli import harmony

    parser = argparse.ArgumentParser(prog="python -m xaibench.harmony")
    sub = parser.add_subparsers(dest="command", required=True)
    harmony.register(sub)
    args = parser.parse_args(["harmony", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except XaibenchError as err:
        print(f"xaibench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
