"""The closed loop on the CPU with a tiny model: calibrate (torch reference path) -> profile -> simulate ->
engine replay -> validation report. Accuracy is measured on the GPU (validation/results/), never asserted here:
this checks that every piece runs and the report is complete."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from servesim.cli.main import main
from tests.engine_helpers import tiny_config, write_config

pytest.importorskip("torch")


def cli(*argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    model = write_config(tiny_config(hidden_size=128, intermediate_size=256, head_dim=32,
                                     max_position_embeddings=4096), root / "model")
    rng = np.random.default_rng(0)
    trace = root / "trace.csv"
    pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, 0.5, 16)), "input_tokens": rng.integers(8, 120, 16),
                  "output_tokens": rng.integers(2, 16, 16)}).to_csv(trace, index=False)
    profile = root / "cpu.json"
    assert cli("calibrate", "--device", "cpu", "--models", model, "--quant", "bf16", "--kv-dtype", "bf16",
               "--tp", "1", "--gpu", "H100-SXM", "--step-requests", "16", "--out", str(profile)) == 0
    return root, model, trace, profile


def test_calibrate_writes_a_loadable_profile_with_fit_quality(setup):
    from servesim.calibrate.run import held_out_step_errors
    from servesim.hwmodels.profile import load_profile

    prof = load_profile(setup[3])
    assert prof.provenance.condition == "cpu-wall" and prof.fit.ops and "bf16" in prof.fit.steps
    assert prof.fit.method == "off-grid" and all(t.held_out_s for t in prof.tables if t.op == "gemm")
    # the host's launch speed where the operators were timed and where each format's floors were
    assert prof.provenance.host_launch_us > 0 and all(f.host_launch_us > 0 for f in prof.steps.values())
    # the whole-step errors reported are those of the profile as written (after the refit's terms)
    steps = pd.read_parquet(setup[3].with_suffix(".steps.parquet"))
    again = held_out_step_errors(prof, steps, setup[1])
    assert again.keys() == prof.fit.steps.keys()
    assert all(again[f] == pytest.approx(prof.fit.steps[f]) for f in again)
    assert {t.op for t in prof.tables} >= {"gemm", "attn_prefill", "attn_decode", "rms_norm", "step_overhead"}


def test_step_terms_fit_the_same_way_in_a_new_process(setup):
    """``--steps-in fresh`` (the default on CUDA) runs fit_steps in a spawned process: the same fit comes back."""
    from servesim.calibrate.run import fit_steps_in, step_process
    from servesim.hwmodels.profile import load_profile

    assert step_process("auto", "cuda") == "fresh" and step_process("auto", "cpu") == "same"
    assert step_process("same", "cuda") == "same"
    with pytest.raises(ValueError, match="step process"):
        step_process("elsewhere", "cpu")
    import multiprocessing as mp

    prof = load_profile(setup[3])
    before = set(mp.active_children())  # other tests' pools (joblib's) may be alive
    fit, over, it = fit_steps_in("fresh", setup[1], "bf16", prof, "cpu", 8)
    assert type(fit).__name__ == "StepFit" and fit.eager_floor_s > 0 and {t.op for t in over} == {"step_overhead"}
    assert len(it) > 3 and {"gpu_s", "kernels_s", "predicted_s", "format"} <= set(it.columns)
    assert not set(mp.active_children()) - before  # the fit's process is gone
    rounds = it.attrs["eager_floor_rounds_s"]  # built, warmed up, after the fitted run (alone, beside a decode)
    assert len(rounds) == 3 and all(a > 0 and b > 0 for a, b in rounds)
    assert fit.eager_floor_s == sorted(a for a, _ in rounds)[1]  # their median


def test_calibrate_refuses_an_unknown_step_process(setup, capsys):
    assert cli("calibrate", "--device", "cpu", "--models", setup[1], "--steps-in", "elsewhere") != 0
    assert "--steps-in" in capsys.readouterr().err


def test_calibration_report_is_complete(setup, tmp_path):
    assert cli("calibrate", "report", str(setup[3]), "--out-dir", str(tmp_path / "r")) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Roofline against the measurements" in md and "Fit quality" in md
    assert "plotly" in (tmp_path / "r" / "report.html").read_text()[:5000].lower()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["by_op"]


def test_simulate_with_the_profile_names_it(setup, capsys):
    root, model, trace, profile = setup
    assert cli("simulate", "--model", model, "--gpu", "H100-SXM", "--trace", str(trace), "--profile", str(profile),
               "--max-model-len", "512", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["profile_id"].startswith("cpu-") and doc["completed"] == 16


def test_validate_on_the_cpu_engine_writes_a_complete_report(setup, tmp_path):
    root, model, trace, profile = setup
    out = tmp_path / "v"
    assert cli("validate", "--device", "cpu", "--model", model, "--gpu", "H100-SXM", "--trace", str(trace),
               "--profile", str(profile), "--max-model-len", "512", "--max-num-seqs", "8",
               "--out-dir", str(out)) == 0
    doc = json.loads((out / "report.json").read_text())
    keys = {m["key"] for m in doc["metrics"]}
    assert {"mean_ttft_ms", "p99_tpot_ms", "median_e2el_ms", "output_throughput"} <= keys
    assert all(m["measured"] is not None for m in doc["metrics"] if m["metric"] != "itl")
    assert doc["iteration_bins"] and doc["summary"]["iterations"] > 0
    probes = doc["case"]["host_launch_us"]  # the host's launch speed after the warm-up and after the run
    assert len(probes) == 2 and all(0 < x < 10_000 for x in probes)
    md = (out / "report.md").read_text()
    assert "predicted vs measured" in md and "Iterations by batch composition" in md
    for side in ("predicted", "measured"):
        assert (out / side / "summary.json").exists() and (out / side / "requests.parquet").exists()
    assert (out / "measured" / "iterations.parquet").exists() and (out / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("fixture", ["vllm/bench_serve_detailed.json", "guidellm/benchmarks_v07.json", "aiperf"])
def test_validate_from_files_writes_a_complete_report(fixture, tmp_path):
    from pathlib import Path

    src = Path(__file__).parent / "fixtures" / "external" / fixture
    if src.is_dir() and not any(src.iterdir()):
        pytest.skip("fixture missing")
    out = tmp_path / "ext"
    pick = ["--benchmark", "0"] if "guidellm" in fixture else []
    assert cli("validate", "--from-files", str(src), *pick, "--gpu", "H100-SXM", "--out-dir", str(out)) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["notes"] and any(m["measured"] is not None for m in doc["metrics"])
    assert "predicted vs measured" in (out / "report.md").read_text()


def test_replay_speculates_in_the_controlled_mode_with_random_weights(setup, capsys):
    root, model, trace, profile = setup
    assert cli("replay", "--device", "cpu", "--model", model, "--gpu", "H100-SXM", "--trace", str(trace),
               "--max-model-len", "512", "--max-num-seqs", "8", "--spec-k", "2", "--draft-model", model,
               "--spec-alpha", "0.5", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    spec = doc["meta"]["engine"]["speculation"]
    assert spec["k"] == 2 and spec["mode"] == "controlled" and "alpha 0.5" in spec["note"]
    assert doc["completed"] == 16


def test_suite_cases_name_the_gpus_they_need_and_skip_on_smaller_machines(tmp_path, monkeypatch):
    """A case marked ``gpus: 2`` (its engine at TP 2) is skipped, not failed, where the machine has fewer GPUs;
    a case asking for fewer GPUs than its TP is a one-line error naming the field."""
    from servesim.errors import InputError
    from servesim.validate import run
    from servesim.validate.run import EngineOptions, load_suite, run_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text("base: {model: Llama-3.1-70B, gpu: H200}\n"
                     "cases:\n  - {name: tp2, gpus: 2, scenario: {tp: 2, trace: azure-conv, num_requests: 5}}\n")
    assert load_suite(suite)[1][0]["gpus"] == 2
    monkeypatch.setattr(run, "_gpus", lambda device: 1)  # a one-GPU CUDA machine
    skipped = []
    rows = run_suite(suite, tmp_path / "out", EngineOptions(device="cuda"),
                     on_skip=lambda name, why: skipped.append((name, why)))
    assert rows == [] and skipped == [("tp2", "needs 2 GPUs; this machine has 1")]
    assert not (tmp_path / "out" / "tp2").exists()
    suite.write_text(suite.read_text().replace("gpus: 2", "gpus: 1"))
    with pytest.raises(InputError, match=r"cases\[0\].gpus") as e:
        load_suite(suite)
    assert "at least tp x pp = 2" in str(e.value)


MULTI_GPU_CASES = {"llama70b-tp2-azure-conv-bf16-70pct": 2, "llama70b-tp4-azure-conv-bf16-70pct": 4}


@pytest.mark.parametrize("have", [0, 1])
def test_the_suite_parses_and_its_multi_gpu_cases_skip_on_a_small_machine(tmp_path, monkeypatch, have):
    """validation/suite.yaml as shipped: every case a valid scenario; the Llama-3.1-70B cases at TP 2 and 4 say
    so in ``gpus``, stay within a few hundred requests, and are skipped (nothing written) where CUDA sees fewer
    GPUs (none, or one)."""
    from pathlib import Path

    from servesim.validate import run
    from servesim.validate.run import EngineOptions, load_suite, run_suite

    suite = Path(__file__).resolve().parents[1] / "validation" / "suite.yaml"
    _, cases = load_suite(suite)
    by_name = {c["name"]: c for c in cases}
    assert len(by_name) == len(cases)
    for name, gpus in MULTI_GPU_CASES.items():
        s = by_name[name]["scenario"]
        assert by_name[name]["gpus"] == gpus == s.tp and s.model == "Llama-3.1-70B" and s.trace == "azure-conv"
        assert s.num_requests <= 300
    assert all(c["gpus"] == 1 for c in cases if c["name"] not in MULTI_GPU_CASES)
    monkeypatch.setattr(run, "_gpus", lambda device: have)
    skipped = []
    rows = run_suite(suite, tmp_path / "out", EngineOptions(device="cuda"), only=list(MULTI_GPU_CASES),
                     on_skip=lambda name, why: skipped.append((name, why)))
    assert rows == [] and [n for n, _ in skipped] == list(MULTI_GPU_CASES)
    assert skipped[0][1] == f"needs 2 GPUs; this machine has {have}"
    assert not (tmp_path / "out").exists()


def test_reprice_remakes_the_prediction_and_keeps_the_measured_run(setup, tmp_path):
    """A suite case run on the CPU engine, then `validate --reprice`: with the same cost model every error is the
    one reported; with another (the roofline) the measured values stay and the predictions move."""
    root, model, trace, profile = setup
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"base: {{model: '{model}', gpu: H100-SXM, max_model_len: 512, max_num_seqs: 8, "
                     f"profile: '{profile}'}}\ncases:\n  - {{name: c1, why: tiny, scenario: {{trace: '{trace}'}}}}\n")
    out = tmp_path / "out"
    assert cli("validate", "--suite", str(suite), "--out-dir", str(out), "--device", "cpu") == 0
    doc = json.loads((out / "c1" / "report.json").read_text())
    assert doc["case"]["num_gpu_blocks"] > 0
    same, other = tmp_path / "same", tmp_path / "roofline"
    assert cli("validate", "--reprice", str(same), "--out-dir", str(out)) == 0
    again = json.loads((same / "c1" / "report.json").read_text())
    assert [m["error"] for m in again["metrics"]] == pytest.approx([m["error"] for m in doc["metrics"]], nan_ok=True)
    assert again["summary"] == pytest.approx(doc["summary"], nan_ok=True)
    assert "re-made on the CPU" in again["notes"][-1] and (same / "summary.md").exists()
    assert cli("validate", "--reprice", str(other), "--out-dir", str(out), "--profile", "roofline") == 0
    moved = json.loads((other / "c1" / "report.json").read_text())
    assert moved["case"]["profile_id"] == "roofline" and moved["case"]["repriced_from"] == doc["case"]["profile_id"]
    assert [m["measured"] for m in moved["metrics"]] == [m["measured"] for m in doc["metrics"]]
    assert [m["predicted"] for m in moved["metrics"]] != [m["predicted"] for m in doc["metrics"]]
    meas = [c for c in pd.read_parquet(out / "c1" / "requests.parquet").columns if c.endswith("_meas")]
    assert pd.read_parquet(other / "c1" / "requests.parquet")[meas].equals(
        pd.read_parquet(out / "c1" / "requests.parquet")[meas])


def test_piecewise_steps_calibrate_simulate_replay_validate_and_reprice(setup, tmp_path, capsys):
    """Piecewise graphs end to end on the CPU: the calibration fits their terms on its second engine run; simulate,
    replay and validate take --piecewise-graphs (the scenario's field); the validation prices each piecewise step
    as one and says so per mode; --reprice uses the stored run's setting (a run stored before the field: off)."""
    from servesim.hwmodels.profile import load_profile
    from servesim.validate.run import load_suite

    root, model, trace, profile = setup
    prof = load_profile(profile)
    fit = prof.steps["bf16"]
    assert fit.piecewise_steps > 0 and fit.piecewise_floor_s > 0 and fit.piecewise_floor_mixed_s > 0
    assert any(fit.piecewise_host_s) and prof.fit.steps["bf16"]["piecewise_steps"] > 0
    steps = pd.read_parquet(profile.with_suffix(".steps.parquet"))
    assert set(steps.run) == {"eager", "piecewise"} and (steps["mode"] == "piecewise").any()
    import shutil  # `calibrate refit --steps` with the iterations of both runs, and with a log before the runs
    for cut in (False, True):
        copy = tmp_path / f"refit{cut}.json"
        shutil.copy(profile, copy)
        its = steps.drop(columns=["run", "mode", "piecewise"]) if cut else steps
        its.to_parquet(tmp_path / "steps.parquet", index=False)
        assert cli("calibrate", "refit", str(copy), "--steps", str(tmp_path / "steps.parquet")) == 0
        new = load_profile(copy)
        assert new.steps["bf16"].piecewise_host_s == pytest.approx(fit.piecewise_host_s)
        assert new.steps["bf16"].eager_host_s == pytest.approx(fit.eager_host_s, rel=1e-6, abs=1e-12) or cut
        assert ("piecewise_median_abs" in new.fit.steps["bf16"]) != cut
    capsys.readouterr()
    flags = ["--model", model, "--gpu", "H100-SXM", "--trace", str(trace), "--max-model-len", "512",
             "--max-num-seqs", "8"]
    assert cli("simulate", *flags, "--profile", str(profile), "--piecewise-graphs", "--json") == 0
    meta = json.loads(capsys.readouterr().out)["meta"]
    assert meta["scenario"]["piecewise_graphs"] and "piecewise(fallback)" not in meta["cost_extrapolated"]
    assert cli("replay", "--device", "cpu", *flags, "--piecewise-graphs", "--output-dir", str(tmp_path / "r")) == 0
    it = pd.read_parquet(tmp_path / "r" / "iterations.parquet")
    assert (it.piecewise == (it.prefill_tokens > 0)).all() and it.piecewise.any()
    out = tmp_path / "v"
    suite = tmp_path / "suite.yaml"  # --piecewise-graphs over every case of the suite
    suite.write_text(f"base: {{model: '{model}', gpu: H100-SXM, max_model_len: 512, max_num_seqs: 8, "
                     f"profile: '{profile}'}}\ncases:\n  - {{name: pw, why: tiny, scenario: {{trace: '{trace}'}}}}\n")
    assert cli("validate", "--suite", str(suite), "--device", "cpu", "--piecewise-graphs", "--out-dir", str(out)) == 0
    doc = json.loads((out / "pw" / "report.json").read_text())
    assert doc["case"]["piecewise_graphs"] and doc["case"]["scenario"]["piecewise_graphs"]
    modes = {m["mode"]: m for m in doc["iteration_modes"]}
    assert modes["piecewise"]["iterations"] > 0 and modes["piecewise"]["priced_otherwise"] == 0
    table = pd.read_parquet(out / "pw" / "iterations.parquet")
    pw = table["mode"] == "piecewise"
    assert (table.priced_as[pw] == "piecewise").all() and (table.op_padding[pw] > 0).any()
    assert "Iterations by step mode" in (out / "pw" / "report.md").read_text()
    again = tmp_path / "again"
    assert cli("validate", "--reprice", str(again), "--out-dir", str(out)) == 0
    redo = json.loads((again / "pw" / "report.json").read_text())
    assert redo["summary"] == pytest.approx(doc["summary"], nan_ok=True) and redo["case"]["piecewise_graphs"]
    assert cli("validate", "--reprice", str(again), "--out-dir", str(out), "--piecewise-graphs") != 0
    stored = json.loads((out / "pw" / "report.json").read_text())  # as a run stored before the field
    del stored["case"]["scenario"]["piecewise_graphs"], stored["case"]["piecewise_graphs"]
    (out / "pw" / "report.json").write_text(json.dumps(stored))
    old = tmp_path / "old"
    assert cli("validate", "--reprice", str(old), "--out-dir", str(out)) == 0
    assert not json.loads((old / "pw" / "report.json").read_text())["case"]["piecewise_graphs"]
    assert "piecewise" not in set(pd.read_parquet(old / "pw" / "iterations.parquet").priced_as)
    suite = tmp_path / "suite2.yaml"  # a suite sets it in its base or per case; --piecewise-graphs over all
    suite.write_text(f"base: {{model: '{model}', gpu: H100-SXM, max_model_len: 512, piecewise_graphs: true}}\n"
                     f"cases:\n  - {{name: a, scenario: {{trace: '{trace}'}}}}\n"
                     f"  - {{name: b, scenario: {{trace: '{trace}', piecewise_graphs: false}}}}\n")
    assert [c["scenario"].piecewise_graphs for c in load_suite(suite)[1]] == [True, False]
    assert [c["scenario"].piecewise_graphs for c in load_suite(suite, {"piecewise_graphs": True})[1]] == [True, True]
