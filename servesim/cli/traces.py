"""``servesim traces``: list the built-in traces with their statistics; ``traces show`` one trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from servesim.cli.app import app
from servesim.cli.render import MISSING, make_console, new_table
from servesim.cli.render import show as show_table
from servesim.sim.workload import BUILTIN_TRACES, FORMATS, file_format, load_trace

traces_app = typer.Typer(
    help="Built-in and file traces: `servesim traces` lists the built-ins with their statistics, "
    "`servesim traces show NAME|PATH` describes one (rate, span, burstiness, length percentiles).",
    no_args_is_help=False,
)
app.add_typer(traces_app, name="traces")

_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _num(x: float | None, digits: int = 1) -> str:
    """1,020 for whole numbers, 1,154.7 otherwise, — for missing."""
    if x is None:
        return MISSING
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.{digits}f}"


def _rate(x: float | None) -> str:
    return MISSING if x is None else f"{x:.3g}"


def _describe(spec: str, fmt: str | None) -> dict[str, Any]:
    """Statistics of a built-in or file trace, with its format and (built-ins) attribution."""
    w = load_trace(spec, fmt)
    out = w.stats()
    if spec in BUILTIN_TRACES:
        b = BUILTIN_TRACES[spec]
        out.update(format=fmt or b.fmt, file=b.file, description=b.description, license=b.license,
                   attribution=b.attribution)
    else:
        out.update(format=fmt or file_format(Path(spec)))
    return out


@traces_app.callback(invoke_without_command=True)
def list_traces(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """List the built-in traces with their statistics (attribution: servesim/sim/workload/traces/README.md)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [_describe(name, None) for name in BUILTIN_TRACES]
    if as_json:
        typer.echo(json.dumps({"traces": rows}, indent=2))
        return
    console = make_console()
    table = new_table(console, "name", "requests", "span s", "rate/s", "iat CV", "prompt mean", "p50", "p99",
                   "output mean", "p50", "p99", "license", title="Built-in traces")
    for s in rows:
        i, o = s["input_tokens"], s["output_tokens"]
        table.add_row(s["name"], f"{s['requests']:,}", _num(s["span_s"]), _rate(s["rate_per_s"]),
                      _num(s["iat_cv"], 2), _num(i["mean"]), _num(i["p50"]), _num(i["p99"]), _num(o["mean"]),
                      _num(o["p50"]), _num(o["p99"]), s["license"])
    show_table(console, table)
    for s in rows:
        for note in s["notes"]:
            console.print(f"note: {s['name']}: {note}")
    console.print("Traces with no span are lengths only: pair them with an arrival process. "
                  "Details: servesim traces show NAME. Attribution: servesim/sim/workload/traces/README.md.")


@traces_app.command("show")
def show(
    spec: str = typer.Argument(..., metavar="NAME|PATH",
                               help=f"A built-in trace ({', '.join(BUILTIN_TRACES)}) or a trace file."),
    fmt: str | None = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                   help=f"Trace format, instead of detecting it: {', '.join(FORMATS)}."),
    as_json: bool = _JSON,
) -> None:
    """Rate, span, inter-arrival CV, burstiness, length percentiles and prefix reuse of one trace."""
    s = _describe(spec, fmt)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    console = make_console()
    summary = new_table(console, "", "", title=f"{s['name']} ({s['format']}, {s['source']})", header=False)
    summary.columns[1].justify = "left"
    summary.add_row("requests", f"{s['requests']:,}")
    if s["span_s"] is None:
        summary.add_row("arrivals", "none (lengths only: pair with an arrival process)")
    else:
        summary.add_row("span", f"{_num(s['span_s'])} s")
        summary.add_row("rate", f"{_rate(s['rate_per_s'])} req/s")
        summary.add_row("inter-arrival CV", _num(s["iat_cv"], 2))
        summary.add_row("burstiness (cv-1)/(cv+1)", _num(s["burstiness"], 2))
        summary.add_row("requests per minute", f"{s['per_minute_min']:,} to {s['per_minute_max']:,}")
    if "hash_blocks_mean" in s:
        blocks = f"{_num(s['hash_blocks_mean'])} x {s['block_tokens']} tokens"
        summary.add_row("hash blocks per request", blocks)
        summary.add_row("blocks repeating an earlier id", f"{100 * s['hash_block_reuse']:.1f}%")
    if "attribution" in s:
        summary.add_row("license", s["attribution"])
    show_table(console, summary)
    lengths = new_table(console, "tokens", "mean", "p50", "p90", "p99", "min", "max")
    for label, key in (("prompt", "input_tokens"), ("output", "output_tokens")):
        d = s[key]
        lengths.add_row(label, *(_num(d[k]) for k in ("mean", "p50", "p90", "p99", "min", "max")))
    show_table(console, lengths)
    for note in s["notes"]:
        console.print(f"note: {note}")
