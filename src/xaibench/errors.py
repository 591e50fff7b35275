"""Exception types raised by xaibench. Every user-facing error derives from `XaibenchError`."""

from __future__ import annotations

import sys
from collections.abc import Callable


class XaibenchError(Exception):
    """Base class of all errors raised on purpose by xaibench."""


class InputError(XaibenchError, ValueError):
    """Bad input: wrong shapes, NaN/Inf values, out-of-range targets, unreadable files."""


class UnknownNameError(XaibenchError, KeyError):
    """A name that is not in a registry; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(XaibenchError, RuntimeError):
    """Pretrained weights (or a backbone) cannot be found locally and cannot be downloaded."""


def exit_status(action: Callable[[], int | None]) -> int:
    """Run a command-line action and return its exit status: an `XaibenchError` is printed as
    ``xaibench: error: ...`` without a traceback (status 2), Ctrl-C as ``xaibench: interrupted`` (130)."""
    try:
        return int(action() or 0)
    except XaibenchError as err:
        print(f"xaibench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xaibench: interrupted", file=sys.stderr)
        return 130
