"""Shared pytest setup. Markers are declared in pyproject.toml."""

from __future__ import annotations

import os

# Triton kernels run on the CPU through the interpreter unless a GPU test says otherwise.
os.environ.setdefault("TRITON_INTERPRET", "1")
