"""Progress bars for long work (calibration, reconstruction, tuning, simulation).

Bars go to stderr and switch themselves off when stderr is not a terminal
unless EDGEKIT_PROGRESS=1, so logs and CI output stay readable.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def enabled() -> bool:
    flag = os.environ.get("EDGEKIT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it"):
    """tqdm with edgekit's defaults."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(),
                leave=False, dynamic_ncols=True, file=sys.stderr)
