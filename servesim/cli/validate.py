"""``servesim validate``: prediction vs a real run of the same scenario (the engine, an external engine's result
files, or a whole suite of cases), as a report in markdown, JSON and plotly HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from servesim.cli.app import SectionedCommand, app
from servesim.cli.simulate import _CONFIG, _scenario, with_scenario_flags
from servesim.errors import ConfigError
from servesim.sim.outputs import check_writable

_V = "Validation"
_TOOL = typer.Option(None, "--tool", help="vllm | guidellm | aiperf (default: detected)", rich_help_panel="Validation")
_SUITE = typer.Option(None, "--suite", metavar="FILE", rich_help_panel="Validation",
                      help="run every case of a suite file (resumes: reported cases are skipped)")
_REPRICE = typer.Option(None, "--reprice", metavar="DIR", rich_help_panel="Validation",
                        help="predict the reports under --out-dir again on the CPU with today's cost model (or "
                             "--profile), measured runs unchanged; write them and the suite table into DIR and exit")
_HOST = typer.Option(False, "--host-norm/--no-host-norm", rich_help_panel="Validation",
                     help="price at the measured run's host speed: the profile's host-time terms (overheads, eager "
                          "and piecewise floors) scaled by the run's scheduler time against calibration's; the "
                          "errors at the scenario's own host_speed are reported beside (engine runs and --reprice)")
_OUT = typer.Option(Path("validation-report"), "--out-dir", metavar="DIR", help="where the report goes",
                    rich_help_panel=_V)


@app.command("validate", cls=SectionedCommand, context_settings={"max_content_width": 100})
@with_scenario_flags
def validate_cmd(
    config: Optional[Path] = _CONFIG,  # noqa: UP045
    out_dir: Path = _OUT,
    from_files: Optional[str] = typer.Option(  # noqa: UP045
        None, "--from-files", metavar="FILE", rich_help_panel=_V,
        help="compare with an external engine's results (vLLM bench serve JSON, GuideLLM benchmarks.json, AIPerf)"),
    tool: Optional[str] = _TOOL,  # noqa: UP045
    benchmark: Optional[int] = typer.Option(None, "--benchmark", metavar="N", rich_help_panel=_V,  # noqa: UP045
                                            help="with --from-files: which benchmark of a file that holds several"),
    suite: Optional[Path] = _SUITE,  # noqa: UP045
    cases: Optional[str] = typer.Option(None, "--cases", metavar="LIST", rich_help_panel=_V,  # noqa: UP045
                                        help="with --suite: only these cases"),
    time_scale: float = typer.Option(1.0, "--time-scale", metavar="X", rich_help_panel=_V,
                                     help="arrivals X times faster than the trace's (both runs)"),
    device: str = typer.Option("cuda", "--device", help="engine device: cuda, or cpu (torch reference kernels)",
                               rich_help_panel=_V),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="DIR", rich_help_panel=_V,  # noqa: UP045
                                          help="local safetensors directory (default: random weights)"),
    rerender: bool = typer.Option(False, "--rerender", rich_help_panel=_V,
                                  help="redraw the pages of the reports under --out-dir from their data and exit"),
    reprice: Optional[Path] = _REPRICE,  # noqa: UP045
    host_norm: bool = _HOST,
    **fields,
) -> None:
    """Replay on the engine and simulate the same workload; report predicted vs measured latency percentiles,
    throughput and every iteration's step time."""
    from servesim.cli.progress import progress_bar
    from servesim.cli.render import make_console
    from servesim.validate.report import markdown, write_report
    from servesim.validate.run import EngineOptions, run_suite, validate_engine, validate_files

    if not time_scale > 0:
        raise ConfigError(f"must be > 0, got {time_scale}", field="time_scale")
    check_writable(out_dir)
    console = make_console(stderr=True)
    if rerender:
        from servesim.validate.report import rerender as redraw

        dirs = sorted(p.parent for p in Path(out_dir).glob("**/report.json"))
        if not dirs:
            raise ConfigError(f"no report.json under {out_dir}", field="out_dir")
        for d in dirs:
            redraw(d)
        typer.echo(f"redrew {len(dirs)} reports under {out_dir}")
        return
    if reprice is not None:
        from servesim.validate.run import reprice as reprice_case
        from servesim.validate.suite import suite_row, write_suite_table

        dirs = sorted(p.parent for p in Path(out_dir).glob("*/report.json"))
        if not dirs:
            raise ConfigError(f"no case reports (*/report.json) under {out_dir}", field="out_dir")
        if fields.get("piecewise_graphs") is not None:
            raise ConfigError("--reprice prices each stored run with its own piecewise_graphs setting (the engine's)",
                              field="piecewise_graphs")
        check_writable(reprice)
        rows = []
        for d in dirs:
            console.print(f"case {d.name}", highlight=False)
            report = reprice_case(d, fields.get("profile"), host_norm)
            write_report(report, reprice / d.name)
            rows.append(suite_row(d.name, report.title.split(": ", 1)[-1], report.to_json()))
        typer.echo(write_suite_table(rows, reprice))
        return
    opts = EngineOptions(device=device, weights=weights)
    if suite is not None:
        # --piecewise-graphs / --no-piecewise-graphs: every case's setting (else the suite file's)
        over = {} if fields.get("piecewise_graphs") is None else {"piecewise_graphs": fields["piecewise_graphs"]}
        rows = run_suite(suite, out_dir, opts, only=[c.strip() for c in cases.split(",")] if cases else None,
                         overrides=over, host_norm=host_norm,
                         on_case=lambda name: console.print(f"case {name}", highlight=False),
                         on_skip=lambda name, why: console.print(f"case {name} skipped: {why}", highlight=False))
        from servesim.validate.suite import write_suite_table

        table = write_suite_table(rows, out_dir)
        typer.echo(table)
        return
    if from_files:
        given = {k: v for k, v in fields.items() if v is not None}
        report, _ = validate_files(from_files, tool, given, benchmark=benchmark)
        write_report(report, out_dir)
    else:
        base = _scenario(config, fields)
        with progress_bar("replaying", "requests", console) as update:
            report, runs = validate_engine(base, opts, time_scale, on_progress=update, host_norm=host_norm)
        from servesim.sim.outputs import folder, run_writers

        pred, meas = runs["predicted"], runs["measured"]
        iterations = {"iterations.parquet": lambda p: runs["iterations"].to_parquet(p, index=False)}
        write_report(report, out_dir, extra={  # the report and both runs as one set
            "predicted": folder(run_writers(pred.requests, pred.timeline, pred.summary, pred.meta)),
            "measured": folder(run_writers(meas.requests, meas.timeline, meas.summary, meas.meta, extra=iterations))})
    typer.echo(markdown(report))
    typer.echo(f"wrote {out_dir}/report.md, report.json, report.html")
