"""Where the application keeps its data by default."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def harmony_home() -> Path:
    """``$XAIBENCH_HARMONY_HOME``, else the platform's per-user data folder + ``xaibench/harmony``."""
    env = os.environ.get("XAIBENCH_HARMONY_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "xaibench" / "harmony"
