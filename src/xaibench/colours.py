"""Colours every figure shares (plain data, no plotting library): the colour-blind-safe palette of
lines and bars, and the text colour that stays legible on a heat-map cell."""

from __future__ import annotations

from collections.abc import Sequence

# Okabe & Ito's colour-blind-safe palette without black (the colour of text and controls) and yellow (too
# light on white), and Tol's wine as a seventh colour
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#882255")


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative luminance):
    the colour of a number written on a heat-map cell."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"
