"""The code base passes its linter (ruff, configured in pyproject.toml): unused imports and
variables, import order, likely bugs (bugbear) and long lines fail the suite, and so CI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.is_file(), f"{ruff} is missing: install the dev extras (pip install -e '.[dev]')"
    done = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
