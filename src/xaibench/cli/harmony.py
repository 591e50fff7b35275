"""`xaibench harmony ...`: the HARMONY human study; its actions live in `xaibench.harmony.commands`."""

from __future__ import annotations

from xaibench.harmony.commands import register

__all__ = ["register"]
