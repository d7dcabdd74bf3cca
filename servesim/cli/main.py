"""``servesim``: the command-line entry point. Each subcommand group lives in its own module."""

from __future__ import annotations

import sys

import typer

from servesim.cli.app import app
from servesim.errors import InputError


def _register() -> None:
    """Import every command's module (each registers itself on `app`); a run imports only the one it invokes."""
    import importlib

    from servesim.cli.app import COMMANDS

    for module, _ in COMMANDS.values():
        importlib.import_module(module)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input becomes one line on stderr and exit code 2."""
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="servesim", standalone_mode=False)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors: typer may bundle its own click, so match by behaviour, not by class.
        # Exit (--help) carries a code; ClickException also knows how to show itself.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if isinstance(exit_code, int):
            if callable(show):
                show()
            sys.exit(exit_code)
        if type(exc).__name__ == "Abort":
            typer.echo("aborted", err=True)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
