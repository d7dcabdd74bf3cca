"""Writing a sweep's or a plan's files: all of them or none, and never over the result cache beside them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from servesim.sim.outputs import write_files


def publish(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame],
            texts: Mapping[str, str] | None = None) -> Path:
    """Write ``tables`` as ``<name>.csv`` and ``<name>.parquet`` and ``texts`` as files into ``out_dir``.

    Everything is written into a temporary directory first and moved into place only when all of it is
    written (Ctrl-C and SIGTERM held back meanwhile), so a failure or an interrupt leaves the previous files as
    they were; the result cache in ``out_dir/cache`` is not touched.
    """
    writers = {}
    for name, df in tables.items():
        writers[f"{name}.csv"] = lambda p, df=df: df.to_csv(p, index=False)
        writers[f"{name}.parquet"] = lambda p, df=df: df.to_parquet(p, index=False)
    for name, text in (texts or {}).items():
        writers[name] = lambda p, text=text: p.write_text(text, encoding="utf-8")
    return write_files(out_dir, writers)
