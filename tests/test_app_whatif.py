"""The What-if page under streamlit's AppTest: the knobs make the scenario they say, the metrics and figures are
that scenario's simulated numbers, a changed knob changes them, and bad uploads are messages, not tracebacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_testing import BERT_CONFIG, LLAMA_CONFIG, SMALL_WINDOW_S, figures, metrics, ok, page, trace
from profile_helpers import synthetic_profile

from servesim.app import analysis, inputs
from servesim.cli.main import main
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.profile import save_profile
from servesim.sim.config import make_scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.simulator import simulate

PAGE_DEFAULTS = {"start_s": 0.0, "slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0}  # the page's own defaults


def _scenario(**changes):
    return make_scenario({**PAGE_DEFAULTS, "duration_s": SMALL_WINDOW_S, **changes})


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "store_dir", lambda: tmp_path / "store")


def show(at, view: str):
    """Switch the What-if page to one of its views and run it."""
    at.segmented_control(key="whatif.view").set_value(view)
    return ok(at.run())


@pytest.fixture
def whatif():
    """The page, run once with its defaults and then with the small test window."""
    at = ok(page("what_if").run())
    at.number_input(key="whatif.duration").set_value(SMALL_WINDOW_S)
    return ok(at.run())


def test_default_metrics_and_figures_are_the_scenarios_simulation(whatif):
    scenario = _scenario()
    expected = simulate(scenario)
    s = expected.summary
    assert f"`{scenario.config_hash()}`" in whatif.caption[0].value
    shown = metrics(whatif)
    assert shown["p50 TTFT (ms)"] == f"{s['p50_ttft_ms']:,.1f}"
    assert shown["p99 TPOT (ms)"] == f"{s['p99_tpot_ms']:,.2f}"
    assert shown["p99 E2E (ms)"] == f"{s['p99_e2el_ms']:,.0f}"
    assert shown["Output tokens/s"] == f"{s['output_throughput']:,.0f}"
    assert shown["SLO attainment (%)"] == f"{100 * s['slo_attainment']:.1f}"
    assert shown["$ per M output tokens"] == f"{s['usd_per_million_output_tokens']:,.3f}"

    figs = figures(whatif)
    assert set(figs) == {"TTFT CDF", "TPOT CDF", "E2E CDF", "Latency over time"}  # the Latency view
    lat = analysis.latencies_ms(expected.requests)
    cdf = trace(figs["TTFT CDF"], "TTFT")
    np.testing.assert_allclose(cdf["x"], np.sort(lat["ttft_ms"]))
    assert cdf["y"][-1] == 1.0
    assert figs["TTFT CDF"]["layout"]["shapes"][0]["x0"] == 500.0  # the SLO line
    over_time = analysis.latency_over_time(expected.requests)
    np.testing.assert_allclose(trace(figs["Latency over time"], "p99 E2E")["y"], over_time["p99_e2el_ms"])

    (timelines,) = figures(show(whatif, "Timelines")).values()
    binned = analysis.binned_timeline(expected.timeline)
    np.testing.assert_allclose(trace(timelines, "batch size")["y"], binned["batch_size"])
    np.testing.assert_allclose(trace(timelines, "KV used %")["y"], 100 * binned["kv_used_frac"])
    (memory,) = figures(show(whatif, "Memory & cost")).values()
    assert sum(t["x"][0] for t in memory["data"]) == pytest.approx(get_gpu(scenario.gpu).memory_bytes / 1e9)
    assert metrics(whatif)["$ per M tokens (in + out)"] == \
        f"{analysis.cost_summary(s, expected.meta)['usd_per_million_tokens']:,.3f}"
    (steps,) = figures(show(whatif, "Step time")).values()
    rows = analysis.step_breakdown(build_deployment(scenario), expected)
    assert sum(sum(t["x"]) for t in steps["data"]) == pytest.approx(rows["ms"].sum())


def test_a_slower_gpu_raises_tpot_and_shows_the_change(whatif):
    whatif.selectbox(key="whatif.gpu").set_value("H100-SXM")
    ok(whatif.run())
    h100 = simulate(_scenario(gpu="H100-SXM")).summary
    assert metrics(whatif)["p50 TPOT (ms)"] == f"{h100['p50_tpot_ms']:,.2f}"
    whatif.selectbox(key="whatif.gpu").set_value("A100-80GB-SXM")
    ok(whatif.run())
    a100 = simulate(_scenario(gpu="A100-80GB-SXM")).summary
    shown = {m.label: m for m in whatif.metric}
    assert shown["p50 TPOT (ms)"].value == f"{a100['p50_tpot_ms']:,.2f}"
    assert a100["p50_tpot_ms"] > h100["p50_tpot_ms"]  # 2.0 TB/s of HBM against 3.35: slower decode
    assert shown["p50 TPOT (ms)"].delta == f"{a100['p50_tpot_ms'] - h100['p50_tpot_ms']:+,.2f}"


def test_scheduler_spec_and_slo_knobs_reach_the_scenario(whatif):
    whatif.selectbox(key="whatif.policy").set_value("sjf")
    whatif.number_input(key="whatif.max_num_seqs").set_value(32)
    whatif.number_input(key="whatif.spec_k").set_value(3)
    whatif.number_input(key="whatif.slo_ttft").set_value(200.0)
    whatif.selectbox(key="whatif.quant").set_value("w4a16")
    ok(whatif.run())
    scenario = _scenario(policy="sjf", max_num_seqs=32, spec_k=3, slo_ttft_ms=200.0, quant="w4a16")
    assert f"`{scenario.config_hash()}`" in whatif.caption[0].value
    s = simulate(scenario).summary
    assert metrics(whatif)["p99 TTFT (ms)"] == f"{s['p99_ttft_ms']:,.1f}"
    (steps,) = figures(show(whatif, "Step time")).values()
    assert "draft model ×3" in {t["name"] for t in steps["data"]}


def test_piecewise_graphs_knob_prices_the_engines_piecewise_steps(whatif):
    """On the shipped H200 profile the box reaches the scenario and its numbers; on the roofline it is off."""
    box = whatif.checkbox(key="whatif.piecewise")
    assert not box.disabled and not box.value
    box.check()
    ok(whatif.run())
    scenario = _scenario(piecewise_graphs=True)
    assert f"`{scenario.config_hash()}`" in whatif.caption[0].value
    s = simulate(scenario).summary
    assert metrics(whatif)["p50 TTFT (ms)"] == f"{s['p50_ttft_ms']:,.1f}"
    assert s["p50_ttft_ms"] != simulate(_scenario()).summary["p50_ttft_ms"]
    whatif.radio(key="whatif.cost").set_value("roofline")
    ok(whatif.run())
    assert whatif.checkbox(key="whatif.piecewise").disabled
    assert f"`{_scenario(profile='roofline').config_hash()}`" in whatif.caption[0].value


def test_scenario_yaml_on_the_page_is_what_simulate_runs(whatif, tmp_path, capsys):
    whatif.selectbox(key="whatif.policy").set_value("srpt")
    show(whatif, "Downloads")
    labels = [b.proto.label for b in whatif.get("download_button")]
    assert labels[0] == "Scenario (YAML)" and any(x.startswith("Results (zip") for x in labels)
    path = tmp_path / "scenario.yaml"
    path.write_text(whatif.code[0].value)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--config", str(path), "--json"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    doc = json.loads(out.out)
    assert doc["meta"]["config_hash"] == _scenario(policy="srpt").config_hash()
    assert metrics(whatif)["p99 TTFT (ms)"] == f"{doc['p99_ttft_ms']:,.1f}"


def test_uploaded_trace_is_simulated(whatif):
    data = b"arrival_s,input_tokens,output_tokens\n" + b"".join(b"%g,%d,%d\n" % (i * 0.5, 200 + 7 * i, 30 + i)
                                                                for i in range(60))
    whatif.radio(key="whatif.workload_source").set_value("upload")
    ok(whatif.run())
    assert any("Upload a trace file" in e.value for e in whatif.error) and not whatif.metric
    whatif.sidebar.file_uploader[0].set_value(("mine.csv", data, "text/csv"))
    ok(whatif.run())
    assert not whatif.error
    assert "60 requests" in whatif.caption[0].value
    path, _ = inputs.trace_upload("mine.csv", data)
    s = simulate(make_scenario({**PAGE_DEFAULTS, "trace": str(path), "duration_s": SMALL_WINDOW_S})).summary
    assert metrics(whatif)["p99 E2E (ms)"] == f"{s['p99_e2el_ms']:,.0f}"
    # The bundle names the trace beside the YAML.
    whatif.selectbox(key="whatif.arrival.True").set_value("poisson")
    show(whatif, "Downloads")
    assert any("zip" in b.proto.label for b in whatif.get("download_button"))
    assert "trace: mine.csv\n" in whatif.code[0].value  # named as the bundle holds it


@pytest.mark.parametrize("data, needle", [
    (b"when,prompt,reply\n1,2,3\n", "bad.csv: unknown trace format"),
    (b"arrival_s,input_tokens,output_tokens\n0,100,-4\n", "bad.csv, row 1, column 'output_tokens': must be a "
                                                          "positive token count"),
])
def test_bad_trace_upload_is_a_message(whatif, data, needle):
    whatif.radio(key="whatif.workload_source").set_value("upload")
    whatif.run()
    whatif.sidebar.file_uploader[0].set_value(("bad.csv", data, "text/csv"))
    ok(whatif.run())
    assert [e.value for e in whatif.error] == [f"Trace not usable: {needle}" + e.value.split(needle, 1)[1]
                                               for e in whatif.error]
    assert not whatif.metric and not whatif.get("plotly_chart")


def test_oversized_trace_upload_is_a_message(whatif, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_TRACE_BYTES", 1024)
    whatif.radio(key="whatif.workload_source").set_value("upload")
    whatif.run()
    whatif.sidebar.file_uploader[0].set_value(("big.csv", b"input_tokens,output_tokens\n" + b"10,10\n" * 400,
                                               "text/csv"))
    ok(whatif.run())
    assert "big.csv: 2.4 KiB is over the dashboard's 1.0 KiB limit for traces" in whatif.error[0].value


def test_config_json_upload_decoder_runs_and_encoder_is_refused(whatif):
    whatif.radio(key="whatif.model_source").set_value("config.json")
    whatif.run()
    uploader = whatif.sidebar.file_uploader[0]
    uploader.set_value(("config.json", json.dumps(BERT_CONFIG).encode(), "application/json"))
    ok(whatif.run())
    assert "BertForMaskedLM is not a decoder-only causal LM" in whatif.error[0].value
    assert not whatif.metric
    whatif.sidebar.file_uploader[0].set_value(("llama-1b.json", json.dumps(LLAMA_CONFIG).encode(), "application/json"))
    ok(whatif.run())
    assert not whatif.error
    path, _ = inputs.config_upload("llama-1b.json", json.dumps(LLAMA_CONFIG).encode())
    s = simulate(_scenario(model=str(path))).summary
    assert metrics(whatif)["p50 TPOT (ms)"] == f"{s['p50_tpot_ms']:,.2f}"
    assert "llama-1b on 1×" in whatif.caption[0].value


def test_uploaded_profile_prices_the_steps(whatif, tmp_path):
    path = tmp_path / "h200.json"
    save_profile(synthetic_profile(), path)
    whatif.selectbox(key="whatif.gpu").set_value("H200")
    whatif.radio(key="whatif.cost").set_value("profile file")
    ok(whatif.run())
    assert "Upload a calibration profile" in whatif.error[0].value
    uploader = next(u for u in whatif.sidebar.file_uploader if "Calibration profile" in u.label)
    uploader.set_value(("h200.json", path.read_bytes(), "application/json"))
    ok(whatif.run())
    stored, _ = inputs.profile_upload("h200.json", path.read_bytes())
    scenario = _scenario(gpu="H200", profile=str(stored))
    assert "cost model **synthetic-h200** (calibrated)" in whatif.caption[0].value
    s = simulate(scenario).summary
    assert metrics(whatif)["p50 TPOT (ms)"] == f"{s['p50_tpot_ms']:,.2f}"
    roofline = simulate(_scenario(gpu="H200", profile="roofline")).summary
    assert s["p50_tpot_ms"] != roofline["p50_tpot_ms"]
    whatif.radio(key="whatif.cost").set_value("roofline")
    ok(whatif.run())
    assert metrics(whatif)["p50 TPOT (ms)"] == f"{roofline['p50_tpot_ms']:,.2f}"
    assert "cost model **roofline**" in whatif.caption[0].value


def test_synthetic_workload(whatif):
    whatif.radio(key="whatif.workload_source").set_value("synthetic")
    whatif.run()
    whatif.number_input(key="whatif.syn_n").set_value(120)
    whatif.number_input(key="whatif.rate").set_value(8.0)
    ok(whatif.run())
    path = inputs.synthetic_lengths(120, 1000.0, 1.0, 200.0, 0.8, 0, max_tokens=128_000)
    scenario = make_scenario({"slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0, "trace": str(path), "arrival": "poisson",
                              "rate": 8.0})
    assert f"`{scenario.config_hash()}`" in whatif.caption[0].value
    assert "120 requests" in whatif.caption[0].value


def test_a_configuration_that_cannot_run_says_why(whatif):
    whatif.selectbox(key="whatif.model").set_value("Llama-3.1-70B")
    ok(whatif.run())
    assert whatif.error[0].value.startswith("This configuration cannot run: Llama-3.1-70B in bf16 needs")
    assert not whatif.metric
