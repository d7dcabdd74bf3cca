"""Run outputs: Parquet tables, a deterministic summary.json, a Chrome trace, and rich terminal tables.

The simulator and the engine write the same files, so one reader and one comparison serve both:

- ``requests.parquet``  one row per request (``metrics.REQUEST_COLUMNS``)
- ``timeline.parquet``  one row per iteration or run of identical decode iterations
- ``summary.json``      the summary plus run metadata under ``"meta"``; byte-identical for the same
                        scenario and seed (wall-clock fields go to ``run.json`` instead)
- ``run.json``          the full metadata, wall-clock time included
- ``trace.json``        on request: Chrome trace events (chrome://tracing, ui.perfetto.dev)

A failed write leaves nothing behind: everything goes to a temporary sibling directory first and is
moved into place only once every file is complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from servesim.errors import InputError

OUTPUT_FILES = ("requests.parquet", "timeline.parquet", "summary.json", "run.json", "trace.json")
# Metadata that differs between identical runs; kept out of summary.json so it stays byte-identical.
VOLATILE_META_KEYS = frozenset({"wall_time_s", "started_at", "finished_at", "hostname", "host", "pid"})


def to_json_value(x: object) -> object:
    """Plain JSON types: numpy scalars unwrapped, NaN and infinities as null, tuples and arrays as lists."""
    if isinstance(x, Mapping):
        return {str(k): to_json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_json_value(v) for v in x]
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is pd.NA:
        return None
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON: {x!r}")


def dumps_json(obj: object) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, shortest round-trip floats, newline."""
    return json.dumps(to_json_value(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def summary_document(summary: Mapping[str, object], meta: Mapping[str, object]) -> dict[str, object]:
    """What summary.json holds: the summary, and the metadata without its wall-clock fields."""
    return {**summary, "meta": {k: v for k, v in meta.items() if k not in VOLATILE_META_KEYS}}


def _iteration_kind(prefill: int, decode: int) -> str:
    if decode == 0:
        return "prefill"
    return "decode" if prefill == 0 else "mixed"


def iter_trace_events(timeline: pd.DataFrame, chunk_rows: int = 50_000) -> Iterator[list[dict[str, object]]]:
    """Chrome trace events in chunks (so a long timeline never sits in memory as one list):
    process names, then per row one "X" slice (pid = replica, µs) and "C" counters for KV and queue."""
    replicas = sorted(set(timeline["replica"].tolist()))
    yield [{"name": "process_name", "ph": "M", "pid": r, "tid": 0, "args": {"name": f"replica {r}"}}
           for r in replicas]
    arg_names = ("steps", "batch_size", "prefill_tokens", "decode_tokens", "num_running", "num_waiting")
    for lo in range(0, len(timeline), chunk_rows):
        part = timeline.iloc[lo : lo + chunk_rows]
        cols = {c: part[c].tolist() for c in part.columns}  # plain Python numbers for json
        events: list[dict[str, object]] = []
        for i in range(len(part)):
            pid, ts = cols["replica"][i], cols["start_s"][i] * 1e6
            events.append({
                "name": _iteration_kind(cols["prefill_tokens"][i], cols["decode_tokens"][i]),
                "cat": "iteration", "ph": "X", "pid": pid, "tid": 0, "ts": ts,
                "dur": (cols["end_s"][i] - cols["start_s"][i]) * 1e6,
                "args": {a: cols[a][i] for a in arg_names},
            })
            events.append({"name": "kv_blocks", "ph": "C", "pid": pid, "ts": ts,
                           "args": {"used": cols["kv_blocks_used"][i]}})
            events.append({"name": "queue", "ph": "C", "pid": pid, "ts": ts,
                           "args": {"running": cols["num_running"][i], "waiting": cols["num_waiting"][i]}})
        yield events


def chrome_trace_events(timeline: pd.DataFrame) -> dict[str, object]:
    """The whole Chrome trace document for a timeline (``{"traceEvents": [...]}``)."""
    events = [e for chunk in iter_trace_events(timeline) for e in chunk]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _write_trace(path: Path, timeline: pd.DataFrame) -> None:
    """Stream the trace document to ``path`` chunk by chunk (one json.dumps per chunk is fast)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"displayTimeUnit":"ms","traceEvents":[')
        first = True
        for events in iter_trace_events(timeline):
            if events:
                text = json.dumps(events, separators=(",", ":"), allow_nan=False)[1:-1]
                f.write(text if first else "," + text)
                first = False
        f.write("]}\n")


def write_outputs(
    out_dir: str | os.PathLike[str],
    requests: pd.DataFrame,
    timeline: pd.DataFrame,
    summary: Mapping[str, object],
    meta: Mapping[str, object],
    *,
    chrome_trace: bool = False,
) -> Path:
    """Write a run's files into ``out_dir`` (created if needed), all of them or none.

    In an existing directory, files of ours that this run does not write (a stale ``trace.json``)
    are removed, so the directory always describes one run. Other files there are left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", field="output_dir", file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        requests.to_parquet(tmp / "requests.parquet", index=False)
        timeline.to_parquet(tmp / "timeline.parquet", index=False)
        (tmp / "summary.json").write_text(dumps_json(summary_document(summary, meta)), encoding="utf-8")
        (tmp / "run.json").write_text(dumps_json(meta), encoding="utf-8")
        if chrome_trace:
            _write_trace(tmp / "trace.json", timeline)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished files into place: one rename for a new directory, else file by file."""
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; give it a normal directory's mode
        os.rename(tmp, out)
        return
    written = {p.name for p in tmp.iterdir()}
    for name in OUTPUT_FILES:
        if name not in written:
            (out / name).unlink(missing_ok=True)
    for name in sorted(written):
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def read_outputs(out_dir: str | os.PathLike[str]) -> dict[str, object]:
    """Load a run's ``requests``, ``timeline`` (DataFrames) and ``summary`` (dict) back."""
    out = Path(out_dir)
    for name in ("requests.parquet", "timeline.parquet", "summary.json"):
        if not (out / name).is_file():
            raise InputError("is not a servesim output directory (missing file)", file=str(out / name))
    return {
        "requests": pd.read_parquet(out / "requests.parquet"),
        "timeline": pd.read_parquet(out / "timeline.parquet"),
        "summary": json.loads((out / "summary.json").read_text(encoding="utf-8")),
    }


# ---- terminal tables (rich prints plain text when stdout is not a terminal) ----

LATENCY_ROWS = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E", "e2el"))
LATENCY_COLUMNS = ("mean", "p50", "p90", "p99")
SUMMARY_ROWS = (  # (label, key, decimals)
    ("Requests completed", "completed", 0),
    ("Requests rejected", "rejected", 0),
    ("Duration (s)", "duration", 2),
    ("Request throughput (req/s)", "request_throughput", 3),
    ("Output throughput (tok/s)", "output_throughput", 1),
    ("Total token throughput (tok/s)", "total_token_throughput", 1),
    ("Mean queueing delay (ms)", "mean_queueing_delay_ms", 2),
    ("P99 queueing delay (ms)", "p99_queueing_delay_ms", 2),
    ("Preemptions", "total_preemptions", 0),
    ("Preempted requests", "preempted_requests", 0),
    ("Prefix-cache hit rate", "prefix_cache_hit_rate", 3),
    ("Mean batch size", "mean_batch_size", 2),
    ("Mean KV utilization", "mean_kv_utilization", 3),
    ("Max KV utilization", "max_kv_utilization", 3),
    ("Mean waiting requests", "mean_num_waiting", 2),
    ("Request goodput (req/s)", "request_goodput", 3),
    ("SLO attainment", "slo_attainment", 3),
    ("SLO attainment, TTFT only", "slo_attainment_ttft", 3),
    ("SLO attainment, TPOT only", "slo_attainment_tpot", 3),
    ("SLO attainment, E2E only", "slo_attainment_e2el", 3),
    ("Cost (USD)", "cost_usd", 4),
    ("USD per million output tokens", "usd_per_million_output_tokens", 3),
)
COMPARISON_ROWS = SUMMARY_ROWS[:6] + tuple(
    (f"{stat} {label} (ms)", f"{stat}_{key}_ms", 2)
    for label, key in LATENCY_ROWS
    for stat in ("mean", "p99")
) + SUMMARY_ROWS[6:]


def fmt(x: object, decimals: int = 2) -> str:
    """A table cell: thousands separators, fixed decimals, "-" for missing or NaN."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):,.{decimals}f}"
    return str(x)


def _slo_label(slo: Mapping[str, object]) -> str:
    limits = [f"{m.upper()} <= {slo[f'{m}_ms']:g} ms" for m in ("ttft", "tpot", "e2el") if slo.get(f"{m}_ms")]
    return f"SLO ({slo.get('mode', 'joint')}): " + ", ".join(limits)


def render_summary(
    summary: Mapping[str, object], console: Console | None = None, title: str = "servesim summary"
) -> None:
    """Print a latency table (TTFT/TPOT/ITL/E2E × mean/p50/p90/p99, ms) and the run's other numbers."""
    console = console or Console()
    lat = Table(title=f"{title}: latency (ms)")
    lat.add_column("metric")
    for col in LATENCY_COLUMNS:
        lat.add_column(col, justify="right")
    for label, key in LATENCY_ROWS:
        lat.add_row(label, *(fmt(summary.get(f"{col}_{key}_ms")) for col in LATENCY_COLUMNS))
    console.print(lat)
    rest = Table(title=_slo_label(summary["slo"]) if "slo" in summary else None, show_header=False)
    rest.add_column("quantity")
    rest.add_column("value", justify="right")
    for label, key, decimals in SUMMARY_ROWS:
        if key in summary:
            rest.add_row(label, fmt(summary[key], decimals))
    console.print(rest)


def render_comparison(
    summaries: Mapping[str, Mapping[str, object]], console: Console | None = None, title: str = "comparison"
) -> None:
    """Print the key metrics side by side, one column per policy or scenario."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("metric")
    for name in summaries:
        table.add_column(name, justify="right")
    for label, key, decimals in COMPARISON_ROWS:
        if any(key in s for s in summaries.values()):
            table.add_row(label, *(fmt(s.get(key), decimals) for s in summaries.values()))
    console.print(table)


def render_slowdown(
    tables: Mapping[str, pd.DataFrame],
    console: Console | None = None,
    title: str = "slowdown by request size",
) -> None:
    """Print slowdown (E2E / E2E alone) per size bin, one column group per policy.

    Tables with the same bins (the same workload) share one table; otherwise each gets its own.
    """
    console = console or Console()
    ranges = {name: list(zip(t["size_min"], t["size_max"], strict=True)) for name, t in tables.items()}
    if len({tuple(r) for r in ranges.values()}) > 1:
        for name, t in tables.items():
            render_slowdown({name: t}, console, f"{title}: {name}")
        return
    table = Table(title=title)
    table.add_column("size (tokens)")
    any_rejected = any(t["rejected"].sum() > 0 for t in tables.values())
    for name in tables:
        table.add_column(f"{name} mean", justify="right")
        table.add_column(f"{name} p99", justify="right")
        if any_rejected:
            table.add_column(f"{name} rejected", justify="right")
    for i, (lo, hi) in enumerate(next(iter(ranges.values()), [])):
        cells = [f"{lo:,}-{hi:,}"]
        for t in tables.values():
            cells += [fmt(t["mean_slowdown"].iloc[i]), fmt(t["p99_slowdown"].iloc[i])]
            if any_rejected:
                cells.append(fmt(int(t["rejected"].iloc[i])))
        table.add_row(*cells)
    console.print(table)
