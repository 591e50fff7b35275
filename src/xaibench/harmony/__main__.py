"""``python -m xaibench.harmony ACTION ...``: the same as ``xaibench harmony ACTION ...``."""

from __future__ import annotations

import sys

from xaibench.cli import main

if __name__ == "__main__":
    sys.exit(main(["harmony", *sys.argv[1:]]))
