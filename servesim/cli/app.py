"""The typer application every subcommand module registers on (kept apart from ``main`` so that
command modules import it without importing the entry point)."""

from __future__ import annotations

import typer

from servesim import __version__

app = typer.Typer(
    name="servesim",
    help="Predict LLM-serving latency, throughput, goodput, KV pressure and cost — "
    "a SimPy simulator calibrated from its own Triton kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"servesim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """servesim: what-if analysis for LLM serving deployments."""
