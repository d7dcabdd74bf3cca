"""``servesim simulate`` and ``servesim compare``: every Scenario field is a flag.

The flags are generated from the pydantic model, so ``--help`` lists each field with its unit and
default, and a field added to ``Scenario`` becomes a flag with no other change.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import click
from rich.console import Console

from servesim.errors import ConfigError
from servesim.sim.config import Scenario, load_scenario, make_scenario

SCENARIO_FIELDS = Scenario.model_fields


def _click_type(annotation) -> click.ParamType | type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    return {int: int, float: float, str: str, bool: bool}.get(annotation, str)


def _scenario_options(func):
    """Decorate ``func`` with one option per Scenario field (default None: 'not given')."""
    for name, info in reversed(list(SCENARIO_FIELDS.items())):
        flag = "--" + name.replace("_", "-")
        default = "none" if info.default is None else info.default
        help_text = f"{info.description} [default: {default}]"
        if info.annotation is bool:
            opt = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
        else:
            opt = click.option(flag, name, type=_click_type(info.annotation), default=None, help=help_text)
        func = opt(func)
    return func


def _scenario(config: str | None, flags: dict) -> Scenario:
    given = {k: v for k, v in flags.items() if k in SCENARIO_FIELDS and v is not None}
    if config:
        return load_scenario(config, given)
    return make_scenario(given)


def _common(func):
    func = click.option("--config", "config", type=click.Path(), help="YAML scenario file; flags override it")(func)
    func = click.option("--output-dir", type=click.Path(), help="write requests.parquet, summary.json, timeline")(func)
    func = click.option("--chrome-trace", is_flag=True, help="also write trace.json (Chrome trace of iterations)")(func)
    func = click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")(func)
    return _scenario_options(func)


def _policies(text: str) -> list[str]:
    allowed = typing.get_args(SCENARIO_FIELDS["policy"].annotation)
    names = [p.strip() for p in text.split(",") if p.strip()]
    for p in names:
        if p not in allowed:
            raise ConfigError(f"unknown policy {p!r}; choose from {', '.join(allowed)}", field="policies")
    if not names:
        raise ConfigError("give at least one policy", field="policies")
    return names


def _run(scenario: Scenario, console: Console):
    from servesim.sim.simulator import simulate  # imported lazily: keeps `servesim --help` fast

    return simulate(scenario, progress=console.is_terminal)


@click.command("simulate", context_settings={"max_content_width": 120, "terminal_width": 120})
@click.option("--policies", help="comma-separated policies: run each on the same workload, side by side")
@_common
def simulate_cmd(policies, config, output_dir, chrome_trace, as_json, **flags):
    """Simulate a deployment serving a workload; print TTFT/TPOT/ITL/E2E, throughput, goodput, cost.

    With no options: Llama-3.1-8B on one H100-SXM, chunked prefill, FCFS, the Azure 2023
    conversation trace at its own times.
    """
    base = _scenario(config, flags)
    if policies:
        _compare(base, _policies(policies), None, output_dir, as_json)
        return
    console = Console()
    result = _run(base, console)
    if output_dir:
        from servesim.sim.outputs import write_outputs

        write_outputs(output_dir, result.requests, result.timeline, result.summary, result.meta,
                      chrome_trace=chrome_trace)
    if as_json:
        from servesim.sim.outputs import dumps_json, summary_document

        click.echo(dumps_json(summary_document(result.summary, result.meta)), nl=False)
        return
    from servesim.sim.outputs import render_summary

    render_summary(result.summary, console, title=f"{base.model} on {base.tp * base.pp * base.replicas}× {base.gpu}")
    reasons = result.requests.loc[result.requests.rejected_reason != "", "rejected_reason"]
    if len(reasons):
        console.print(f"{len(reasons)} requests rejected; most common reason: {reasons.mode().iloc[0]}")
    if output_dir:
        console.print(f"wrote {Path(output_dir)}")


@click.command("compare", context_settings={"max_content_width": 120, "terminal_width": 120})
@click.option("--policies", default="fcfs,sjf", show_default=True, help="comma-separated policies to compare")
@click.option("--rates", help="comma-separated arrival rates, requests/s: compare at each load")
@click.option("--slowdown-by", type=click.Choice(["input_tokens", "output_tokens", "total"]), default="total",
              show_default=True, help="request size measure for the slowdown table")
@_common
def compare_cmd(policies, rates, slowdown_by, config, output_dir, chrome_trace, as_json, **flags):
    """Run the same workload under several policies (and loads); side-by-side table and slowdown by size."""
    base = _scenario(config, flags)
    loads = None
    if rates:
        try:
            loads = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"rates must be numbers, got {rates!r}", field="rates") from None
    _compare(base, _policies(policies), loads, output_dir, as_json, slowdown_by)


def _compare(base: Scenario, policies: list[str], rates: list[float] | None, output_dir, as_json,
             slowdown_by: str = "total") -> None:
    from servesim.sim.metrics import slowdown_by_size
    from servesim.sim.outputs import dumps_json, render_comparison, render_slowdown, write_outputs

    console = Console()
    summaries, slowdowns, docs = {}, {}, {}
    for rate in rates or [base.rate]:
        for policy in policies:
            scenario = base.model_copy(update={"policy": policy, "rate": rate})
            make_scenario(scenario.model_dump())  # re-validate the combination
            label = policy if rate is None else f"{policy} @ {rate:g}/s"
            result = _run(scenario, console)
            summaries[label] = result.summary
            slowdowns[label] = slowdown_by_size(result.requests, by=slowdown_by)
            docs[label] = {"summary": result.summary, "slowdown": slowdowns[label].to_dict(orient="records")}
            if output_dir:
                sub = Path(output_dir) / label.replace(" @ ", "_at_").replace("/", "per")
                write_outputs(sub, result.requests, result.timeline, result.summary, result.meta)
    if as_json:
        click.echo(dumps_json(docs), nl=False)
        return
    render_comparison(summaries, console, title=f"{base.model} on {base.gpu}: policies side by side")
    render_slowdown(slowdowns, console, title=f"slowdown (E2E / E2E alone) by {slowdown_by.replace('_', ' ')}")


def register(group: click.Group) -> None:
    group.add_command(simulate_cmd)
    group.add_command(compare_cmd)


__all__ = ["register", "json"]
