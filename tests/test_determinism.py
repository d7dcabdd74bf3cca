"""Determinism wherever a seed is given, checked on bytes: the same seed writes the same files (simulator, sweep,
synthetic workloads, the dashboard's download); another seed writes other ones. (The engine's controlled
acceptance: tests/test_engine_spec.py.)"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from servesim.cli.main import main
from servesim.plan import sweep
from servesim.sim.config import Scenario
from servesim.sim.simulator import simulate
from servesim.sim.workload import Gamma, Lengths, LogNormal, Poisson, synthesize

SEEDED = dict(arrival="gamma", rate=8.0, cv=3.0, num_requests=300, trace="sharegpt", spec_k=2, spec_alpha=0.7,
              spec_alpha_concentration=4.0, policy="sjf-predicted", slo_ttft_ms=300, num_gpu_blocks=400,
              preemption="swap", replicas=2, router="power_of_two")
DETERMINED = ("requests.parquet", "timeline.parquet", "summary.json")  # run.json holds the wall clock


def files(root, names=DETERMINED) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in names}


def test_simulate_same_seed_same_bytes_through_the_cli(tmp_path, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SEEDED.items()]
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        try:
            main(["simulate", *flags, f"--seed={seed}", "--output-dir", str(tmp_path / name), "--json"])
        except SystemExit as exc:
            assert exc.code == 0, capsys.readouterr().err
    capsys.readouterr()
    a, b, c = (files(tmp_path / n) for n in "abc")
    assert a == b
    assert all(a[n] != c[n] for n in DETERMINED)  # the seed reaches arrivals, lengths, acceptance, routing


def test_synthetic_workloads_same_seed_same_bytes():
    def table_bytes(seed):
        for arrival in (Poisson(5.0), Gamma(5.0, 2.5)):
            w = synthesize(500, arrival, Lengths(LogNormal(400, 1.0), LogNormal(150, 0.8)), np.random.default_rng(seed))
            yield b"".join(np.ascontiguousarray(w.table[c]).tobytes() for c in w.table.columns)

    assert list(table_bytes(3)) == list(table_bytes(3))
    assert all(x != y for x, y in zip(table_bytes(3), table_bytes(4)))


def test_sweep_same_grid_same_bytes(tmp_path):
    grid = {"base": {"num_requests": 60, "arrival": "poisson", "seed": 2}, "axes": {"rate": [2.0, 5.0],
                                                                                   "policy": ["fcfs", "sjf"]}}
    for name in ("a", "b"):
        sweep(grid, jobs=1).write(tmp_path / name)  # no cache: both simulate every point
    assert files(tmp_path / "a", ("results.csv",)) == files(tmp_path / "b", ("results.csv",))


def test_dashboard_download_same_seed_same_bytes():
    from servesim.app.analysis import results_zip

    def members(seed):
        r = simulate(Scenario(**{**SEEDED, "seed": seed, "num_requests": 150}))
        with zipfile.ZipFile(io.BytesIO(results_zip(r))) as z:
            return {i.filename: (i.date_time, z.read(i)) for i in z.infolist() if i.filename != "run.json"}

    a = members(1)
    assert a == members(1) and set(a) >= {*DETERMINED, "requests.csv"}
    assert a["summary.json"] != members(2)["summary.json"]
