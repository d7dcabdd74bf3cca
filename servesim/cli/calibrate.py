"""``servesim calibrate``: time the engine's operators on this machine's GPU and write a profile;
``servesim calibrate report FILE``: the profile against the roofline (markdown, JSON, plotly HTML);
``servesim calibrate allreduce --profile FILE --tp 2,4``: add tensor-parallel collectives timed on N GPUs."""

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


def _ints(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text, field))
    except ValueError:
        raise ConfigError(f"{field} must be integers, got {text!r}", field=field) from None


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
    steps_in: str = typer.Option("auto", "--steps-in", help="where that engine runs: fresh (a new process, as a "
                                 "server starts), same (this one), auto (fresh on CUDA, same on the CPU)"),
    step_modes: str = typer.Option("eager,piecewise", "--step-modes", help="engine runs the step terms are fitted "
                                   "on: eager (the default engine: decode graphs, eager prefill; always) and "
                                   "piecewise (a second run with piecewise CUDA graphs: the piecewise_* terms)"),
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
    tps = _ints(tp, "tp")
    from servesim.calibrate.run import STEP_PROCESSES

    if steps_in not in STEP_PROCESSES:
        raise ConfigError(f"--steps-in must be one of {', '.join(STEP_PROCESSES)}, got {steps_in!r}", field="steps_in")
    from servesim.calibrate.run import step_modes as parse_modes

    try:
        modes = parse_modes(step_modes)
    except ValueError as exc:
        raise ConfigError(str(exc), field="step_modes") from None
    from servesim.calibrate.run import calibrate
    from servesim.cli.progress import progress_bar
    from servesim.cli.render import make_console
    from servesim.hwmodels.profile import save_profile

    console = make_console(stderr=True)
    command = f"servesim calibrate --models {models} --quant {quant} --kv-dtype {kv_dtype} --tp {tp}" + (
        f" --budget-min {budget_min:g}" if budget_min else "") + (f" --device {device}" if device != "cuda" else "") + (
        f" --steps-in {steps_in}" if steps_in != "auto" else "") + (
        f" --step-modes {','.join(modes)}" if modes != ("eager", "piecewise") else "")
    if out is not None:
        from servesim.sim.outputs import check_writable

        check_writable(out.parent if str(out.parent) else Path("."))
    with progress_bar("calibrating", "points", console) as update:
        result = calibrate(list(_csv(models, "models")), _csv(quant, "quant"), _csv(kv_dtype, "kv_dtype"), tps,
                           budget_min, device, command, step_requests=step_requests, on_progress=update, gpu=gpu,
                           steps_in=steps_in, modes=modes)
    prof = result.profile
    path = out or Path(f"{prof.gpu.lower()}-{prof.provenance.date}.json")
    save_profile(prof, path)
    if result.iterations:  # the engine iterations the step terms were fitted on, for diagnosis
        import pandas as pd

        pd.concat(result.iterations.values()).to_parquet(path.with_suffix(".steps.parquet"), index=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    fit = prof.fit
    worst = max((s["median_abs"] for op, s in fit.ops.items() if s["points"] and "uniform model" not in op),
                default=float("nan"))  # the ragged tables against the uniform model are a diagnostic, not a fit
    typer.echo(f"wrote {path}: {len(prof.tables)} tables, {sum(len(t.median_s) for t in prof.tables):,} points "
               f"(+{sum(len(t.held_out_s) for t in prof.tables):,} held out) in {prof.provenance.wall_s:.0f} s on "
               f"{prof.provenance.gpu_name}; held-out operator error ({fit.method}, worst family median) {worst:.1%}; "
               + ", ".join(f"steps {f} {s['median_abs']:.1%}" + (f" (piecewise {s['piecewise_median_abs']:.1%})"
                                                                  if "piecewise_median_abs" in s else "")
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
                      "refit the host terms and re-judge whole steps too (needs scipy and torch)")


@cal.command("refit")
def refit_cmd(profile: Path = _PROFILE, steps: Optional[Path] = _STEPS) -> None:  # noqa: UP045
    """Recompute a profile's terms that its measurements alone fit (the longest-context weight of ragged decode
    batches, our quantized GEMMs' launch steps; with --steps, the host time per step), in place."""
    from servesim.calibrate.fit import refit
    from servesim.hwmodels.profile import load_profile, save_profile

    new = refit(load_profile(profile))
    if steps is not None:
        import pandas as pd

        from servesim.calibrate.run import held_out_step_errors, refit_steps

        its = pd.read_parquet(steps)
        new = refit_steps(new, its)
        model = new.provenance.command.split("--models", 1)[-1].split()[0].split(",")[0] if (
            "--models" in new.provenance.command) else "Llama-3.1-8B"
        new = new.model_copy(update={"fit": new.fit.model_copy(update={
            "steps": held_out_step_errors(new, its, model)})})  # the whole steps as the refit profile prices them
    if not new.profile_id.endswith("-refit"):  # another fit of the same measurements: say so in every run's id
        new = new.model_copy(update={"profile_id": new.profile_id + "-refit"})
    save_profile(new, profile)
    typer.echo(f"{profile}: longest-context weight {new.decode_max_weight:.2f}; " + ", ".join(
        f"{k}: median {v['median_abs']:.1%}, p90 {v['p90_abs']:.1%}" for k, v in new.fit.ops.items()
        if k.startswith("attn_decode_ragged")))


_AR_PROFILE = typer.Option(..., "--profile", help="the profile to add the collectives to (a profile JSON)")
_AR_OUT = typer.Option(None, "--out", help="where to write (default: --profile, in place)")


@cal.command("allreduce")
def allreduce_cmd(
    profile: Path = _AR_PROFILE,
    tp: str = typer.Option("2,4", "--tp", help="comma-separated TP degrees (GPUs at once) to time"),
    models: str = typer.Option("Llama-3.1-8B,Llama-3.1-70B", "--models",
                               help="models whose TP steps' message sizes to time"),
    out: Optional[Path] = _AR_OUT,  # noqa: UP045
    device: str = typer.Option("cuda", "--device", help="cuda (NCCL, one process per GPU), or cpu (gloo: checks "
                               "the pipeline; its times mean nothing for GPUs)"),
) -> None:
    """Time the all-reduces and the logits all-gather of a tensor-parallel step over the message sizes it sends,
    one process per GPU, and store them in the profile (version 2); the calibrated cost model then prices TP
    collectives from them instead of the roofline's link figures."""
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device must be cuda or cpu, got {device!r}", field="device")
    tps = _ints(tp, "tp")
    if any(t < 2 for t in tps):
        raise ConfigError(f"collectives need TP of at least 2, got {tp}", field="tp")
    from servesim.hwmodels.profile import load_profile, save_profile

    prof = load_profile(profile)
    target = out or profile
    from servesim.sim.outputs import check_writable

    check_writable(target.parent if str(target.parent) else Path("."))
    try:
        import torch
    except ImportError:
        raise ConfigError("calibration needs torch: pip install 'servesim[gpu]'", field="device") from None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device here: time collectives on a multi-GPU machine, or --device cpu to "
                              "check the pipeline", field="device")
        from servesim.calibrate.run import catalog_gpu

        here = catalog_gpu(torch.cuda.get_device_name())
        if here != prof.gpu:
            raise ConfigError(f"{profile} was measured on {prof.gpu}; this machine's GPUs are {here}",
                              field="profile")
    from servesim.calibrate.collectives import calibrate_collectives
    from servesim.cli.progress import progress_bar
    from servesim.cli.render import make_console

    command = f"servesim calibrate allreduce --tp {tp} --models {models}" + (
        f" --device {device}" if device != "cuda" else "")
    with progress_bar("timing collectives", "sizes", make_console(stderr=True)) as update:
        new = calibrate_collectives(prof, tps, device, list(_csv(models, "models")), command, on_progress=update)
    save_profile(new, target)
    lines = []
    for t in new.tables:
        if t.op in ("allreduce", "allgather") and t.key["tp"] in tps:
            (b0, *_, b1), (s0, *_, s1) = t.grid[0], t.median_s
            lines.append(f"{t.op} TP {t.key['tp']}: {s0 * 1e6:.1f} us at {b0 / 1024:.0f} KiB, {s1 * 1e6:.1f} us at "
                         f"{b1 / 2**20:.1f} MiB")
    typer.echo(f"wrote {target} ({new.profile_id}; {new.collective_provenance.nccl}): " + "; ".join(lines))
