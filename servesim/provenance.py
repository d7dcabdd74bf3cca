"""The commit a result was measured at, for every result file's header (benchmarks, calibration profiles).

``SERVESIM_GIT_COMMIT`` wins: a tree copied to a GPU machine may carry a stale ``.git`` (or none), so the copier
says which commit it copied. Otherwise ``git rev-parse`` in the package's checkout, ``+dirty`` when tracked files
differ from it; ``unknown`` without git.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def git_commit() -> str:
    """The short commit of this checkout (see the module's docstring for the order)."""
    if os.environ.get("SERVESIM_GIT_COMMIT"):
        return os.environ["SERVESIM_GIT_COMMIT"]
    try:
        git = ("git", "-C", str(_HERE))
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode or not rev.stdout.strip():
            return "unknown"
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
