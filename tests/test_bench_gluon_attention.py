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


def test_rounds_and_selection(bench):
    assert bench.CANDIDATES[:len(bench.ROUND1)] == bench.ROUND1  # round 1's indices still mean what they did
    names = [bench.name(c) for c in bench.ROUND2]
    assert len(set(names)) == len(names) and all(c in bench.CANDIDATES for c in bench.ROUND2)
    assert bench.select("round2") == bench.ROUND2 and bench.select("all") == bench.CANDIDATES
    assert bench.ROUND2[0] in bench.ROUND1  # round 1's best, re-measured in the same run
    picked = bench.select("9, pipelined 64x64 s3 w4 kv1 split")
    assert picked == [bench.ROUND1[9], dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4,
                                            kv_heads_per_pass=1, split_diag=True)]
    for bad in ("999", "round9", "pipelined 1x1"):
        with pytest.raises(SystemExit, match="--candidates"):
            bench.select(bad)


def test_names_carry_every_option(bench):
    cfg = dict(variant="ws", BLOCK_M=64, BLOCK_N=32, STAGES=2, num_warps=4)
    assert bench.name(cfg) == bench.name({**cfg, "maxnreg": 168}) == "ws 64x32 s2 w4"
    assert bench.name({**cfg, "kv_heads_per_pass": 2, "split_diag": True, "q_in_registers": True, "maxnreg": 128}) \
        == "ws 64x32 s2 w4 kv2 split qreg r128"


@pytest.mark.parametrize("variant, shared, regs, per_sm", [
    ("pipelined", 114760, 141, 2),  # round 1's best: shared memory allows 2
    ("pipelined", 65608, 152, 3),
    ("pipelined", 49192, 115, 4),
    ("pipelined", 49192, 168, 3),   # shared memory would allow 4, registers 3
    ("ws", 115004, 240, 1),         # 5 warps x 240 registers: 1
    ("ws", 115004, 200, 2),
])
def test_programs_per_sm(bench, variant, shared, regs, per_sm):
    cfg = dict(variant=variant, BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4)
    assert bench.programs_per_sm(cfg, shared, regs) == per_sm


def test_a_later_round_does_not_overwrite_round_one(bench):
    assert bench.result_stem("all", "h200", "2026-12-04") == "gluon_attention-h200-2026-12-04"
    assert bench.result_stem("round1", "h200", "2026-12-04") == "gluon_attention-h200-2026-12-04"
    assert bench.result_stem("round2", "h200", "2026-12-04") == "gluon_attention_round2-h200-2026-12-04"
