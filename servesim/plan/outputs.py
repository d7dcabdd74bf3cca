"""Writing a sweep's or a plan's files: all of them or none, and never over the result cache beside them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from servesim.errors import InputError


def publish(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame],
            texts: Mapping[str, str] | None = None) -> Path:
    """Write ``tables`` as ``<name>.csv`` and ``<name>.parquet`` and ``texts`` as files into ``out_dir``.

    Everything is written into a temporary directory first and moved into place only when all of it is
    written, so a failure leaves the previous files as they were.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", field="output_dir", file=str(out))
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".write.", suffix=".tmp", dir=out))
    try:
        for name, df in tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for p in sorted(tmp.iterdir()):
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
