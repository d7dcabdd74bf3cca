"""``servesim models``, ``servesim gpus`` (list, show) and ``servesim fit MODEL GPU``: the hwmodels catalogs,
a memory plan and roofline step times from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer

from servesim.cli.app import app
from servesim.cli.render import make_console, new_table, show
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import GPU, GPUS, get_gpu, load_gpus_yaml
from servesim.hwmodels.models import MODELS, ModelSpec, get_model
from servesim.hwmodels.ops import decode_shape, prefill_shape

models_app = typer.Typer(
    help="Model presets and HuggingFace config.json files: `servesim models` lists the presets, "
    "`servesim models show NAME|PATH` describes one.",
    rich_markup_mode=None,
)
gpus_app = typer.Typer(
    help="GPU catalog (datasheet peaks, $/hour): `servesim gpus` lists it, `servesim gpus show NAME` "
    "describes one GPU.",
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models")
app.add_typer(gpus_app, name="gpus")

_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
_GPUS_FILE = typer.Option(
    None, "--gpus-file", metavar="PATH", help="YAML with extra GPUs (format of hwmodels/catalog/gpus.yaml)."
)
FIT_PROMPT_TOKENS, FIT_CTX_TOKENS, FIT_BATCHES = 2048, 2048, (1, 32, 256)


def _extra_gpus(path: Path | None) -> dict[str, GPU]:
    return load_gpus_yaml(path) if path else {}


def _model_row(m: ModelSpec) -> dict[str, Any]:
    return {
        **dataclasses.asdict(m),
        "param_count": m.param_count,
        "weight_bytes_bf16": m.weight_bytes("bf16"),
        "kv_bytes_per_token_bf16": m.kv_bytes_per_token("bf16"),
    }


def _gpu_row(g: GPU) -> dict[str, Any]:
    return dataclasses.asdict(g)


@models_app.callback(invoke_without_command=True)
def _models_default(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """List the model presets (the same as `servesim models list`)."""
    if ctx.invoked_subcommand is None:
        models_list(as_json)


@models_app.command("list")
def models_list(as_json: bool = _JSON) -> None:
    """List the model presets."""
    rows = [_model_row(m) for m in MODELS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    console = make_console()
    t = new_table(
        console, "model", "params", "layers", "hidden", "heads/kv", "experts", "bf16 GB", "KV KiB/token"
    )
    for m in MODELS.values():
        t.add_row(
            m.name,
            f"{m.param_count / 1e9:.2f}B",
            str(m.num_layers),
            str(m.hidden_size),
            f"{m.num_heads}/{m.num_kv_heads}",
            f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "-",
            f"{m.weight_bytes() / 1e9:.1f}",
            f"{m.kv_bytes_per_token() / 1024:.0f}",
        )
    show(console, t)


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Preset name, config.json, or a directory with one."),
    as_json: bool = _JSON,
) -> None:
    """Show one model's shape, parameter count, weight bytes per format and KV bytes per token."""
    m = get_model(name)
    row = _model_row(m)
    if as_json:
        typer.echo(json.dumps(row, indent=1))
        return
    console = make_console()
    t = new_table(console, "field", "value", title=m.name, numeric=False)
    for key, value in row.items():
        t.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    for wf in ("fp8", "w8a16", "w4a16"):
        t.add_row(f"weight_bytes_{wf}", f"{m.weight_bytes(wf):,}")
    show(console, t)


@gpus_app.callback(invoke_without_command=True)
def _gpus_default(ctx: typer.Context, as_json: bool = _JSON, gpus_file: Optional[Path] = _GPUS_FILE) -> None:  # noqa: UP045
    """List the GPU catalog (the same as `servesim gpus list`)."""
    if ctx.invoked_subcommand is None:
        gpus_list(as_json, gpus_file)


@gpus_app.command("list")
def gpus_list(as_json: bool = _JSON, gpus_file: Path | None = _GPUS_FILE) -> None:
    """List the GPU catalog (and GPUs from --gpus-file)."""
    table = {**GPUS, **_extra_gpus(gpus_file)}
    if as_json:
        typer.echo(json.dumps([_gpu_row(g) for g in table.values()], indent=1))
        return
    console = make_console()
    t = new_table(console, "gpu", "memory GiB", "HBM TB/s", "bf16 TF/s", "fp8 TF/s", "link GB/s", "TDP W", "$/h")
    for g in table.values():
        t.add_row(
            g.name,
            f"{g.memory_bytes / 2**30:.0f}",
            f"{g.hbm_bytes_per_s / 1e12:.3g}",
            f"{g.tflops['bf16']:g}",
            f"{g.tflops['fp8']:g}" if "fp8" in g.tflops else "-",
            f"{g.interconnect_bytes_per_s / 1e9:g}",
            f"{g.tdp_w:g}",
            f"{g.usd_per_hour:.2f}",
        )
    show(console, t)
    console.print("$/h: editable defaults (rough on-demand prices), not quotes. TF/s: dense.")


@gpus_app.command("show")
def gpus_show(name: str, as_json: bool = _JSON, gpus_file: Path | None = _GPUS_FILE) -> None:
    """Show one GPU's datasheet peaks and source."""
    g = get_gpu(name, _extra_gpus(gpus_file))
    if as_json:
        typer.echo(json.dumps(_gpu_row(g), indent=1))
        return
    console = make_console()
    t = new_table(console, "field", "value", title=g.name, numeric=False)
    for key, value in _gpu_row(g).items():
        t.add_row(
            key,
            ", ".join(f"{k} {v:g}" for k, v in value.items())
            if isinstance(value, dict)
            else ", ".join(value) or "-"
            if isinstance(value, (tuple, list))
            else f"{value:,}"
            if isinstance(value, int)
            else f"{value:.4g}"
            if isinstance(value, float)
            else value,
        )
    show(console, t)


def fit(
    model: str = typer.Argument(..., help="Preset name, config.json, or a directory with one."),
    gpu: str = typer.Argument(..., help="GPU name or alias (see `servesim gpus`)."),
    tp: Optional[int] = typer.Option(None, "--tp", help="Tensor-parallel degree (default: 1)."),  # noqa: UP045
    pp: Optional[int] = typer.Option(None, "--pp", help="Pipeline-parallel degree (default: 1)."),  # noqa: UP045
    quant: Optional[str] = typer.Option(None, "--quant", help="Weight format (default: bf16)."),  # noqa: UP045
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV-cache dtype (default: bf16)."),  # noqa: UP045
    gpu_memory_utilization: Optional[float] = typer.Option(  # noqa: UP045
        None, "--gpu-memory-utilization", metavar="X", help="Fraction of GPU memory to use (default: 0.9)."
    ),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per KV block (default: 16)."),  # noqa: UP045
    batching: Optional[str] = typer.Option(None, "--batching", help="Batching mode (default: chunked)."),  # noqa: UP045
    max_num_batched_tokens: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-num-batched-tokens", metavar="N",
        help="Token budget per step, which sizes the activation workspace (default: as `simulate`).",
    ),
    max_num_seqs: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-num-seqs", metavar="N", help="Most sequences per step, sizing the sampler (default: 256)."
    ),
    gpus_file: Optional[Path] = _GPUS_FILE,  # noqa: UP045
    as_json: bool = _JSON,
) -> None:
    """Does MODEL fit on GPU? Memory per GPU, KV capacity, and roofline prefill/decode step times.

    Unset options take the defaults of `servesim simulate` (one Scenario), so both count the same KV blocks.
    """
    from servesim.sim.config import make_scenario
    from servesim.sim.deployment import plan_replica

    given = dict(model=model, gpu=gpu, tp=tp, pp=pp, quant=quant, kv_dtype=kv_dtype, batching=batching,
                 gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
                 max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                 gpus_file=None if gpus_file is None else str(gpus_file))
    scenario = make_scenario({k: v for k, v in given.items() if v is not None})
    replica = plan_replica(scenario)
    placement, plan = replica.placement, replica.memory
    m, g = placement.model, placement.gpu
    cost = CostModel(placement, allreduce=scenario.allreduce)
    prefill_s = cost.step_time_s(prefill_shape(FIT_PROMPT_TOKENS))
    decode = {b: cost.step_time_s(decode_shape(b, FIT_CTX_TOKENS)) for b in FIT_BATCHES}
    fits = {b: b * (FIT_CTX_TOKENS + 1) <= plan.kv_capacity_tokens for b in FIT_BATCHES}
    assumed = {
        "batching": scenario.batching,
        "max_num_batched_tokens": replica.max_num_batched_tokens,
        "max_num_seqs": scenario.max_num_seqs,
        "gpu_memory_utilization": scenario.gpu_memory_utilization,
        "block_size": scenario.block_size,
        "allreduce": scenario.allreduce,
        "roofline_prior": cost.prior.family + (f" (for {cost.prior.borrowed_for})" if cost.prior.borrowed_for else ""),
    }
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": m.name,
                    "gpu": g.name,
                    "tp": placement.tp,
                    "pp": placement.pp,
                    "weight_format": placement.weight_format,
                    "kv_dtype": placement.kv_dtype,
                    "assumed": assumed,
                    "profile_id": cost.profile_id,
                    "memory": dataclasses.asdict(plan),
                    f"prefill_{FIT_PROMPT_TOKENS}_s": prefill_s,
                    f"decode_step_s_at_ctx_{FIT_CTX_TOKENS}": {str(b): t for b, t in decode.items()},
                    "decode_batch_fits_kv": {str(b): f for b, f in fits.items()},
                },
                indent=1,
            )
        )
        return
    console = make_console()
    title = (f"{m.name} on {g.name}, tp={placement.tp} pp={placement.pp}, weights {placement.weight_format}, "
             f"KV {placement.kv_dtype} (per GPU)")
    console.print(
        "assumed (as servesim simulate): " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                        for k, v in assumed.items()),
        highlight=False,
    )
    t = new_table(console, "memory", "GB", title=title)
    for label, value in (
        ("usable", plan.usable_bytes),
        ("weights", plan.weights_bytes),
        ("activations", plan.activation_bytes),
        ("runtime", plan.runtime_bytes),
        ("KV cache", plan.kv_cache_bytes),
        ("headroom", plan.headroom_bytes),
    ):
        t.add_row(label, f"{value / 1e9:.2f}")
    show(console, t)
    console.print(
        f"KV cache: {plan.kv_blocks:,} blocks of {scenario.block_size} tokens = {plan.kv_capacity_tokens:,} "
        f"tokens ({plan.kv_bytes_per_token / 1024:.0f} KiB/token per GPU)"
    )
    t = new_table(console, "step (roofline)", "ms", "tokens/s", title="Step times")
    t.add_row(
        f"prefill {FIT_PROMPT_TOKENS:,} tokens",
        f"{prefill_s * 1e3:.2f}",
        f"{FIT_PROMPT_TOKENS / prefill_s:,.0f}",
    )
    for b, s in decode.items():
        note = "" if fits[b] else " (exceeds KV capacity)"
        t.add_row(f"decode batch {b} @ {FIT_CTX_TOKENS:,} ctx{note}", f"{s * 1e3:.2f}", f"{b / s:,.0f}")
    show(console, t)


app.command("fit")(fit)
