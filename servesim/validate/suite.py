"""The suite table: one row per case with its worst errors, written as ``README.md`` and ``summary.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from servesim.sim.outputs import write_files

BOUNDS = {"max_abs_tail_error": 0.03, "max_abs_mean_error": 0.02, "iteration_median_abs_error": 0.02,
          "iteration_p90_abs_error": 0.05}
COLUMNS = (("p50 TTFT", "median_ttft_ms_error"), ("p99 TTFT", "p99_ttft_ms_error"),
           ("p50 TPOT", "median_tpot_ms_error"), ("p99 TPOT", "p99_tpot_ms_error"),
           ("p50 E2E", "median_e2el_ms_error"), ("p99 E2E", "p99_e2el_ms_error"),
           ("mean TTFT", "mean_ttft_ms_error"), ("mean TPOT", "mean_tpot_ms_error"),
           ("output tok/s", "output_throughput_error"), ("iter median", "iteration_median_abs_error"),
           ("iter p90", "iteration_p90_abs_error"))


def suite_row(name: str, why: str, doc: dict) -> dict:
    """A case's row of the suite table from its report's JSON: its summary and each metric's signed error, and
    where the prediction was priced at the run's measured host speed, the factor (``host_speed``) and the
    errors at the scenario's own (``unnormalised``: the summary and ``<key>_error``)."""
    def errors(part: dict) -> dict:
        return {**part["summary"], **{f"{m['key']}_error": m["error"] for m in part["metrics"]}}

    row = {"case": name, "why": why, **errors(doc)}
    hs = doc.get("case", {}).get("host_speed")
    if isinstance(hs, dict):
        row["host_speed"] = hs.get("factor")
    if doc.get("unnormalised"):
        row["unnormalised"] = errors(doc["unnormalised"])
    return row


def _cell(v, signed: bool = True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def suite_table(rows: list[dict]) -> str:
    """The table; a ``host speed`` column where a case was priced at its run's measured host speed."""
    speed = any("host_speed" in r for r in rows)
    head = "| case | " + " | ".join(c for c, _ in COLUMNS) + " | within bounds |" + (" host speed |" if speed else "")
    lines = [head, "|---|" + "---:|" * len(COLUMNS) + "---|" + ("---:|" if speed else "")]
    for r in rows:
        ok = all(abs(r.get(k, math.nan)) <= b for k, b in BOUNDS.items() if isinstance(r.get(k), float)
                 and math.isfinite(r[k]))
        hs = r.get("host_speed")
        lines.append(f"| {r['case']} | " + " | ".join(_cell(r.get(k), "abs" not in k) for _, k in COLUMNS) +
                     f" | {'yes' if ok else 'no'} |" + ((f" {hs:.3f} |" if hs is not None else " — |") if speed
                                                         else ""))
    return "\n".join(lines) + "\n"


def write_suite_table(rows: list[dict], out_dir: str | Path) -> str:
    table = suite_table(rows)
    write_files(Path(out_dir), {"summary.md": lambda p: p.write_text(table, encoding="utf-8"),
                                "summary.json": lambda p: p.write_text(json.dumps(rows, indent=1, default=float),
                                                                       encoding="utf-8")})
    return table
