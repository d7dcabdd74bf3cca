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

from servesim.cli.app import SectionedCommand, app
from servesim.cli.render import make_console
from servesim.errors import ConfigError, InputError, unknown_name
from servesim.sim.config import CHOICE_FIELDS, FIELD_GROUPS, Scenario, choices, make_scenario, read_scenario_values
from servesim.sim.outputs import check_writable

_GROUP_OF = {name: group for group, names in FIELD_GROUPS.items() for name in names}


_METAVAR = {int: "N", float: "X", str: "TEXT"}


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
    elif name in CHOICE_FIELDS:
        help_text += f" ({' | '.join(choices(name))})"
    if "default:" not in help_text:  # a description that says its default says it once
        default = info.default
        shown = "none" if default is None else ("on" if default else "off") if isinstance(default, bool) else default
        help_text += f" (default: {shown})"
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{name.replace('_', '-')}"] if base is bool else [flag]
    opt = typer.Option(None, *decls, help=help_text, show_default=False, rich_help_panel=_GROUP_OF[name],
                       metavar=_METAVAR.get(base))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=Optional[base])  # noqa: UP045


def with_scenario_flags(func):
    """Give ``func`` one keyword flag per Scenario field; it receives them in ``**fields``."""
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(func)
    def wrapper(**kwargs):
        return func(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + [_option(n) for n in Scenario.model_fields])
    if wrapper.__doc__:  # "{gpu}" and the like in the help text: the Scenario's defaults, never stale
        wrapper.__doc__ = wrapper.__doc__.format(**{n: f.default for n, f in Scenario.model_fields.items()})
    return wrapper


def _given(config: Path | None, fields: dict, pd: str | None = None) -> dict:
    """The values the scenario file and the flags give (flags win), not yet validated."""
    given = {k: v for k, v in fields.items() if v is not None}
    if pd is not None:
        given.update(_pd_pools(pd, given))
    return {**read_scenario_values(config), **given} if config else given


def _scenario(config: Path | None, fields: dict, pd: str | None = None) -> Scenario:
    return make_scenario(_given(config, fields, pd), source=str(config) if config else None)


def _pd_pools(text: str, given: dict) -> dict:
    """``--pd P:D``: the sizes of the prefill and decode pools (prefill_replicas, decode_replicas)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"expected P:D, two positive counts of replicas (e.g. 2:6), got {text!r}", field="pd")
    pools = {"prefill_replicas": int(parts[0]), "decode_replicas": int(parts[1])}
    for name, value in pools.items():
        if name in given and given[name] != value:
            raise ConfigError(f"--pd {text} disagrees with --{name.replace('_', '-')} {given[name]}", field="pd")
    return pools


def _names(text: str, field: str, option: str) -> list[str]:
    """A comma-separated list of ``field`` choices (canonical spelling), or a ConfigError naming ``option``."""
    known = {k.lower(): k for k in choices(field)}
    names = [p.strip() for p in text.split(",") if p.strip()]
    for p in names:
        if p.lower() not in known:
            raise ConfigError(unknown_name(field, p, choices(field)), field=option)
    if not names:
        raise ConfigError(f"give at least one {field}", field=option)
    return [known[p.lower()] for p in names]


def _policies(text: str) -> dict[str, dict]:
    """``--policies``: one compare run per policy, each the base scenario with that policy."""
    return {p: {"policy": p} for p in _names(text, "policy", "policies")}


def _presets(text: str) -> dict[str, dict]:
    """``--presets``: one compare run per engine preset, the values given overriding each preset's defaults."""
    return {p: {"preset": p} for p in _names(text, "preset", "presets")}


def _run(scenario: Scenario, console: Console):
    from servesim.cli.progress import progress_bar
    from servesim.sim.simulator import simulate  # imported here: keeps `servesim --help` fast

    with progress_bar("simulating", "requests", console) as update:
        return simulate(scenario, on_progress=update)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _rejections(requests) -> tuple[int, str, int]:
    """(rejected, the most common reason, how many share its kind); reasons differ only in their numbers."""
    import re
    from collections import Counter

    from servesim.sim.table import Table

    reasons = [x for x in Table.of(requests)["rejected_reason"].tolist() if isinstance(x, str) and x]
    if not reasons:
        return 0, "", 0
    kinds = [re.sub(r"\d[\d,.]*", "N", r) for r in reasons]
    counts = Counter(kinds)
    top = max(counts.values())
    main = min(k for k, c in counts.items() if c == top)  # ties: the first in sorted order, as pandas' mode
    return len(reasons), reasons[kinds.index(main)], top


def _outcome(result, label: str = "") -> list[str]:
    """Refuse a run whose every request was rejected (InputError: exit 2, nothing written); return the warnings
    a user should see: partial rejection, saturation, the deployment's own."""
    where = f"{label}: " if label else ""
    n = len(result.request_table)
    rejected, reason, alike = _rejections(result.request_table)
    if n and rejected == n:
        raise InputError(f"{where}all {_plural(n, 'request')} rejected; main reason ({alike:,} of them): {reason}")
    notes = [f"{where}{w}" for w in result.meta.get("warnings", ())]
    if rejected:
        notes.append(f"{where}{rejected:,} of {_plural(n, 'request')} rejected; main reason ({alike:,} of them): "
                     f"{reason}")
    s = result.summary
    if s.get("saturated"):
        notes.append(
            f"{where}saturated: it served {s['served_rate']:.2f} of {s['offered_rate']:.2f} req/s offered, and "
            f"requests waited through {100 * s['queue_busy_fraction']:.0f}% of the second half of the arrivals (queue "
            f"{s['waiting_at_half_arrivals']:,} half-way, {s['waiting_at_last_arrival']:,} at the last arrival); "
            f"latencies grow with the run's length"
        )
    return notes


def _warn(notes: list[str]) -> None:
    for note in notes:
        typer.echo(f"warning: {note}", err=True)


_CONFIG = typer.Option(None, "--config", metavar="PATH", help="YAML scenario file; flags override it")
_OUTPUT_DIR = typer.Option(None, "--output-dir", metavar="DIR",
                           help="write requests.parquet, timeline.parquet, summary.json")
_CHROME = typer.Option(False, "--chrome-trace", help="also write trace.json (Chrome trace of iterations)")
_JSON = typer.Option(False, "--json", help="print the summary as JSON")
_PD = typer.Option(None, "--pd", help="P:D - disaggregate prefill and decode into pools of P and D replicas "
                   "(sets prefill_replicas and decode_replicas)", rich_help_panel="Prefill/decode disaggregation")


@app.command("simulate", cls=SectionedCommand, context_settings={"max_content_width": 100})
@with_scenario_flags
def simulate_cmd(
    config: Optional[Path] = _CONFIG,  # noqa: UP045 (typer reads the annotation at run time)
    output_dir: Optional[Path] = _OUTPUT_DIR,  # noqa: UP045
    chrome_trace: bool = _CHROME,
    as_json: bool = _JSON,
    policies: Optional[str] = typer.Option(  # noqa: UP045
        None, "--policies", metavar="LIST", help="comma-separated policies: run each on the same workload, side by side"
    ),
    pd: Optional[str] = _PD,  # noqa: UP045
    **fields,
) -> None:
    """Simulate a deployment serving a workload; print TTFT/TPOT/ITL/E2E, throughput, goodput, cost.

    With no options: {model} on one {gpu}, {batching} batching, {policy}, the {trace} trace at its
    own times.
    """
    base = _scenario(config, fields, pd)
    if policies:
        _compare(base, _policies(policies), None, output_dir, as_json)
        return
    if output_dir:
        check_writable(output_dir)
    console = make_console()
    result = _run(base, console)
    notes = _outcome(result)
    from servesim.cli.render import render_summary
    from servesim.sim.outputs import dumps_json, summary_document, write_outputs

    if output_dir:
        write_outputs(output_dir, result.requests, result.timeline, result.summary, result.meta,
                      chrome_trace=chrome_trace)
    if as_json:
        typer.echo(dumps_json(summary_document(result.summary, result.meta)), nl=False)
        _warn(notes)
        return
    meta = result.meta
    if base.disaggregated:
        pools = result.summary["pd"]
        fleet = "; ".join(
            f"{pool} {_plural(p['replicas'], 'replica')} of {p['gpus'] // p['replicas']}× {p['gpu']} (tp {p['tp']}"
            + (f", ep {p['ep']}" if p["ep"] > 1 else "") + f"): {p['kv_blocks_per_replica']:,} KV blocks each"
            for pool, p in ((k, pools[k]) for k in ("prefill", "decode"))
        )
        console.print(
            f"{base.model} on {fleet}; weights {base.quant}, KV {base.kv_dtype} over {pools['kv_transfer']['link']}"
            + (", overlapped by layer" if base.kv_overlap else ""),
            highlight=False, soft_wrap=True,
        )
    else:
        console.print(
            f"{base.model} on {meta['gpus_total']}× {base.gpu} (tp {base.tp}, pp {base.pp}, "
            f"{_plural(base.replicas, 'replica')}; weights {base.quant}, KV {base.kv_dtype}): "
            f"{meta['kv_blocks_per_replica']:,} KV blocks of {base.block_size} tokens per replica",
            highlight=False, soft_wrap=True,
        )
    workload = meta["workload"]
    engine = f"preset {base.preset}: " if base.preset else ""
    admission = "" if base.admission == "max_utilization" else f", {base.admission} admission"
    console.print(
        f"{engine}{base.batching} batching{admission}, {base.policy}; workload {workload['name']} "
        f"({_plural(workload['requests'], 'request')}); cost model {meta['profile_id']}; seed {base.seed}; "
        f"config {meta['config_hash']}",
        highlight=False, soft_wrap=True,
    )
    for note in meta["workload"]["notes"]:
        console.print(f"note: {note}", highlight=False)
    title = f"{base.model} on {meta['gpus_total']} GPUs" if base.disaggregated else (
        f"{base.model} on {meta['gpus_total']}× {base.gpu}")
    render_summary(result.summary, console, title=title)
    if base.disaggregated:
        from servesim.cli.render import render_pools

        render_pools(result.summary["pd"], console)
    if output_dir:
        console.print(f"wrote {output_dir}", highlight=False)
    _warn(notes)


@app.command("compare", cls=SectionedCommand, context_settings={"max_content_width": 100})
@with_scenario_flags
def compare_cmd(
    policies: str = typer.Option("fcfs,sjf", "--policies", metavar="LIST", show_default=False,
                                 help="comma-separated policies to compare (default: fcfs,sjf)"),
    presets: Optional[str] = typer.Option(  # noqa: UP045
        None, "--presets", metavar="LIST",
        help="comma-separated engine presets to compare instead of policies, e.g. vllm,tensorrt-llm,llamacpp,static"
    ),
    rates: Optional[str] = typer.Option(  # noqa: UP045
        None, "--rates", metavar="LIST", help="comma-separated arrival rates, requests/s: compare at each load"
    ),
    slowdown_by: str = typer.Option(
        "total", "--slowdown-by", metavar="TEXT", show_default=False,
        help="request size for the slowdown table (input_tokens | output_tokens | total) (default: total)"
    ),
    config: Optional[Path] = _CONFIG,  # noqa: UP045
    output_dir: Optional[Path] = _OUTPUT_DIR,  # noqa: UP045
    as_json: bool = _JSON,
    **fields,
) -> None:
    """Run the same workload under several policies or engine presets (and loads); side-by-side table and
    slowdown by size.

    With --presets each run is one engine's personality (docs/engines.md), the flags given overriding its
    defaults. Every variant and rate is checked before anything runs; with --output-dir each run gets a
    folder such as fcfs/, vllm/ or, with --rates, fcfs_rate10/.
    """
    given = _given(config, fields)
    base = make_scenario(given, source=str(config) if config else None)
    loads = None
    if rates:
        try:
            loads = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"rates must be numbers, got {rates!r}", field="rates") from None
    if presets:
        _compare(base, _presets(presets), loads, output_dir, as_json, slowdown_by, values=given, axis="presets")
    else:
        _compare(base, _policies(policies), loads, output_dir, as_json, slowdown_by)


class _Resume:
    """The runs of an unfinished ``compare --output-dir DIR``, each written whole as it finishes into the hidden
    sibling ``.DIR.resume/<scenario key>/``, so a rerun after an interrupt simulates only the runs it lacks; removed
    once the set is written (or the compare fails for another reason)."""

    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir.parent / f".{out_dir.name}.resume"

    def _dir(self, scenario: Scenario) -> Path:
        from servesim.plan.cache import scenario_key

        return self.root / scenario_key(scenario)

    def get(self, scenario: Scenario):
        """The finished run of ``scenario``, read back, or None."""
        import json

        from servesim.sim.outputs import read_outputs
        from servesim.sim.result import Result

        d = self._dir(scenario)
        if not (d / "run.json").is_file():
            return None
        try:
            back = read_outputs(d)
            meta = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except (InputError, OSError, ValueError):
            return None
        summary = {k: v for k, v in back["summary"].items() if k != "meta"}
        return Result(scenario, back["requests"], back["timeline"], None, None, summary, meta)

    def put(self, scenario: Scenario, result) -> None:
        from servesim.sim.outputs import write_outputs

        write_outputs(self._dir(scenario), result.requests, result.timeline, result.summary, result.meta, record=False)

    def count(self) -> int:
        return sum(1 for d in self.root.iterdir() if (d / "run.json").is_file()) if self.root.is_dir() else 0

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def _run_name(variant: str, rate: float | None) -> str:
    """The folder of one compare run: ``fcfs``, or ``fcfs_rate10`` at 10 requests/s."""
    return variant if rate is None else f"{variant}_rate{rate:g}"


def _compare(base: Scenario, variants: dict[str, dict], rates: list[float] | None, output_dir: Path | None,
             as_json: bool, slowdown_by: str = "total", values: dict | None = None, axis: str = "policies") -> None:
    """Run ``base`` (or the raw ``values`` it came from, when a variant is a preset whose defaults they must
    override) with each variant's fields at each rate, and show them side by side."""
    from servesim.cli.render import render_comparison, render_slowdown
    from servesim.sim.metrics import SIZE_MEASURES, slowdown_by_size
    from servesim.sim.outputs import dumps_json, folder, run_writers, write_files

    if slowdown_by not in SIZE_MEASURES:
        raise ConfigError(f"must be one of {', '.join(SIZE_MEASURES)}, got {slowdown_by!r}", field="slowdown_by")
    # Every scenario is validated (policies, rates, the deployment) before the first one runs.
    runs: dict[tuple[float | None, str], Scenario] = {}
    start = base.model_dump() if values is None else values
    policies = list(variants)
    for rate in rates or [base.rate]:
        for policy, overrides in variants.items():
            try:
                runs[rate, policy] = make_scenario({**start, **overrides, "rate": rate})
            except ConfigError as exc:
                if exc.field == "rate":
                    raise ConfigError(f"{rate:g}: {exc.problem}", field="rates") from None
                raise
    from servesim.sim.deployment import build_deployment

    for scenario in {v.preset: v for v in runs.values()}.values():  # one deployment per preset
        build_deployment(scenario)  # a deployment that cannot work fails here, not after a run
    if output_dir:
        check_writable(output_dir)
    console = make_console()
    results, notes = {}, []
    resume = _Resume(Path(output_dir)) if output_dir else None
    try:
        for (rate, policy), scenario in runs.items():
            label = policy if rate is None else f"{policy} @ {rate:g}/s"
            result = resume.get(scenario) if resume else None
            if result is None:
                result = _run(scenario, console)
                if resume:
                    resume.put(scenario, result)
            results[rate, policy] = result
            notes += _outcome(result, label)  # an all-rejected run stops here, before anything is written
        slowdowns = {key: slowdown_by_size(r.requests, by=slowdown_by) for key, r in results.items()}
        if output_dir:  # the run folders as one set: all of this compare's, or the previous ones untouched
            write_files(output_dir, {_run_name(policy, rate): folder(run_writers(r.requests, r.timeline, r.summary,
                                                                                 r.meta))
                                     for (rate, policy), r in results.items()})
    except KeyboardInterrupt as exc:
        if resume:
            exc.resume = (f"{resume.count()} finished runs are kept in {resume.root}: run the same command again "
                          "to resume")
        raise
    except BaseException:
        if resume:
            resume.clear()
        raise
    if resume:
        resume.clear()
    if as_json:
        docs = {(p if rate is None else f"{p} @ {rate:g}/s"): {
            "summary": r.summary, "slowdown": slowdowns[rate, p].to_dict(orient="records")}
            for (rate, p), r in results.items()}
        typer.echo(dumps_json(docs), nl=False)
        _warn(notes)
        return
    size = slowdown_by.replace("_", " ")
    for rate in rates or [base.rate]:
        at = "" if rate is None else f" at {rate:g} req/s"
        render_comparison({p: results[rate, p].summary for p in policies}, console,
                          title=f"{base.model} on {base.gpu}: {axis} side by side{at}")
        render_slowdown({p: slowdowns[rate, p] for p in policies}, console,
                        title=f"slowdown (E2E / E2E alone) by {size}{at}")
    if output_dir:
        console.print(f"wrote {output_dir}/{{{','.join(_run_name(p, r) for r, p in runs)}}}", highlight=False)
    _warn(notes)
