"""``servesim dashboard``: start the Streamlit dashboard (servesim/app) on a local port.

Streamlit reads ``.streamlit/config.toml`` from the directory it starts in, so the shipped settings
(headless, no usage statistics) travel as command-line options instead and hold from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import typer

from servesim.cli.app import app

# The same settings as the repository's .streamlit/config.toml (tests/test_app_cli.py holds them equal).
STREAMLIT_OPTIONS = {
    "browser.gatherUsageStats": "false",
    "server.headless": "true",
    "server.maxUploadSize": "64",
    "server.fileWatcherType": "none",
    "client.toolbarMode": "viewer",
    "theme.base": "light",
}


def entry_script() -> Path:
    """The dashboard's Streamlit entry script."""
    return Path(__file__).resolve().parent.parent / "app" / "dashboard.py"


def streamlit_command(port: int, address: str) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard on ``address:port``."""
    opts = {**STREAMLIT_OPTIONS, "server.port": str(port), "server.address": address}
    return [sys.executable, "-m", "streamlit", "run", str(entry_script()),
            *(f"--{k}={v}" for k, v in opts.items())]


@app.command("dashboard")
def dashboard(
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="TCP port to serve on."),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to listen on (0.0.0.0: every one)."),
) -> None:
    """Start the what-if dashboard (Streamlit) at http://ADDRESS:PORT; Ctrl-C stops it."""
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("plotly") is None:
        typer.echo("error: the dashboard needs streamlit and plotly: pip install 'servesim[app]'", err=True)
        raise typer.Exit(2)
    typer.echo(f"servesim dashboard: http://{address}:{port}", err=True)
    # The child finds this servesim first, even when it is a source checkout that is not installed.
    root = str(entry_script().parent.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    # Replace this process with streamlit, so a signal that stops it (Ctrl-C, SIGTERM) leaves no orphan behind.
    cmd = streamlit_command(port, address)
    os.execve(cmd[0], cmd, env)
