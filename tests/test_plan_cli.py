"""`servesim sweep` and `servesim plan` end to end, and the example scripts CI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from servesim.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_bad_grid_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {num_requests: 10}\naxes:\n  gpu: [H100-SXM]\n  tp: [1, two]\n")
    code, out, err = run(capsys, "sweep", grid)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {grid}, field 'axes.tp': ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [grid]


def test_output_dir_that_is_a_file_is_refused_before_running(capsys, tmp_path):
    grid, taken = tmp_path / "g.yaml", tmp_path / "taken"
    grid.write_text("base: {num_requests: 10}\n")
    taken.write_text("")
    code, out, err = run(capsys, "sweep", grid, "-o", taken)
    assert code == 2 and "exists and is not a directory" in err and not (tmp_path / "cache").exists()


def test_sweep_writes_tables_and_resumes(capsys, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {num_requests: 30}\naxes:\n  gpu: [H100-SXM, H200]\n  rate: [2, 5]\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "sweep", grid, "-o", out_dir, "-j", "1")
    assert code == 0, err
    assert "4 scenarios (0 from the cache)" in out
    csv, parquet = pd.read_csv(out_dir / "results.csv"), pd.read_parquet(out_dir / "results.parquet")
    assert len(csv) == len(parquet) == 4 and list(parquet.gpu) == ["H100-SXM", "H100-SXM", "H200", "H200"]
    # H100 rows are roofline figures; H200 rows come from the shipped calibrated profile, and say so
    assert set(parquet.profile_id[parquet.gpu == "H100-SXM"]) == {"roofline"}
    assert parquet.profile_id[parquet.gpu == "H200"].str.startswith("h200-").all()
    code, out, err = run(capsys, "sweep", grid, "-o", out_dir, "-j", "1")
    assert code == 0 and "4 scenarios (4 from the cache)" in out


def test_plan_prints_the_answer_and_writes_the_frontiers(capsys, tmp_path):
    out_dir = tmp_path / "plan"
    code, out, err = run(capsys, "plan", "--model", "Llama-3.1-8B", "--rate", "6", "--slo",
                         "ttft_p99_ms=1500,tpot_p99_ms=60", "--gpus", "H100-SXM,A100-80GB-SXM", "--quant", "bf16",
                         "--tp", "1", "--num-requests", "40", "--verify", "1", "-j", "1", "-o", out_dir)
    assert code == 0, err
    assert "cheapest configurations" in out and "H100-SXM bf16" in out and "roofline" in out
    configs = pd.read_csv(out_dir / "configs.csv")
    assert (configs.status == "ok").all() and configs.usd_per_hour.is_monotonic_increasing
    html = (out_dir / "pareto.html").read_text()
    assert "Pareto frontier" in html and "<script src=" not in html  # plotly.js inlined
    assert len(pd.read_parquet(out_dir / "probes.parquet")) == configs.probes.sum()


@pytest.mark.parametrize("argv,field", [
    (["--slo", "tpot_p99_ms=50"], "field 'slo'"),
    (["--slo", "ttft_p99_ms=500", "--gpus", "H1000"], "unknown GPU 'H1000'"),
    (["--slo", "ttft_p99_ms=500", "--tp", "1,x"], "field 'tp'"),
    (["--slo", "ttft_p99_ms=500", "--axis", "rate=1,2"], "field 'axes.rate'"),
    (["--slo", "ttft_p99_ms=500", "--axis", "max_num_seqs"], "field 'axis'"),
])
def test_plan_bad_input_exit_2(capsys, tmp_path, argv, field):
    code, out, err = run(capsys, "plan", "--model", "Llama-3.1-8B", "--rate", "5", *argv, "-o", tmp_path / "p")
    assert code == 2 and field in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout


def test_sweep_on_a_dask_cluster_from_the_command_line(capsys, tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {num_requests: 20}\naxes:\n  rate: [2, 5]\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        code, out, err = run(capsys, "sweep", grid, "-o", tmp_path / "d", "--dask", cluster.scheduler_address)
    assert code == 0, err
    assert "on 2 workers" in out and len(pd.read_parquet(tmp_path / "d" / "results.parquet")) == 2


def test_unreachable_dask_scheduler_is_exit_2(capsys, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from servesim.plan import execute

    monkeypatch.setattr(execute, "CONNECT_TIMEOUT", "1s")
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {num_requests: 20}\n")
    code, out, err = run(capsys, "sweep", grid, "-o", tmp_path / "d", "--dask", "tcp://127.0.0.1:9")
    assert code == 2 and err.startswith("error: field 'dask': cannot reach a Dask scheduler at tcp://127.0.0.1:9")
    assert not (tmp_path / "d").exists()
