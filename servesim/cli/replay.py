"""``servesim replay``: serve a scenario's workload on the engine (same flags and scenario file as
``simulate``), in real time or time-scaled, and write the simulator's files plus the iteration log."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from servesim.cli.app import SectionedCommand, app
from servesim.cli.render import make_console
from servesim.cli.simulate import _CONFIG, _JSON, _OUTPUT_DIR, _outcome, _scenario, _warn, with_scenario_flags
from servesim.errors import ConfigError
from servesim.sim.outputs import check_writable

_ENGINE = "Engine"


@app.command("replay", cls=SectionedCommand, context_settings={"max_content_width": 100})
@with_scenario_flags
def replay_cmd(
    config: Optional[Path] = _CONFIG,  # noqa: UP045
    output_dir: Optional[Path] = _OUTPUT_DIR,  # noqa: UP045
    as_json: bool = _JSON,
    device: str = typer.Option("cuda", "--device", help="cuda, or cpu (torch reference kernels, small models)",
                               rich_help_panel=_ENGINE),
    weights: Optional[str] = typer.Option(  # noqa: UP045
        None, "--weights", metavar="DIR", help="local HuggingFace safetensors directory (default: random weights)",
        rich_help_panel=_ENGINE),
    quantizer: str = typer.Option("rtn", "--quantizer", help="rtn | awq (int4) | gptq (int4, int8)",
                                  rich_help_panel=_ENGINE),
    time_scale: float = typer.Option(1.0, "--time-scale", metavar="X",
                                     help="arrivals X times faster than the trace's", rich_help_panel=_ENGINE),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="CUDA graphs for decode steps",
                                     rich_help_panel=_ENGINE),
    draft_weights: Optional[str] = typer.Option(  # noqa: UP045
        None, "--draft-weights", metavar="DIR", help="the draft model's safetensors (default: random weights)",
        rich_help_panel=_ENGINE),
    spec_mode: Optional[str] = typer.Option(  # noqa: UP045
        None, "--spec-mode", help="greedy (verify the draft's tokens) | controlled (draw acceptance with spec_alpha; "
        "default with random weights)", rich_help_panel=_ENGINE),
    **fields,
) -> None:
    """Replay the workload on the engine: the simulator's scheduler drives real forward passes (at --tp N, one
    process per rank, the scheduler on rank 0; --piecewise-graphs, the scenario's field: steps with prefill as
    piecewise CUDA graphs)."""
    base = _scenario(config, fields)
    if not time_scale > 0:
        raise ConfigError(f"must be > 0, got {time_scale}", field="time_scale")
    if output_dir:
        check_writable(output_dir)
    from servesim.cli.progress import progress_bar
    from servesim.cli.render import render_summary
    from servesim.engine.engine import EngineConfig, build_engine
    from servesim.engine.replay import engine_deployment, replay, warm_up
    from servesim.sim.deployment import plan_replica
    from servesim.sim.outputs import dumps_json, summary_document, write_outputs

    plan = plan_replica(base)
    console = make_console()
    from servesim.validate.run import EngineOptions, spec_fields

    opts = EngineOptions(device=device, weights=weights, quantizer=quantizer, cuda_graphs=cuda_graphs,
                         draft_weights=draft_weights, spec_mode=spec_mode)
    engine = build_engine(EngineConfig(
        model=base.model, weights=weights, weight_format=base.quant, quantizer=quantizer, kv_dtype=base.kv_dtype,
        block_size=base.block_size, gpu_memory_utilization=base.gpu_memory_utilization,
        max_model_len=plan.max_model_len, max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=base.max_num_seqs, num_gpu_blocks=base.num_gpu_blocks, device=device,
        cuda_graphs=cuda_graphs, piecewise_graphs=base.piecewise_graphs, seed=base.seed, tp=base.tp,
        **spec_fields(base, opts)))
    try:
        engine_deployment(base, engine)  # refuses what one engine cannot replay before the run
        warm_up(base, engine)  # compiles the kernel variants the trace meets before its clock starts
        with progress_bar("replaying", "requests", console) as update:
            run = replay(base, engine, time_scale=time_scale, on_progress=update)
    finally:
        engine.close()  # tensor parallelism: the other ranks' processes
    result = run.result
    notes = _outcome(result)
    if output_dir:
        write_outputs(output_dir, result.requests, result.timeline, result.summary, result.meta,
                      extra={"iterations.parquet": lambda p: run.iterations.to_parquet(p, index=False)})
    if as_json:
        typer.echo(dumps_json(summary_document(result.summary, result.meta)), nl=False)
        _warn(notes)
        return
    mem = engine.memory
    tp = f", TP {base.tp} ({'NCCL' if device == 'cuda' else 'gloo'})" if base.tp > 1 else ""
    console.print(f"{base.model} on the engine ({device}, {engine.model.backend.name} kernels{tp}; "
                  f"weights {base.quant}, KV {base.kv_dtype}): {mem.num_blocks:,} KV blocks ({mem.planned_by}); "
                  f"{len(run.iterations):,} iterations, {int(run.iterations.graph.sum()):,} as CUDA graphs",
                  highlight=False, soft_wrap=True)
    render_summary(result.summary, console, title=f"{base.model}: engine replay")
    if output_dir:
        console.print(f"wrote {output_dir}", highlight=False)
    _warn(notes)
