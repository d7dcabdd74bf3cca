"""``servesim simulate`` and ``servesim compare``: every Scenario field is a flag.

The flags are generated from the pydantic model (its field types, descriptions and groups), so
``--help`` lists each field with its unit and default, and a field added to ``Scenario`` becomes a
flag with no other change. Values are validated by the model, so an error names the field.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from servesim.cli.app import app
from servesim.errors import ConfigError
from servesim.sim.config import FIELD_GROUPS, Scenario, load_scenario, make_scenario

_GROUP_OF = {name: group for group, names in FIELD_GROUPS.items() for name in names}
_POLICIES = typing.get_args(Scenario.model_fields["policy"].annotation)


def _option(name: str) -> inspect.Parameter:
    """A keyword parameter whose default is the typer Option for Scenario field ``name``."""
    info = Scenario.model_fields[name]
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if typing.get_origin(ann) in (typing.Union, types.UnionType) else ann
    help_text = info.description or ""
    if typing.get_origin(base) is typing.Literal:
        help_text += f" ({' | '.join(typing.get_args(base))})"
        base = str
    default = "none" if info.default is None else info.default
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{name.replace('_', '-')}"] if base is bool else [flag]
    opt = typer.Option(None, *decls, help=f"{help_text} (default: {default})", show_default=False,
                       rich_help_panel=_GROUP_OF[name])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=Optional[base])  # noqa: UP045


def with_scenario_flags(func):
    """Give ``func`` one keyword flag per Scenario field; it receives them in ``**fields``."""
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(func)
    def wrapper(**kwargs):
        return func(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + [_option(n) for n in Scenario.model_fields])
    return wrapper


def _scenario(config: Path | None, fields: dict) -> Scenario:
    given = {k: v for k, v in fields.items() if v is not None}
    return load_scenario(config, given) if config else make_scenario(given)


def _policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    for p in names:
        if p not in _POLICIES:
            raise ConfigError(f"unknown policy {p!r}; choose from {', '.join(_POLICIES)}", field="policies")
    if not names:
        raise ConfigError("give at least one policy", field="policies")
    return names


def _run(scenario: Scenario, console: Console):
    from servesim.cli.progress import progress_bar
    from servesim.sim.simulator import simulate  # imported here: keeps `servesim --help` fast

    with progress_bar("simulating", "requests", console) as update:
        return simulate(scenario, on_progress=update)


_CONFIG = typer.Option(None, "--config", help="YAML scenario file; flags override it")
_OUTPUT_DIR = typer.Option(None, "--output-dir", help="write requests.parquet, timeline.parquet, summary.json")
_CHROME = typer.Option(False, "--chrome-trace", help="also write trace.json (Chrome trace of iterations)")
_JSON = typer.Option(False, "--json", help="print the summary as JSON")


@app.command("simulate", context_settings={"max_content_width": 120})
@with_scenario_flags
def simulate_cmd(
    config: Optional[Path] = _CONFIG,  # noqa: UP045 (typer reads the annotation at run time)
    output_dir: Optional[Path] = _OUTPUT_DIR,  # noqa: UP045
    chrome_trace: bool = _CHROME,
    as_json: bool = _JSON,
    policies: Optional[str] = typer.Option(  # noqa: UP045
        None, "--policies", help="comma-separated policies: run each on the same workload, side by side"
    ),
    **fields,
) -> None:
    """Simulate a deployment serving a workload; print TTFT/TPOT/ITL/E2E, throughput, goodput, cost.

    With no options: Llama-3.1-8B on one H100-SXM, chunked prefill, FCFS, the Azure 2023
    conversation trace at its own times.
    """
    base = _scenario(config, fields)
    if policies:
        _compare(base, _policies(policies), None, output_dir, as_json)
        return
    console = Console()
    result = _run(base, console)
    from servesim.cli.render import render_summary
    from servesim.sim.outputs import dumps_json, summary_document, write_outputs

    if output_dir:
        write_outputs(output_dir, result.requests, result.timeline, result.summary, result.meta,
                      chrome_trace=chrome_trace)
    if as_json:
        typer.echo(dumps_json(summary_document(result.summary, result.meta)), nl=False)
        return
    meta = result.meta
    console.print(
        f"{base.model} on {meta['gpus_total']}× {base.gpu} (tp {base.tp}, pp {base.pp}, {base.replicas} replica(s); "
        f"weights {base.quant}, KV {base.kv_dtype}): {meta['kv_blocks_per_replica']:,} KV blocks of {base.block_size} "
        f"tokens per replica; {base.batching} batching, {base.policy}; workload {meta['workload']['name']} "
        f"({meta['workload']['requests']:,} requests); cost model {meta['profile_id']}; seed {base.seed}; "
        f"config {meta['config_hash']}",
        highlight=False,
    )
    for note in meta["workload"]["notes"]:
        console.print(f"note: {note}", highlight=False)
    render_summary(result.summary, console, title=f"{base.model} on {base.tp * base.pp * base.replicas}× {base.gpu}")
    reasons = result.requests.loc[result.requests.rejected_reason != "", "rejected_reason"]
    if len(reasons):
        console.print(f"{len(reasons)} requests rejected; most common reason: {reasons.mode().iloc[0]}")
    if output_dir:
        console.print(f"wrote {output_dir}")


@app.command("compare", context_settings={"max_content_width": 120})
@with_scenario_flags
def compare_cmd(
    policies: str = typer.Option("fcfs,sjf", "--policies", help="comma-separated policies to compare"),
    rates: Optional[str] = typer.Option(  # noqa: UP045
        None, "--rates", help="comma-separated arrival rates, requests/s: compare at each load"
    ),
    slowdown_by: str = typer.Option(
        "total", "--slowdown-by", help="request size for the slowdown table (input_tokens | output_tokens | total)"
    ),
    config: Optional[Path] = _CONFIG,  # noqa: UP045
    output_dir: Optional[Path] = _OUTPUT_DIR,  # noqa: UP045
    as_json: bool = _JSON,
    **fields,
) -> None:
    """Run the same workload under several policies (and loads); side-by-side table and slowdown by size."""
    base = _scenario(config, fields)
    loads = None
    if rates:
        try:
            loads = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"rates must be numbers, got {rates!r}", field="rates") from None
    _compare(base, _policies(policies), loads, output_dir, as_json, slowdown_by)


def _compare(base: Scenario, policies: list[str], rates: list[float] | None, output_dir: Path | None,
             as_json: bool, slowdown_by: str = "total") -> None:
    from servesim.cli.render import render_comparison, render_slowdown
    from servesim.sim.metrics import slowdown_by_size
    from servesim.sim.outputs import dumps_json, write_outputs

    console = Console()
    summaries, slowdowns, docs = {}, {}, {}
    for rate in rates or [base.rate]:
        for policy in policies:
            scenario = make_scenario({**base.model_dump(), "policy": policy, "rate": rate})
            label = policy if rate is None else f"{policy} @ {rate:g}/s"
            result = _run(scenario, console)
            summaries[label] = result.summary
            slowdowns[label] = slowdown_by_size(result.requests, by=slowdown_by)
            docs[label] = {"summary": result.summary, "slowdown": slowdowns[label].to_dict(orient="records")}
            if output_dir:
                sub = Path(output_dir) / label.replace(" @ ", "_at_").replace("/", "per")
                write_outputs(sub, result.requests, result.timeline, result.summary, result.meta)
    if as_json:
        typer.echo(dumps_json(docs), nl=False)
        return
    render_comparison(summaries, console, title=f"{base.model} on {base.gpu}: policies side by side")
    render_slowdown(slowdowns, console, title=f"slowdown (E2E / E2E alone) by {slowdown_by.replace('_', ' ')}")
