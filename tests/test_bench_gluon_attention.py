"""bench/gluon_attention.py's orchestration on the CPU: a candidate that hangs, kills its process or poisons the
CUDA context costs only itself, the rest run in a fresh child, and the report carries every status (the GPU run
is the lead's). The children here are stand-ins for the CUDA one."""

from __future__ import annotations

import os
import time

import pytest

from tests.bench_helpers import load_bench

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bench():
    return load_bench("gluon_attention")


def stand_in(jobs, results):
    """Behaves as each job's name says: ok, hang, die, or poison (reports, then exits as a lost context does)."""
    results.send(("ready", None))
    for i, job in enumerate(jobs):
        results.send(("start", i))
        if job["name"].startswith("hang"):
            time.sleep(60)
        if job["name"].startswith("die"):
            os._exit(3)
        row = {"name": job["name"], "kind": job["kind"], "status": "ok", "tflops_4096": float(i + 1)}
        if job["name"].startswith("poison"):
            results.send(("done", i, {**row, "status": "compile/launch error; CUDA context lost", "error": "boom"}))
            results.send(("exit", "CUDA context lost"))
            return
        results.send(("done", i, row))


def test_failures_cost_only_their_own_job(bench):
    names = ["ok0", "hang1", "ok2", "die3", "poison4", "ok5"]
    jobs = [{"name": n, "kind": "gluon"} for n in names]
    rows = bench.run_all(jobs, job_timeout_s=2.0, budget_s=60.0, start_timeout_s=30.0, target=stand_in)
    status = {r["name"]: r["status"] for r in rows}
    assert status["hang1"].startswith("hang") and status["die3"] == "child died (exit code 3)"
    assert status["poison4"].endswith("CUDA context lost")
    assert [status[n] for n in ("ok0", "ok2", "ok5")] == ["ok"] * 3


def test_budget_skips_what_is_left(bench):
    jobs = [{"name": "ok0", "kind": "gluon"}, {"name": "hang1", "kind": "gluon"}, {"name": "ok2", "kind": "gluon"}]
    rows = bench.run_all(jobs, job_timeout_s=2.0, budget_s=1.0, start_timeout_s=30.0, target=stand_in)
    assert [r["status"] for r in rows][0] == "ok" and rows[2]["status"].startswith("skipped")


def test_report_has_ratios_and_errors(bench):
    rows = [{"name": "cudnn", "kind": "cudnn", "status": "ok", **{f"tflops_{s}": 600.0 for s in bench.TIMED_S}},
            {"name": "ws", "kind": "gluon", "status": "ok", **{f"tflops_{s}": 540.0 for s in bench.TIMED_S}},
            {"name": "bad", "kind": "gluon", "status": "compile/launch error", "error": "CompilationError: x"}]
    bench.ratios(rows)
    assert rows[1]["vs_cudnn_4096"] == pytest.approx(0.9) and "vs_cudnn_4096" not in rows[2]
    md = bench.report(rows, {"card": "test card"})
    assert "0.9" in md and "CompilationError: x" in md and "compile/launch error" in md


def test_candidates_are_valid_configs(bench):
    gp = pytest.importorskip("servesim.kernels.attention.gluon_prefill")
    for cfg in bench.CANDIDATES:
        gp.check_config(cfg)
    assert len({bench.name(c) for c in bench.CANDIDATES}) == len(bench.CANDIDATES)
