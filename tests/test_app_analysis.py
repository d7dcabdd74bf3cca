"""The dashboard's tables (servesim.app.analysis): closed-form timeline integrals, step and memory breakdowns
that add up, scenario YAML and bundles that `servesim simulate --config` reads back, result downloads."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from servesim.app import analysis
from servesim.cli.main import main
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.sim.config import load_scenario, make_scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.metrics import TIMELINE_COLUMNS
from servesim.sim.simulator import simulate


@pytest.fixture(scope="module")
def run():
    scenario = make_scenario({"num_requests": 150, "slo_ttft_ms": 200.0})
    return build_deployment(scenario), simulate(scenario)


def _timeline(rows):
    df = pd.DataFrame(rows, columns=["replica", "start_s", "end_s", "batch_size", "kv_blocks_used"])
    for c in TIMELINE_COLUMNS:
        if c not in df:
            df[c] = 1 if c in ("steps", "kv_blocks_total") else 0
    df["kv_blocks_total"] = 100
    return df


def test_binned_timeline_is_the_exact_time_average():
    # batch 4 on [0, 1), idle [1, 2), batch 2 on [2, 4): bins of 1 s hold 4, 0, 2, 2
    tl = _timeline([(0, 0.0, 1.0, 4, 50), (0, 2.0, 4.0, 2, 10)])
    b = analysis.binned_timeline(tl, bins=4)
    np.testing.assert_allclose(b["t_s"], [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(b["batch_size"], [4, 0, 2, 2])
    np.testing.assert_allclose(b["kv_used_frac"], [0.5, 0, 0.1, 0.1])
    # a bin edge inside a row: half of [0, 1) at 4 and half idle
    b = analysis.binned_timeline(tl, bins=2)
    np.testing.assert_allclose(b["batch_size"], [2.0, 2.0])


def test_binned_timeline_sums_overlapping_replicas():
    tl = _timeline([(0, 0.0, 2.0, 3, 20), (1, 1.0, 2.0, 5, 40)])
    tl.loc[1, "kv_blocks_total"] = 100
    b = analysis.binned_timeline(tl, bins=2)
    np.testing.assert_allclose(b["batch_size"], [3, 8])
    np.testing.assert_allclose(b["kv_used_frac"], [20 / 200, 60 / 200])


def test_binned_timeline_keeps_the_integral_of_a_run(run):
    _, result = run
    tl = result.timeline
    b = analysis.binned_timeline(tl, bins=97)
    width = (tl["end_s"].max() - tl["start_s"].min()) / 97
    exact = float((tl["batch_size"] * (tl["end_s"] - tl["start_s"])).sum())
    assert float(b["batch_size"].sum() * width) == pytest.approx(exact, rel=1e-9)
    tokens = float((tl["prefill_tokens"] + tl["decode_tokens"]).sum())
    assert float(b["tokens_per_s"].sum() * width) == pytest.approx(tokens, rel=1e-6)


def test_latency_over_time_bins_cover_every_completed_request(run):
    _, result = run
    lot = analysis.latency_over_time(result.requests, bins=10)
    assert lot["requests"].sum() == result.summary["completed"]
    assert (lot["p99_ttft_ms"] >= lot["p50_ttft_ms"]).all() and (lot["p99_e2el_ms"] >= lot["p50_e2el_ms"]).all()
    lat = analysis.latencies_ms(result.requests)
    assert np.percentile(lat["ttft_ms"], 50) == pytest.approx(result.summary["p50_ttft_ms"])


def test_step_breakdown_adds_up_to_the_cost_model(run):
    dep, result = run
    rows = analysis.step_breakdown(dep, result)
    assert rows["step"].nunique() == 3
    prompt = int(round(result.requests["input_tokens"].mean()))
    chunk = min(prompt, dep.scheduler.max_num_batched_tokens)
    label = f"prefill {chunk:,} tokens"
    assert rows[rows.step == label]["ms"].sum() == pytest.approx(dep.cost.step_time_s(prefill_shape(chunk)) * 1e3)
    decode = rows[rows.step.str.contains("(max)", regex=False)]
    max_b = int(result.timeline.loc[result.timeline.decode_tokens > 0, "batch_size"].max())
    ctx = int(round((result.requests["input_tokens"] + result.requests["output_tokens"] / 2).mean()))
    assert decode["ms"].sum() == pytest.approx(dep.cost.step_time_s(decode_shape(max_b, ctx)) * 1e3)
    assert set(rows["bound"]) <= {"compute", "memory", "link", "measured", "cpu"}


def test_step_breakdown_shows_the_draft_model_with_speculation():
    scenario = make_scenario({"num_requests": 40, "spec_k": 3})
    dep, result = build_deployment(scenario), simulate(scenario)
    rows = analysis.step_breakdown(dep, result)
    draft = rows[rows.operator == "draft model ×3"]
    assert len(draft) == 2 and (draft["ms"] > 0).all()  # on both decode steps, not on the prefill


def test_memory_rows_add_up_to_the_gpu(run):
    dep, _ = run
    rows = analysis.memory_rows(dep.memory)
    assert rows["GB"].sum() == pytest.approx(dep.gpu.memory_bytes / 1e9)
    assert rows.set_index("part").loc["KV cache", "GB"] == pytest.approx(dep.memory.kv_cache_bytes / 1e9)


def test_cost_summary_matches_the_run(run):
    _, result = run
    c = analysis.cost_summary(result.summary, result.meta)
    assert c["usd_per_million_output_tokens"] == pytest.approx(result.summary["usd_per_million_output_tokens"])
    s = result.summary
    assert c["usd_per_million_tokens"] == pytest.approx(
        s["cost_usd"] / (s["total_input_tokens"] + s["total_output_tokens"]) * 1e6)
    assert c["usd_per_hour"] == pytest.approx(result.meta["usd_per_hour_per_gpu"])


def test_scenario_yaml_round_trips_through_simulate(tmp_path, capsys):
    scenario = make_scenario({"num_requests": 60, "policy": "sjf", "gpu": "H200", "slo_tpot_ms": 40.0,
                              "max_num_batched_tokens": 1024})
    path = tmp_path / "scenario.yaml"
    path.write_text(analysis.scenario_yaml(scenario))
    assert load_scenario(path).config_hash() == scenario.config_hash()
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--config", str(path), "--json"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    doc = json.loads(out.out)
    assert doc["meta"]["config_hash"] == scenario.config_hash()
    assert doc["p99_ttft_ms"] == pytest.approx(simulate(scenario).summary["p99_ttft_ms"])


def test_scenario_bundle_names_its_files_relatively(tmp_path, monkeypatch):
    trace = tmp_path / "elsewhere" / "my trace.csv"
    trace.parent.mkdir()
    trace.write_text("input_tokens,output_tokens\n" + "".join(f"{100 + i},{20 + i}\n" for i in range(30)))
    scenario = make_scenario({"trace": str(trace), "arrival": "poisson", "rate": 4.0})
    z = zipfile.ZipFile(io.BytesIO(analysis.scenario_bundle(scenario, {"trace.csv": trace})))
    assert sorted(z.namelist()) == ["scenario.yaml", "trace.csv"]
    out = tmp_path / "unzipped"
    z.extractall(out)
    monkeypatch.chdir(out)
    again = load_scenario("scenario.yaml")
    assert again.trace == "trace.csv"
    assert simulate(again).summary["p50_e2el_ms"] == pytest.approx(simulate(scenario).summary["p50_e2el_ms"])


def test_results_zip_holds_the_output_files(run, tmp_path):
    _, result = run
    z = zipfile.ZipFile(io.BytesIO(analysis.results_zip(result)))
    assert {"requests.parquet", "timeline.parquet", "summary.json", "run.json", "requests.csv"} <= set(z.namelist())
    z.extractall(tmp_path)
    assert len(pd.read_csv(tmp_path / "requests.csv")) == len(result.requests)
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["config_hash"] == \
        result.meta["config_hash"]


def test_compare_and_slowdown_tables():
    base = {"num_requests": 120}
    results = {(p, r): simulate(make_scenario({**base, "policy": p, "rate": r})) for p in ("fcfs", "sjf")
               for r in (10.0, 40.0)}
    table = analysis.compare_table(results)
    assert len(table) == 4 and set(table["variant"]) == {"fcfs", "sjf"}
    row = table[(table.variant == "sjf") & (table.rate == 40.0)].iloc[0]
    assert row["p99_e2el_ms"] == results[("sjf", 40.0)].summary["p99_e2el_ms"]
    slow = analysis.slowdown_table({p: results[(p, 40.0)] for p in ("fcfs", "sjf")}, bins=4)
    assert list(slow[slow.variant == "fcfs"]["size_min"]) == list(slow[slow.variant == "sjf"]["size_min"])
    assert slow.groupby("variant")["count"].sum().to_dict() == {"fcfs": 120, "sjf": 120}


def test_roofline_sweep_rows_add_up(run):
    dep, _ = run
    rows = analysis.roofline_sweep(dep.cost, "decode", [1, 64], ctx_tokens=1000)
    for n in (1, 64):
        part = rows[rows["size"] == n]
        assert part["ms"].sum() == pytest.approx(dep.cost.step_time_s(decode_shape(n, 1000)) * 1e3)
        assert part["total_ms"].iloc[0] == pytest.approx(part["ms"].sum())
    assert set(analysis.roofline_sweep(dep.cost, "prefill", [512])["size"]) == {512}
    with pytest.raises(ValueError, match="kind"):
        analysis.roofline_sweep(dep.cost, "mixed", [1])
