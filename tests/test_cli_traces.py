"""``servesim traces``: the listing and ``show`` print the statistics; bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_workload_errors import BAD_INPUTS, Bad, write_bad

from servesim.cli.main import main
from servesim.sim.workload import BUILTIN_TRACES

# The installed `servesim` script runs exactly this (pyproject: servesim.cli.main:main).
CLI = [sys.executable, "-c", "import sys; from servesim.cli.main import main; main(sys.argv[1:])"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_traces_lists_builtins_with_readme_statistics(capsys) -> None:
    code, out, err = run(capsys, "traces")
    assert code == 0 and err == ""
    for name in BUILTIN_TRACES:
        assert name in out
    conv = next(line for line in out.splitlines() if line.startswith("azure-conv"))
    # rows, span, rate, CV, prompt mean/p50/p99, output mean/p50/p99 (README: traces table)
    assert conv.split()[1:12] == ["19,366", "3,501.7", "5.53", "1.09", "1,154.7", "1,020", "4,142", "211.1",
                                  "129", "601", "CC-BY-4.0"]
    moon = next(line for line in out.splitlines() if line.startswith("mooncake-conv"))
    assert moon.split()[1:3] == ["12,031", "3,537.0"]
    assert "burstgpt: dropped 17 failed rows" in out
    assert "\x1b[" not in out  # plain text when not a terminal


def test_traces_json(capsys) -> None:
    code, out, _ = run(capsys, "traces", "--json")
    assert code == 0
    rows = {t["name"]: t for t in json.loads(out)["traces"]}
    assert set(rows) == set(BUILTIN_TRACES)
    assert rows["azure-code"]["requests"] == 8819
    assert rows["azure-code"]["iat_cv"] == pytest.approx(13.15, abs=0.005)
    assert rows["burstgpt"]["notes"] == ["dropped 17 failed rows with zero request or response tokens"]
    assert rows["sharegpt"]["span_s"] is None and rows["sharegpt"]["license"] == "Apache-2.0"


def test_show_builtin(capsys) -> None:
    code, out, err = run(capsys, "traces", "show", "azure-conv")
    assert code == 0 and err == ""
    assert "azure-conv (azure, builtin:azure-conv)" in out
    assert "3,501.7 s" in out and "5.53 req/s" in out and "37 to 507" in out
    prompt = next(line for line in out.splitlines() if line.startswith("prompt"))
    assert prompt.split() == ["prompt", "1,154.7", "1,020", "2,734.5", "4,142", "2", "14,050"]
    assert "Azure LLM inference trace 2023, Microsoft Azure, CC-BY 4.0" in out


def test_show_mooncake_reports_prefix_reuse(capsys) -> None:
    code, out, _ = run(capsys, "traces", "show", "mooncake-conv")
    assert code == 0
    assert "24.0 x 512 tokens" in out and "36.6%" in out
    code, out, _ = run(capsys, "traces", "show", "mooncake-conv", "--json")
    s = json.loads(out)
    assert s["format"] == "mooncake" and s["hash_block_reuse"] == pytest.approx(0.366, abs=0.0005)


def test_show_file_with_forced_format(capsys, tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,100,10\n2,300,30\n")
    code, out, _ = run(capsys, "traces", "show", str(path), "--json")
    s = json.loads(out)
    assert code == 0 and s["format"] == "generic" and s["requests"] == 2 and s["rate_per_s"] == 0.5
    assert s["input_tokens"]["mean"] == 200.0
    code, out, _ = run(capsys, "traces", "show", str(path), "--format", "generic")
    assert code == 0 and "lengths" not in out and "0.5 req/s" in out


def test_show_length_only_trace_says_so(capsys) -> None:
    code, out, _ = run(capsys, "traces", "show", "arxiv-summarization")
    assert code == 0 and "lengths only" in out


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, case: Bad) -> None:
    path = write_bad(tmp_path, case)
    argv = ["traces", "show", str(path)] + (["--format", case.fmt] if case.fmt else [])
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert case.match in lines[0]
    if case.id != "unknown-format-name":
        assert str(path) in lines[0]
    if case.row is not None:
        assert f"row {case.row}" in lines[0]
    if case.column is not None:
        assert f"column '{case.column}'" in lines[0]


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n1,-3,1\n")
    proc = subprocess.run([*CLI, "traces", "show", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {path}, row 2, column 'input_tokens': must be a positive token count, " \
                          "got '-3' (line 3)\n"
    assert proc.stdout == ""
    help_ = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "traces" in help_.stdout
