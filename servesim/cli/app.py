"""The typer application every subcommand module registers on (kept apart from ``main`` so that
command modules import it without importing the entry point).

Help is click's plain layout (``rich_markup_mode=None``): it wraps to the terminal, reads at 80 columns
and pipes as plain text. Commands with many flags group them in sections with :class:`SectionedCommand`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:  # typer carries its own click (typer._click); click itself need not be installed
    import click

from servesim import __version__

app = typer.Typer(
    name="servesim",
    help="Predict LLM-serving latency, throughput, goodput, KV pressure and cost — "
    "a SimPy simulator calibrated from its own Triton kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class SectionedCommand(TyperCommand):
    """A command whose options are listed under the heading of their ``rich_help_panel`` ("Options" when
    none), in plain click layout."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                heading = "Arguments" if param.param_type_name == "argument" else "Options"
                sections.setdefault(getattr(param, "rich_help_panel", None) or heading, []).append(record)
        for heading, rows in sections.items():
            with formatter.section(heading):
                formatter.write_dl(rows)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"servesim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """servesim: what-if analysis for LLM serving deployments."""
