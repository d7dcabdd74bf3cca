"""Sweeps: grid expansion and its errors, the cache (an interrupted sweep resumes), Dask == local."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servesim.errors import InputError
from servesim.plan import Grid, sweep
from servesim.plan.cache import ResultCache, scenario_key
from servesim.plan.run import workload_for
from servesim.sim.config import Scenario
from servesim.sim.deployment import build_workload

SMALL = {"model": "Llama-3.1-8B", "num_requests": 40}
GRID = {"base": SMALL, "axes": {"gpu": ["H100-SXM", "A100-80GB-SXM"], "rate": [2.0, 6.0]}}


def test_grid_is_the_product_in_axis_order_with_named_axes():
    g = Grid.from_dict({"base": SMALL, "axes": {
        "gpu": ["H100-SXM", "H200"], "tp": [1, 2],
        "limits": [{"max_num_seqs": 64, "max_num_batched_tokens": 4096}, {"max-num-seqs": 256}]}})
    s = g.scenarios()
    assert len(g) == len(s) == 8
    assert [(x.gpu, x.tp, x.max_num_seqs) for x in s[:3]] == [("H100-SXM", 1, 64), ("H100-SXM", 1, 256),
                                                             ("H100-SXM", 2, 64)]
    assert s[0].max_num_batched_tokens == 4096 and s[1].max_num_batched_tokens is None
    assert all(x.model == "Llama-3.1-8B" and x.num_requests == 40 for x in s)
    assert len({x.config_hash() for x in s}) == 8


@pytest.mark.parametrize("text,where", [
    ("axes: {gpux: [H100-SXM]}", "field 'axes.gpux'"),
    ("axes: {gpu: []}", "field 'axes.gpu'"),
    ("axes: {gpu: [H1000]}", "field 'axes.gpu': unknown GPU 'H1000'"),
    ("axes: {tp: [0]}", "field 'axes.tp'"),
    ("base: {tp: two}", "field 'base.tp'"),
    ("base: {model: Llama-9}", "field 'base.model'"),
    ("axes: {quant: [bf16, w3]}", "field 'axes.quant': unknown weight format 'w3'"),
    ("axes: {b: [{max_num_seqs: 0}]}", "field 'axes.b.max_num_seqs'"),
    ("axes: {tp: [1], b: [{tp: 2}]}", "field 'axes.b': field 'tp' is already set by axis 'tp'"),
    ("base: {arrival: poisson}", "field 'base.rate'"),
    ("base: {trace: nope.csv}", "field 'base.trace'"),
    ("bases: {}", "field 'bases'"),
    ("axes: [1, 2]", "field 'axes'"),
    ("axes: {gpu: [H100-SXM]\n", "not valid YAML"),
])
def test_bad_grid_files_name_file_and_field(tmp_path, text, where):
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        Grid.load(p).scenarios()
    assert str(e.value).startswith(str(p)) and where in str(e.value)
    assert "\n" not in str(e.value)


def test_workload_memo_equals_build_workload():
    for s in (Scenario(num_requests=50, rate=3.0), Scenario(num_requests=50, rate=7.0),
              Scenario(trace="sharegpt", arrival="poisson", rate=2.0, num_requests=30, seed=4),
              Scenario(duration_s=20.0, start_s=100.0, rate=9.0, max_context_tokens=2048)):
        pd.testing.assert_frame_equal(workload_for(s).requests, build_workload(s).requests)


def test_rows_carry_the_cost_model_and_infeasible_rows_their_reason():
    r = sweep({"base": {"num_requests": 20, "rate": 2.0, "gpu": "H100-SXM"},
               "axes": {"model": ["Llama-3.1-8B", "Llama-3.1-70B"]}}, jobs=1)
    t = r.table
    assert list(t.status) == ["ok", "infeasible"]
    assert t.profile_id.iloc[0] == "roofline" and pd.isna(t.profile_id.iloc[1])
    assert "141.1 GB of weights" in t.reason.iloc[1]
    assert t.output_tokens_per_s_per_gpu.iloc[0] == pytest.approx(t.output_throughput.iloc[0])


def test_interrupted_sweep_resumes(tmp_path):
    cache = tmp_path / "cache"

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(GRID, jobs=1, cache_dir=cache, on_progress=stop_after_two)
    assert len(ResultCache(cache)) == 2
    seen = []
    resumed = sweep(GRID, jobs=1, cache_dir=cache, on_progress=lambda d, t: seen.append(d))
    assert resumed.cached == 2 and seen == [2, 3, 4]
    assert (resumed.scenario_wall_s[:2] == 0).all() and (resumed.scenario_wall_s[2:] > 0).all()
    fresh = sweep(GRID, jobs=1)
    pd.testing.assert_frame_equal(resumed.table, fresh.table)  # cached rows are the rows


def test_cache_key_follows_the_code(monkeypatch):
    from servesim.plan import cache

    s = Scenario()
    before = scenario_key(s)
    monkeypatch.setattr(cache, "code_digest", lambda: "another-cost-model")
    assert scenario_key(s) != before


def test_cache_key_follows_trace_file_contents(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("input_tokens,output_tokens,arrival_s\n10,5,0.0\n")
    s = Scenario(trace=str(trace))
    before = scenario_key(s)
    trace.write_text("input_tokens,output_tokens,arrival_s\n10,6,0.0\n")
    assert scenario_key(s) != before and s.config_hash() == Scenario(trace=str(trace)).config_hash()


def test_dask_and_local_give_identical_tables(tmp_path):
    distributed = pytest.importorskip("distributed")
    from servesim.plan import plan

    args = ("Llama-3.1-8B", 8.0, "ttft_p99_ms=1500,tpot_p99_ms=60")
    kw = {"gpus": ["H100-SXM"], "quants": ["bf16"], "tps": [1, 2], "base": {"num_requests": 40}, "verify": 1}
    local, local_plan = sweep(GRID, jobs=2).table, plan(*args, **kw, jobs=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        on_dask = sweep(GRID, dask=cluster.scheduler_address, cache_dir=tmp_path / "c")
        dask_plan = plan(*args, **kw, dask=cluster.scheduler_address)
    assert on_dask.workers == dask_plan.workers == 2
    pd.testing.assert_frame_equal(local, on_dask.table)
    assert np.isfinite(local.p99_ttft_ms).all()
    for name in ("configs", "probes", "verifications"):
        pd.testing.assert_frame_equal(getattr(local_plan, name), getattr(dask_plan, name), obj=name)


def test_rows_say_which_cost_model_priced_them(tmp_path):
    from servesim.hwmodels.profile import save_profile
    from tests.profile_helpers import synthetic_profile

    path = tmp_path / "h200.json"
    save_profile(synthetic_profile(), path)
    r = sweep({"base": {"gpu": "H200", "num_requests": 30, "rate": 3.0},
               "axes": {"profile": ["roofline", str(path)]}}, jobs=1)
    assert list(r.table.profile_id) == ["roofline", "synthetic-h200"]
    assert "cost_extrapolated" in r.table
    # The same profile on another GPU prices it, and the row says where the profile was measured.
    r = sweep([{"gpu": "H100-SXM", "num_requests": 20, "rate": 2.0, "profile": str(path)}], jobs=1)
    assert r.table.profile_id.iloc[0] == "synthetic-h200"
    assert "measured on H200, the deployment runs on H100-SXM" in r.table.warnings.iloc[0]
