"""A synthetic calibration profile: every table a model needs, timed by the roofline with a fixed floor and a
little seeded noise, so the calibrated cost model can be tested without a GPU."""

from __future__ import annotations

import itertools

import numpy as np

from servesim.calibrate.grid import build_grid
from servesim.calibrate.report import roofline_s
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.profile import VERSION, OpTable, Profile, Provenance, StepFit

PROV = Provenance(gpu_name="NVIDIA H200", memory_bytes=141 * 10**9, driver="test", cuda="test", torch="test",
                  triton="test", date="2026-12-02", command="synthetic", git_commit="test")


def synthetic_profile(models=("Llama-3.1-8B",), formats=("bf16", "w4a16"), kv=("bf16",), tps=(1,), noise=0.0,
                      floor_s=3e-6, seed=0, overhead=(2e-4, 8e-4)) -> Profile:
    gpu = get_gpu("H200")
    rng = np.random.default_rng(seed)
    tables = []
    for t in build_grid(list(models), formats, kv, tps):
        pts = list(itertools.product(*t.grid))
        med = [floor_s + roofline_s(gpu, t.op, t.keyd, p) * (1 + noise * rng.standard_normal()) for p in pts]
        med = [max(m, 1e-7) for m in med]
        tables.append(OpTable(op=t.op, key=t.keyd, axes=t.axes, grid=t.grid, median_s=tuple(med),
                              p20_s=tuple(0.98 * m for m in med), p80_s=tuple(1.02 * m for m in med)))
    seqs = (1.0, 16.0, 256.0)
    for mode, base in zip(("graph", "eager"), overhead, strict=True):
        vals = tuple(base * (1 + 0.1 * np.log2(s)) for s in seqs)
        for fmt in formats:
            tables.append(OpTable(op="step_overhead", key={"mode": mode, "format": fmt}, axes=("seqs",),
                                  grid=(seqs,), median_s=vals, p20_s=vals, p80_s=vals))
    steps = {f: StepFit(graph_gap_s=1e-6, eager_gap_s=2e-5, eager_floor_s=1.5e-3, eager_floor_mixed_s=2e-3,
                        graph_host_s=(3e-4, 4e-6, 2e-9), eager_host_s=(8e-4, 6e-6, 3e-9)) for f in formats}
    return Profile(version=VERSION, profile_id="synthetic-h200", gpu="H200", provenance=PROV, tables=tuple(tables),
                   steps=steps)
