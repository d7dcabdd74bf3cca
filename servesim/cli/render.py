"""Terminal output of every command: rich tables on a terminal, plain text through a pipe or into a file.

A terminal gets light rules under the header; anything else gets the same columns with no box-drawing, no
colour and no trailing blanks, so piped output greps and diffs cleanly. Missing values show as "—".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

MISSING = "—"


def make_console(stderr: bool = False) -> Console:
    """A rich console on a terminal; otherwise a wide, uncoloured one (tables are shown plain by :func:`show`)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200, no_color=True, highlight=False)


def new_table(console: Console, *columns: str, title: str | None = None, header: bool = True,
              numeric: bool = True) -> Table:
    """A table with right-aligned value columns (``numeric``); its title is printed above it, in bold."""
    if title is not None:  # printed apart: a table title would pad plain output with blanks
        console.print(title, style="bold", highlight=False)
    table = Table(*columns, box=box.SIMPLE_HEAD if console.is_terminal else None, pad_edge=False,
                  show_header=header, show_edge=False)
    for col in table.columns[1:] if numeric else ():
        col.justify = "right"
    return table


def show(console: Console, renderable: RenderableType) -> None:
    """Print ``renderable``; off a terminal, as plain lines without trailing blanks."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as cap:
        console.print(renderable)
    console.out("\n".join(line.rstrip() for line in cap.get().splitlines()), highlight=False)

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
    """A table cell: thousands separators, fixed decimals, "—" for missing or NaN (a statistic of nothing)."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return MISSING
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
    console = console or make_console()
    lat = new_table(console, "metric", *LATENCY_COLUMNS, title=f"{title}: latency (ms)")
    for label, key in LATENCY_ROWS:
        lat.add_row(label, *(fmt(summary.get(f"{col}_{key}_ms")) for col in LATENCY_COLUMNS))
    show(console, lat)
    rest = new_table(console, "quantity", "value", header=False,
                     title=_slo_label(summary["slo"]) if "slo" in summary else None)
    for label, key, decimals in SUMMARY_ROWS:
        if key in summary:
            rest.add_row(label, fmt(summary[key], decimals))
    show(console, rest)


POOL_ROWS = (  # (label, key, decimals)
    ("Replicas", "replicas", 0),
    ("GPUs", "gpus", 0),
    ("Busy fraction", "busy_fraction", 3),
    ("Mean batch size", "mean_batch_size", 2),
    ("Mean KV utilization", "mean_kv_utilization", 3),
    ("Max KV utilization", "max_kv_utilization", 3),
    ("Mean waiting requests", "mean_num_waiting", 2),
)


def render_pools(pd_summary: Mapping[str, Mapping[str, object]], console: Console | None = None) -> None:
    """Print the prefill and decode pools side by side, and the KV transfers between them."""
    console = console or Console()
    table = Table(title="prefill/decode pools")
    table.add_column("quantity")
    for pool in ("prefill", "decode"):
        p = pd_summary[pool]
        table.add_column(f"{pool} ({p['gpu']}, tp {p['tp']})", justify="right")
    for label, key, decimals in POOL_ROWS:
        table.add_row(label, *(fmt(pd_summary[pool].get(key), decimals) for pool in ("prefill", "decode")))
    console.print(table)
    kv = pd_summary["kv_transfer"]
    console.print(
        f"KV transfers over {kv['link']} ({kv['link_gb_per_s']:.1f} GB/s achieved per GPU): {kv['transfers']:,}, "
        f"{kv['total_bytes'] / 1e9:,.2f} GB; link time mean {fmt(kv['mean_kv_transfer_ms'])} ms, p99 "
        f"{fmt(kv['p99_kv_transfer_ms'])} ms; prefill end to KV on the decode GPU mean {fmt(kv['mean_kv_wait_ms'])} "
        f"ms, p99 {fmt(kv['p99_kv_wait_ms'])} ms",
        highlight=False,
    )


def render_comparison(
    summaries: Mapping[str, Mapping[str, object]], console: Console | None = None, title: str = "comparison"
) -> None:
    """Print the key metrics side by side, one column per policy or scenario."""
    console = console or make_console()
    table = new_table(console, "metric", *summaries, title=title)
    for label, key, decimals in COMPARISON_ROWS:
        if any(key in s for s in summaries.values()):
            table.add_row(label, *(fmt(s.get(key), decimals) for s in summaries.values()))
    show(console, table)


def render_slowdown(
    tables: Mapping[str, pd.DataFrame],
    console: Console | None = None,
    title: str = "slowdown by request size",
) -> None:
    """Print slowdown (E2E / E2E alone) per size bin, one column group per policy.

    Tables with the same bins (the same workload) share one table; otherwise each gets its own.
    """
    console = console or make_console()
    ranges = {name: list(zip(t["size_min"], t["size_max"], strict=True)) for name, t in tables.items()}
    if len({tuple(r) for r in ranges.values()}) > 1:
        for name, t in tables.items():
            render_slowdown({name: t}, console, f"{title}: {name}")
        return
    any_rejected = any(t["rejected"].sum() > 0 for t in tables.values())
    columns = ["size (tokens)"]
    for name in tables:
        columns += [f"{name} mean", f"{name} p99"] + ([f"{name} rejected"] if any_rejected else [])
    table = new_table(console, *columns, title=title)
    for i, (lo, hi) in enumerate(next(iter(ranges.values()), [])):
        cells = [f"{lo:,}–{hi:,}"]
        for t in tables.values():
            cells += [fmt(t["mean_slowdown"].iloc[i]), fmt(t["p99_slowdown"].iloc[i])]
            if any_rejected:
                cells.append(fmt(int(t["rejected"].iloc[i])))
        table.add_row(*cells)
    show(console, table)
