"""``servesim``: the command-line entry point. Each subcommand group lives in its own module."""

from __future__ import annotations

import signal
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as Ctrl-C does (temporary files removed)."""


class _Stopped(Exception):
    """An interrupt on its way out of the command (see `main`)."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__()
        self.interrupt = interrupt


def _terminate(signum, frame) -> None:
    raise Terminated()


def interrupted(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The one line an interrupted command prints, and its exit code (128 + the signal's number): what it left
    written (outputs are replaced as a set, so each directory named is complete) and how to resume."""
    from servesim.sim.outputs import published

    name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("SIGINT", 130)
    done = published()
    if done:
        state = f"{', '.join(map(str, done))} complete (written before the interrupt)"
    else:
        state = "no output written; any earlier outputs are left complete, as they were"
    resume = getattr(exc, "resume", "")
    return f"interrupted by {name}: {state}" + (f"; {resume}" if resume else ""), code


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input becomes one line on stderr and exit code 2; Ctrl-C or SIGTERM one line saying what
    was left written, and exit code 130 or 143."""
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    if (outputs := sys.modules.get("servesim.sim.outputs")) is not None:
        outputs._PUBLISHED.clear()  # one command's outputs (tests run several in one process)
    command = typer.main.get_command(app)
    invoke = command.invoke

    def guarded(ctx):  # typer turns an interrupt into a bare exit code 130: carry it past typer instead
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(exc) from exc

    command.invoke = guarded
    try:
        code = command.main(args=argv, prog_name="servesim", standalone_mode=False)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, _Stopped) as exc:
        line, status = interrupted(exc.interrupt if isinstance(exc, _Stopped) else exc)
        typer.echo(line, err=True)
        sys.exit(status)
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
