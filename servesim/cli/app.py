"""The typer application every subcommand module registers on (kept apart from ``main`` so that
command modules import it without importing the entry point).

Help is click's plain layout (``rich_markup_mode=None``): it wraps to the terminal, reads at 80 columns
and pipes as plain text. Commands with many flags group them in sections with :class:`SectionedCommand`.

Commands load lazily (:class:`LazyGroup`): ``COMMANDS`` says which module registers each one and its one-line
help, so ``servesim --help`` imports none of them (nor pydantic, numpy, pandas or simpy) and a command imports
only its own module. A test holds ``COMMANDS`` to what the modules register.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # typer carries its own click (typer._click); click itself need not be installed
    import click

from servesim import __version__

# Each command: the module that registers it on ``app`` and the start of its help (``--help`` order).
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("servesim.cli.simulate", "Simulate a deployment serving a workload; print TTFT/TPOT/ITL/E2E, "
                                          "throughput, goodput, cost."),
    "compare": ("servesim.cli.simulate", "Run the same workload under several policies or engine presets (and "
                                         "loads)"),
    "fit": ("servesim.cli.hw", "Does MODEL fit on GPU? Memory per GPU, KV capacity, and roofline prefill/decode "
                               "step times."),
    "sweep": ("servesim.cli.plan", "Simulate every combination of a grid's axes in parallel"),
    "plan": ("servesim.cli.plan", "The cheapest configurations that serve RATE under the SLOs"),
    "replay": ("servesim.cli.replay", "Replay the workload on the engine"),
    "validate": ("servesim.cli.validate", "Replay on the engine and simulate the same workload"),
    "calibrate": ("servesim.cli.calibrate", "Calibrate the cost model on this machine's GPU, or report on a "
                                            "profile."),
    "dashboard": ("servesim.cli.dashboard", "Start the what-if dashboard (Streamlit)"),
    "models": ("servesim.cli.hw", "Model presets and HuggingFace config.json files"),
    "gpus": ("servesim.cli.hw", "GPU catalog (datasheet peaks, $/hour)"),
    "traces": ("servesim.cli.traces", "Built-in and file traces"),
    "train": ("servesim.cli.train", "Train a byte-level Llama and save it for the engine"),
}


class LazyGroup(TyperGroup):
    """The root group: lists ``COMMANDS`` without importing them; builds a command when it is invoked (or its
    own help is asked for) from what its module registered on ``app``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            cmd = load_command(name)
            if cmd is not None:
                self.commands[name] = cmd
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


def load_command(name: str) -> click.Command | None:
    """The click command ``name`` as its module registers it on ``app`` (importing the module)."""
    import importlib

    importlib.import_module(COMMANDS[name][0])
    opts = {"pretty_exceptions_short": app.pretty_exceptions_short, "rich_markup_mode": app.rich_markup_mode}
    for info in app.registered_commands:
        cmd = typer.main.get_command_from_info(info, **opts)
        if cmd.name == name:
            return cmd
    for info in app.registered_groups:
        if info.name == name:
            return typer.main.get_group_from_info(info, suggest_commands=app.suggest_commands, **opts)
    return None


app = typer.Typer(
    name="servesim",
    help="Predict LLM-serving latency, throughput, goodput, KV pressure and cost — "
    "a SimPy simulator calibrated from its own Triton kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=LazyGroup,
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
