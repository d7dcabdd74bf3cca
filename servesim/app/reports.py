"""Validation reports for the Validation page: the ones committed under ``validation/results/<case>/`` (what
``servesim validate --suite ... --out-dir validation/results`` writes) and uploaded ones, read from the files
``servesim.validate.report.write_report`` writes: ``report.json`` and, when present, ``requests.parquet`` (both
runs' requests side by side) and ``iterations.parquet`` (every measured iteration priced by the cost model)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import servesim
from servesim.errors import InputError

REPO_ROOT = Path(servesim.__file__).resolve().parent.parent
VALIDATION_DIR = REPO_ROOT / "validation" / "results"
REPORT_FILES = ("report.json", "requests.parquet", "iterations.parquet")


@dataclass
class ValidationReport:
    """One report: its JSON document and, where they came with it, the request and iteration tables."""

    name: str
    doc: dict
    requests: pd.DataFrame | None = None
    iterations: pd.DataFrame | None = None


def committed_reports(root: Path | None = None) -> dict[str, Path]:
    """Case name -> directory, for every ``<case>/report.json`` under ``root`` (default: validation/results)."""
    root = VALIDATION_DIR if root is None else root
    return {p.parent.name: p.parent for p in sorted(root.glob("*/report.json"))} if root.is_dir() else {}


def _check(doc: object, file: str) -> dict:
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list) or not doc["metrics"]:
        raise InputError("not a servesim validation report (no list of metrics)", file=file, field="metrics")
    for i, m in enumerate(doc["metrics"]):
        if not isinstance(m, dict) or not {"metric", "stat", "key", "predicted", "measured", "error"} <= set(m):
            raise InputError("each metric needs metric, stat, key, predicted, measured and error", file=file,
                             field=f"metrics[{i}]")
    return doc


def parse_report(name: str, files: dict[str, bytes]) -> ValidationReport:
    """A report from its files' bytes (``report.json`` required; the Parquet tables optional); InputError
    naming the file at fault."""
    if "report.json" not in files:
        raise InputError("a validation report needs its report.json", file=name)
    try:
        doc = json.loads(files["report.json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # also >4,300-digit integers, deep nesting
        raise InputError(f"not valid JSON ({exc.__class__.__name__})", file="report.json") from None
    tables = {}
    for table in ("requests", "iterations"):
        data = files.get(f"{table}.parquet")
        if data is not None:
            try:
                tables[table] = pd.read_parquet(io.BytesIO(data))
            except Exception:  # pyarrow raises several types for a file that is not Parquet
                raise InputError("not a Parquet file", file=f"{table}.parquet") from None
    if "requests" in tables and not {"ttft_s_pred", "ttft_s_meas"} <= set(tables["requests"].columns):
        raise InputError("not a validation report's requests table (no ttft_s_pred, ttft_s_meas)",
                         file="requests.parquet")
    return ValidationReport(name, _check(doc, "report.json"), tables.get("requests"), tables.get("iterations"))


def load_report(directory: Path) -> ValidationReport:
    """The report written into ``directory``."""
    files = {f: (directory / f).read_bytes() for f in REPORT_FILES if (directory / f).is_file()}
    return parse_report(directory.name, files)


def suite_rows(reports: dict[str, ValidationReport]) -> pd.DataFrame:
    """One row per report: its summary (worst errors) and each metric's signed error under ``<key>_error``, as
    ``servesim validate --suite`` tabulates them, and whether it is within the suite's bounds."""
    from servesim.validate.suite import BOUNDS

    rows = []
    for name, r in reports.items():
        row = {"case": name, **r.doc.get("summary", {}), **{f"{m['key']}_error": m["error"] for m in r.doc["metrics"]}}
        row["within_bounds"] = all(abs(row[k]) <= b for k, b in BOUNDS.items()
                                   if isinstance(row.get(k), (int, float)) and row[k] == row[k])
        rows.append(row)
    return pd.DataFrame(rows)
