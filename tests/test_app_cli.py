"""`servesim dashboard`: the streamlit command it runs, the shipped settings, and the app's import rules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_import_rules import _run

from servesim.cli import dashboard
from servesim.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_shipped_config_toml_matches_the_command_line_options():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{key}": str(v).lower() if isinstance(v, bool) else str(v)
            for section, values in cfg.items() for key, v in values.items()}
    assert flat == dashboard.STREAMLIT_OPTIONS
    assert flat["browser.gatherUsageStats"] == "false" and flat["server.headless"] == "true"


def test_streamlit_command_serves_the_entry_script_with_the_settings():
    cmd = dashboard.streamlit_command(8600, "127.0.0.1")
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(cmd[4]) == ROOT / "servesim" / "app" / "dashboard.py" and Path(cmd[4]).is_file()
    assert "--server.port=8600" in cmd and "--server.address=127.0.0.1" in cmd
    assert "--browser.gatherUsageStats=false" in cmd and "--server.headless=true" in cmd


def test_dashboard_command_becomes_streamlit_from_any_directory(monkeypatch, tmp_path):
    seen = {}

    def execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dashboard.os, "execve", execve)
    with pytest.raises(SystemExit) as exc:
        main(["dashboard", "--port", "8611"])
    assert exc.value.code == 0
    assert seen["path"] == sys.executable and seen["argv"] == dashboard.streamlit_command(8611, "127.0.0.1")
    assert seen["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_dashboard_without_streamlit_says_what_to_install(monkeypatch, capsys):
    real = dashboard.importlib.util.find_spec
    monkeypatch.setattr(dashboard.importlib.util, "find_spec", lambda n: None if n == "streamlit" else real(n))
    with pytest.raises(SystemExit) as exc:
        main(["dashboard"])
    assert exc.value.code == 2 and "pip install 'servesim[app]'" in capsys.readouterr().err


def test_bad_port_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dashboard", "--port", "70000"])
    assert exc.value.code == 2


def test_app_modules_import_without_torch_or_triton():
    proc = _run("""
        import servesim.app.analysis, servesim.app.figures, servesim.app.inputs, servesim.app.knobs
        import servesim.app.cache, servesim.app.reports
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "triton")]
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
