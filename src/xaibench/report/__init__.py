"""The HTML report of a run: `build_report(DIR)` writes DIR/report.html (self-contained, offline)."""

from __future__ import annotations

from xaibench.report.html import build_report

__all__ = ["build_report"]
