"""Terminal tables of run results (rich on a terminal, plain text through a pipe)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

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
