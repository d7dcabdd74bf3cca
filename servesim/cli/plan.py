"""``servesim sweep GRID.yaml`` and ``servesim plan``: scenarios in parallel, and the cheapest configuration
that serves a rate under SLOs (the work is in servesim.plan; tables and progress live here)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from servesim.cli.app import app
from servesim.errors import InputError

_JOBS = typer.Option(None, "--jobs", "-j", help="local worker processes (default: all cores)")
_DASK = typer.Option(None, "--dask", help="run on the Dask cluster at ADDRESS (tcp://host:8786) instead")
_CACHE = typer.Option(None, "--cache-dir", help="result cache (default: OUTPUT_DIR/cache); a rerun resumes")
_OUT = typer.Option(None, "--output-dir", "-o", help="where the tables and plots go")
_GRID = typer.Argument(..., help="grid YAML: 'base' Scenario fields and 'axes' (field: [values])")
_BASE = typer.Option(None, "--config", help="YAML of Scenario fields all candidates share")


def _list(text: str | None, what: str, cast=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        items = [cast(t) for t in items]
    except ValueError:
        raise InputError(f"'{text}' is not a comma-separated list of {cast.__name__}", field=what) from None
    if not items:
        raise InputError("give at least one value", field=what)
    return items


def _value(text: str):
    return None if text.lower() in ("none", "null") else text


def _axes(specs: list[str]) -> dict[str, list]:
    axes = {}
    for spec in specs:
        name, eq, values = spec.partition("=")
        if not eq or not values.strip():
            raise InputError(f"'{spec}' is not FIELD=V1,V2,...", field="axis")
        axes[name.strip().replace("-", "_")] = [_value(v) for v in _list(values, "axis")]
    return axes


def _console() -> Console:
    # Through a pipe, wide plain text instead of a table squeezed into 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=260, no_color=True, highlight=False)


def _progress(label: str, unit: str, console: Console):
    from servesim.cli.progress import progress_bar

    return progress_bar(label, unit, console)


@contextlib.contextmanager
def _resumable(cache: Path):
    """An interrupt (Ctrl-C, SIGTERM) carries how to resume: the scenarios finished so far are in ``cache``."""
    try:
        yield
    except KeyboardInterrupt as exc:
        from servesim.plan.cache import ResultCache

        exc.resume = (f"{len(ResultCache(cache))} finished scenarios are cached in {cache}: run the same command "
                      "again to resume")
        raise


def _cell(v: object, digits: int = 4) -> str:
    from servesim.cli.render import fmt

    if isinstance(v, float):
        return fmt(v, 2) if abs(v) >= 100 else f"{v:.{digits}g}"
    return fmt(v)


@app.command("sweep")
def sweep_cmd(
    grid: Path = _GRID,
    output_dir: Optional[Path] = _OUT,  # noqa: UP045 (typer reads the annotation at run time)
    jobs: Optional[int] = _JOBS,  # noqa: UP045
    dask: Optional[str] = _DASK,  # noqa: UP045
    cache_dir: Optional[Path] = _CACHE,  # noqa: UP045
    show: int = typer.Option(20, "--show", help="rows to print"),
) -> None:
    """Simulate every combination of a grid's axes in parallel; one row per scenario in results.csv/.parquet.

    Finished scenarios are cached by scenario hash, so an interrupted sweep resumes where it stopped.
    """
    from servesim.plan.grid import Grid
    from servesim.plan.sweep import sweep
    from servesim.sim.outputs import check_writable

    g = Grid.load(grid)
    scenarios = g.scenarios()  # every error before anything runs or is written
    out = check_writable(output_dir or Path(f"sweep-{grid.stem}"))
    console = _console()
    cache = cache_dir or out / "cache"
    with _resumable(cache), _progress("sweep", "scenarios", Console(stderr=True)) as update:
        result = sweep(scenarios, jobs=jobs, dask=dask, cache_dir=cache, on_progress=update)
        result.write(out)
    df = result.table
    varying = [f for name, points in g.axes for f in dict.fromkeys(k for p in points for k in p)]
    shown = [c for c in ("p99_ttft_ms", "p99_tpot_ms", "output_throughput", "usd_per_hour", "profile_id")
             if c in df]
    t = Table(*varying, "status", *shown, title=f"{len(df)} scenarios", box=None)
    for _, row in df.head(show).iterrows():
        t.add_row(*(_cell(row[c]) for c in varying), row["status"], *(_cell(row.get(c)) for c in shown))
    console.print(t)
    if len(df) > show:
        console.print(f"... {len(df) - show} more rows in {out / 'results.csv'}")
    console.print(f"{len(df)} scenarios ({result.cached} from the cache) in {result.wall_s:.1f} s on "
                  f"{result.workers} workers; wrote {out}", highlight=False)
    errors = df[df["status"] == "error"]
    if len(errors):
        typer.echo(f"error: {len(errors)} scenarios crashed (status 'error' in results.csv); first: "
                   f"{errors['reason'].iloc[0]}", err=True)
        raise typer.Exit(1)


@app.command("plan")
def plan_cmd(
    model: str = typer.Option(..., "--model", help="catalog model or a config.json"),
    rate: float = typer.Option(..., "--rate", help="target rate to serve, requests/s"),
    slo: str = typer.Option(..., "--slo", help="percentile limits, ms: ttft_p99_ms=2000,tpot_p99_ms=80"),
    workload: str = typer.Option("azure-conv", "--workload", help="built-in trace or a trace file"),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="candidate GPUs (default: H100-SXM,H200,A100-80GB-SXM)"),  # noqa: UP045
    quant: Optional[str] = typer.Option(None, "--quant", help="weight formats (default: bf16,w8a16,w4a16)"),  # noqa: UP045
    tp: Optional[str] = typer.Option(None, "--tp", help="tensor-parallel degrees (default: 1,2,4,8)"),  # noqa: UP045
    ep: Optional[str] = typer.Option(None, "--ep", help="MoE: expert-parallel degrees, or auto (every one the model "  # noqa: UP045
                                     "and each tp take; default 1)"),
    pd: str = typer.Option("off", "--pd", help="prefill/decode units too: P:D ratios (2:1,1:3), auto (the best "
                           "ratio per pool configuration, walked), or off"),
    prefill_tp: Optional[str] = typer.Option(None, "--prefill-tp", help="P/D: prefill-pool TP degrees (default: "  # noqa: UP045
                                             "--tp, paired with the decode pool's)"),
    decode_tp: Optional[str] = typer.Option(None, "--decode-tp", help="P/D: decode-pool TP degrees (default: --tp)"),  # noqa: UP045
    prefill_gpus: Optional[str] = typer.Option(None, "--prefill-gpus", help="P/D: prefill-pool GPUs (default: "  # noqa: UP045
                                               "--gpus, the same as the decode pool's)"),
    decode_gpus: Optional[str] = typer.Option(None, "--decode-gpus", help="P/D: decode-pool GPUs (default: --gpus)"),  # noqa: UP045
    kv_link: Optional[str] = typer.Option(None, "--kv-link", help="P/D: KV links to try: nvlink, pcie, ib, roce "  # noqa: UP045
                                          "(default: ib)"),
    pd_max_gpus: int = typer.Option(8, "--pd-max-gpus", help="P/D auto: most GPUs in one prefill:decode unit"),
    axis: list[str] = typer.Option([], "--axis", help="more candidates: FIELD=V1,V2 (any Scenario field; repeat)"),  # noqa: B008
    budget: Optional[float] = typer.Option(None, "--budget", help="most $/hour to spend"),  # noqa: UP045
    config: Optional[Path] = _BASE,  # noqa: UP045
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="requests per probe (default 1000)"),  # noqa: UP045
    verify: int = typer.Option(3, "--verify", help="check this many of the cheapest as whole deployments"),
    rel_tol: float = typer.Option(0.02, "--rel-tol", help="capacity search precision (relative)"),
    top: int = typer.Option(5, "--top", help="configurations to print"),
    output_dir: Optional[Path] = _OUT,  # noqa: UP045
    jobs: Optional[int] = _JOBS,  # noqa: UP045
    dask: Optional[str] = _DASK,  # noqa: UP045
    cache_dir: Optional[Path] = _CACHE,  # noqa: UP045
) -> None:
    """The cheapest configurations that serve RATE under the SLOs: per configuration, the highest rate one
    replica sustains (searched), the replicas and $/hour for RATE, margins, why the others fail, and the
    Pareto frontiers (pareto.html)."""
    from servesim.plan import DEFAULT_GPUS, DEFAULT_QUANTS, DEFAULT_TPS, plan
    from servesim.plan.candidates import PD_AUTO, PD_OFF
    from servesim.sim.config import load_scenario
    from servesim.sim.outputs import check_writable

    base = {}
    if config is not None:
        base = load_scenario(config).model_dump(exclude_unset=True)
    if num_requests is not None:
        base.update(num_requests=num_requests, duration_s=None, start_s=None)
    out = check_writable(output_dir or Path(f"plan-{Path(model).stem}-{rate:g}rps"))
    console = _console()
    eps = ep if ep is not None and ep.strip().lower() == PD_AUTO else _list(ep, "ep", int)
    cache = cache_dir or out / "cache"
    with _resumable(cache), _progress("plan", "probes", Console(stderr=True)) as update:
        result = plan(model, rate, slo, workload=workload, gpus=_list(gpus, "gpus") or DEFAULT_GPUS,
                      quants=_list(quant, "quant") or DEFAULT_QUANTS, tps=_list(tp, "tp", int) or DEFAULT_TPS,
                      eps=eps, pd=pd or PD_OFF, prefill_tps=_list(prefill_tp, "prefill_tp", int),
                      decode_tps=_list(decode_tp, "decode_tp", int), prefill_gpus=_list(prefill_gpus, "prefill_gpus"),
                      decode_gpus=_list(decode_gpus, "decode_gpus"), kv_links=_list(kv_link, "kv_link"),
                      pd_max_gpus=pd_max_gpus, axes=_axes(axis), base=base, budget_usd_per_hour=budget,
                      rel_tol=rel_tol, verify=verify, jobs=jobs, dask=dask, cache_dir=cache, on_progress=update)
        result.write(out)
    _render_plan(result, console, model, workload, top)
    console.print(f"wrote {out} (configs.csv, probes.csv, pareto.html)", highlight=False)


def _render_plan(result, console: Console, model: str, workload: str, top: int) -> None:
    cfg = result.configs
    ok = result.cheapest(top)
    profiles = ", ".join(sorted(set(result.probes["profile_id"]))) if len(result.probes) else "-"
    console.print(f"{model}, {workload} at {result.target_rps:g} req/s, SLO {result.limits.label()}: "
                  f"{len(cfg)} configurations, {len(result.probes)} probes in {result.wall_s:.1f} s on "
                  f"{result.workers} workers; cost model: {profiles}", highlight=False)
    margins = [f"margin_{k}" for k in result.limits.limits_ms]
    pools = "pd" in cfg and (cfg["pd"].fillna("") != "").any()
    pool_cols = ["prefill_busy_fraction_at_capacity", "decode_busy_fraction_at_capacity",
                 "p99_kv_transfer_ms_at_capacity"] if pools else []
    t = Table("configuration", "replicas", "GPUs", "$/hour", "req/s per replica", "headroom", "limited by",
              "verified", *(m.removeprefix("margin_") + " margin" for m in margins),
              *(("prefill busy", "decode busy", "KV p99 ms") if pools else ()),
              title="cheapest configurations" + (" (a P:D unit counts as one replica)" if pools else ""), box=None)
    t.columns[0].no_wrap = True
    for _, r in ok.iterrows():
        t.add_row(r["label"], str(int(r["replicas"])), str(int(r["gpus_total"])), f"{r['usd_per_hour']:.2f}",
                  f"{r['capacity_rps']:.3g}", f"{r['headroom']:.0%}", str(r["limited_by"]),
                  "yes" if str(r.get("verified")) == "True" else "no",
                  *("-" if m not in r or r[m] != r[m] else f"{r[m]:.0%}" for m in margins),
                  *("-" if c not in r or r[c] != r[c] else f"{r[c]:.0%}" if "busy" in c else f"{r[c]:.3g}"
                    for c in pool_cols))
    console.print(t)
    rejected = result.rejected()
    if len(rejected):
        t = Table("rejected", "why", "reason", box=None)
        for _, r in rejected.iterrows():
            t.add_row(r["label"], r["reject_kind"], r["reason"])
        console.print(t)
    if not len(ok):
        console.print("no configuration meets the SLOs at this rate", style="bold red")
