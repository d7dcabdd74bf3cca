"""Result cache: one JSON file per finished scenario, named by a key of everything that decides its result.

The key is the scenario's config hash, the servesim version, a digest of the code and data that decide a
result (``sim/``, ``hwmodels/`` with its catalogs and profiles, and the row builder), and the contents of every
file the scenario names (a trace, a model's config.json, a GPU file, a profile): an edited trace or a retuned
cost model is never served stale.
Entries are written whole (temporary file, then rename) by the process that collects results, so an
interrupted sweep leaves only complete entries and the next run skips them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from servesim import __version__
from servesim.sim.config import Scenario


@lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of the sources and package data that decide a simulation's row."""
    root = Path(__file__).resolve().parents[1]
    files = [p for sub in ("sim", "hwmodels") for p in (root / sub).rglob("*")
             if p.is_file() and p.suffix in (".py", ".yaml", ".json", ".csv", ".jsonl")]
    h = hashlib.sha256()
    for p in sorted([*files, root / "plan" / "run.py"]):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def scenario_key(s: Scenario) -> str:
    """Cache key of ``s``: config hash + version + code digest + digests of the files it names."""
    h = hashlib.sha256(f"{__version__}:{code_digest()}:{s.config_hash()}".encode())
    for name, value in sorted(s.model_dump().items()):
        if isinstance(value, str) and ("/" in value or "." in value) and os.path.isfile(value):
            st = os.stat(value)
            h.update(f"{name}:{_file_digest(os.path.abspath(value), st.st_mtime_ns, st.st_size)}".encode())
    return h.hexdigest()[:24]


def _plain(x: object) -> object:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    raise TypeError(f"cannot store {type(x).__name__} in the result cache")


class ResultCache:
    """Rows by scenario key under ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return entry.get("row") if entry.get("key") == key else None

    def put(self, key: str, row: dict, wall_s: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "version": __version__, "wall_s": wall_s, "row": row}, default=_plain)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.json")) if self.root.is_dir() else 0
