"""``servesim calibrate``: time the engine's operators on this machine's GPU and write a profile;
``servesim calibrate report FILE``: the profile against the roofline (markdown, JSON, plotly HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from servesim.cli.app import app
from servesim.errors import ConfigError

cal = typer.Typer(help="Calibrate the cost model on this machine's GPU, or report on a profile.",
                  invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None)
app.add_typer(cal, name="calibrate")


_OUT = typer.Option(None, "--out", help="profile file (default: <gpu>-<date>.json)")
_PROFILE = typer.Argument(..., help="a profile JSON written by servesim calibrate")
_REPORT_DIR = typer.Option(Path("calibration-report"), "--out-dir", help="where report.{md,json,html} go")


def _csv(text: str, field: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise ConfigError("give at least one value", field=field)
    return items


@cal.callback()
def calibrate_cmd(
    ctx: typer.Context,
    models: str = typer.Option("Llama-3.1-8B", "--models", help="comma-separated models whose shapes to time"),
    quant: str = typer.Option("bf16,w8a16,w4a16", "--quant", help="weight formats"),
    kv_dtype: str = typer.Option("bf16,fp8", "--kv-dtype", help="KV-cache dtypes"),
    tp: str = typer.Option("1,2,4,8", "--tp", help="tensor-parallel degrees whose GEMM and head shapes to time"),
    out: Optional[Path] = _OUT,  # noqa: UP045
    budget_min: Optional[float] = typer.Option(  # noqa: UP045
        None, "--budget-min", help="trim the grid to fit this many minutes"),
    device: str = typer.Option("cuda", "--device", help="cuda, or cpu (torch reference path, tiny grid)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="catalog GPU name (default: read off the device)"),  # noqa: UP045
    step_requests: int = typer.Option(160, "--step-requests", help="requests of the engine run that fits step terms"),
) -> None:
    """Time GEMMs, attention, elementwise, sampling and verification over a serving grid, fit the whole-step
    terms on an engine run, write the profile and its fit quality."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        import torch
    except ImportError:
        raise ConfigError("calibration needs torch and triton: pip install 'servesim[gpu]'", field="device") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device here: calibrate on a GPU machine, or --device cpu for the CPU reference "
                          "path", field="device")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device must be cuda or cpu, got {device!r}", field="device")
    try:
        tps = tuple(int(x) for x in _csv(tp, "tp"))
    except ValueError:
        raise ConfigError(f"tp must be integers, got {tp!r}", field="tp") from None
    from servesim.calibrate.run import calibrate
    from servesim.cli.progress import progress_bar
    from servesim.cli.render import make_console
    from servesim.hwmodels.profile import save_profile

    console = make_console(stderr=True)
    command = f"servesim calibrate --models {models} --quant {quant} --kv-dtype {kv_dtype} --tp {tp}" + (
        f" --budget-min {budget_min:g}" if budget_min else "") + (f" --device {device}" if device != "cuda" else "")
    if out is not None:
        from servesim.sim.outputs import check_writable

        check_writable(out.parent if str(out.parent) else Path("."))
    with progress_bar("calibrating", "points", console) as update:
        result = calibrate(list(_csv(models, "models")), _csv(quant, "quant"), _csv(kv_dtype, "kv_dtype"), tps,
                           budget_min, device, command, step_requests=step_requests, on_progress=update, gpu=gpu)
    prof = result.profile
    path = out or Path(f"{prof.gpu.lower()}-{prof.provenance.date}.json")
    save_profile(prof, path)
    if result.iterations:  # the engine iterations the step terms were fitted on, for diagnosis
        import pandas as pd

        pd.concat(result.iterations.values()).to_parquet(path.with_suffix(".steps.parquet"), index=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    fit = prof.fit
    worst = max((s["median_abs"] for s in fit.ops.values() if s["points"]), default=float("nan"))
    typer.echo(f"wrote {path}: {len(prof.tables)} tables, {sum(len(t.median_s) for t in prof.tables):,} points in "
               f"{prof.provenance.wall_s:.0f} s on {prof.provenance.gpu_name}; held-out operator error (worst "
               f"family median) {worst:.1%}; " + ", ".join(f"steps {f} {s['median_abs']:.1%}"
                                                           for f, s in fit.steps.items()))


@cal.command("report")
def report_cmd(
    profile: Path = _PROFILE,
    out_dir: Path = _REPORT_DIR,
) -> None:
    """Per operator: measured against the roofline, fit quality, whole-step terms; a table and a plotly page."""
    from servesim.calibrate.report import write_report
    from servesim.hwmodels.profile import load_profile
    from servesim.sim.outputs import check_writable

    prof = load_profile(profile)
    check_writable(out_dir)
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError("the HTML report needs plotly: pip install 'servesim[app]'", field="out_dir") from None
    files = write_report(prof, out_dir)
    typer.echo((out_dir / "report.md").read_text())
    typer.echo("wrote " + ", ".join(str(p) for p in files.values()))


_STEPS = typer.Option(None, "--steps", help="the engine iterations calibration fitted on (<profile>.steps.parquet): "
                      "refit the host terms too (needs scipy)")


@cal.command("refit")
def refit_cmd(profile: Path = _PROFILE, steps: Optional[Path] = _STEPS) -> None:  # noqa: UP045
    """Recompute a profile's terms that its measurements alone fit (the longest-context weight of ragged decode
    batches; with --steps, the host time per step), in place."""
    from servesim.calibrate.fit import refit
    from servesim.hwmodels.profile import load_profile, save_profile

    new = refit(load_profile(profile))
    if steps is not None:
        import pandas as pd

        from servesim.calibrate.run import refit_steps

        new = refit_steps(new, pd.read_parquet(steps))
    if not new.profile_id.endswith("-refit"):  # another fit of the same measurements: say so in every run's id
        new = new.model_copy(update={"profile_id": new.profile_id + "-refit"})
    save_profile(new, profile)
    typer.echo(f"{profile}: longest-context weight {new.decode_max_weight:.2f}; " + ", ".join(
        f"{k}: median {v['median_abs']:.1%}, p90 {v['p90_abs']:.1%}" for k, v in new.fit.ops.items()
        if k.startswith("attn_decode_ragged")))
