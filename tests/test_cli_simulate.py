"""`servesim simulate` and `servesim compare` end to end: flags, YAML, outputs, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from servesim.cli.main import main
from servesim.sim.config import FIELD_GROUPS, Scenario


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_simulate_json_has_vllm_keys(capsys):
    code, out, err = run(capsys, "simulate", "--num-requests", "150", "--json", "--slo-ttft-ms", "100")
    assert code == 0, err
    doc = json.loads(out)
    for key in ("mean_ttft_ms", "p99_tpot_ms", "median_itl_ms", "p90_e2el_ms", "request_throughput",
                "output_throughput", "total_token_throughput", "completed", "request_goodput"):
        assert key in doc
    assert doc["completed"] == 150
    assert doc["meta"]["scenario"]["slo_ttft_ms"] == 100
    assert len(doc["meta"]["config_hash"]) == 16


def test_simulate_writes_outputs(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "simulate", "--num-requests", "120", "--output-dir", str(out_dir),
                         "--chrome-trace", "--policy", "sjf")
    assert code == 0, err
    assert "TTFT" in out
    req = pd.read_parquet(out_dir / "requests.parquet")
    assert len(req) == 120 and {"first_token_s", "finish_s", "ideal_e2el_s"} <= set(req.columns)
    assert len(pd.read_parquet(out_dir / "timeline.parquet")) > 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["meta"]["scenario"]["policy"] == "sjf"
    assert json.loads((out_dir / "trace.json").read_text())["traceEvents"]


def test_yaml_scenario_with_flag_override(capsys, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("trace: azure-code\nnum-requests: 80\nmax_num_seqs: 32\npolicy: srpt\n")
    code, out, err = run(capsys, "simulate", "--config", str(cfg), "--policy", "fcfs", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["meta"]["scenario"]["policy"] == "fcfs"  # the flag wins
    assert doc["meta"]["scenario"]["max_num_seqs"] == 32 and doc["completed"] == 80


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "Llama-3.1-70B"], "141.1 GB"),
        (["--gpu", "H100-SXM", "--gpu-memory-utilization", "0.2"], "no room for the KV cache"),
        (["--tp", "3"], "field 'tp'"),
        (["--trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (["--trace", "arxiv-summarization"], "field 'arrival'"),
        (["--arrival", "poisson"], "field 'rate'"),
        (["--max-num-seqs", "0"], "field 'max_num_seqs'"),
        # runs, but every request is rejected: exit 2 with the reason, nothing written
        (["--num-gpu-blocks", "1", "--num-requests", "5"], "all 5 requests rejected"),
        (["--max-model-len", "10", "--num-requests", "5"], "> max_model_len 10"),
    ],
)
def test_bad_configs_exit_2_with_one_line(capsys, tmp_path, argv, needle):
    out_dir = tmp_path / "never"
    code, out, err = run(capsys, "simulate", "--output-dir", str(out_dir), *argv)
    assert code == 2
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # no half-written output


def test_bad_yaml_names_file_and_field(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("policy: lifo\n")
    code, _, err = run(capsys, "simulate", "--config", str(cfg))
    assert code == 2 and str(cfg) in err and "policy" in err
    cfg.write_text("unknown_knob: 3\n")
    code, _, err = run(capsys, "simulate", "--config", str(cfg))
    assert code == 2 and "unknown_knob" in err


def test_help_lists_every_field_with_units(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "simulate", "--help")
    assert code == 0
    for flag in ("--max-num-batched-tokens", "--slo-ttft-ms", "--spec-k", "--router", "--prefix-caching"):
        assert flag in out
    assert "tokens" in out and "requests/s" in out and ", s" in out and "(default: Llama-3.1-8B)" in out
    for group in FIELD_GROUPS:
        assert group in out


def test_every_scenario_field_is_in_one_help_group():
    grouped = [name for names in FIELD_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Scenario.model_fields) and len(set(grouped)) == len(grouped)


def test_compare_policies_at_several_loads(capsys):
    code, out, err = run(capsys, "compare", "--policies", "fcfs,sjf", "--rates", "4,8",
                         "--num-requests", "150", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"fcfs @ 4/s", "sjf @ 4/s", "fcfs @ 8/s", "sjf @ 8/s"}
    assert all(len(v["slowdown"]) >= 1 for v in doc.values())
    code, out, err = run(capsys, "simulate", "--policies", "fcfs,srpt", "--num-requests", "100")
    assert code == 0 and "srpt" in out and "slowdown" in out.lower()
    code, _, err = run(capsys, "compare", "--policies", "fcfs,lifo")
    assert code == 2 and "lifo" in err


def test_user_gpu_from_yaml(capsys, tmp_path):
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(
        "H100-half:\n  memory_gib: 80\n  hbm_tbps: 1.675\n"
        "  tflops: {fp32: 33, tf32: 247, bf16: 494.7, fp16: 494.7, fp8: 989.4, int8: 989.4}\n"
        "  sm_count: 66\n  interconnect_gbps: 900\n  pcie_gbps: 128\n  tdp_w: 350\n  usd_per_hour: 1.5\n"
        "  source: an H100 at half speed, for this test\n"
    )
    args = ["simulate", "--num-requests", "100", "--json"]
    code, fast, _ = run(capsys, *args)
    code2, slow, err = run(capsys, *args, "--gpus-file", str(gpus), "--gpu", "H100-half")
    assert code == code2 == 0, err
    assert json.loads(slow)["mean_tpot_ms"] > 1.5 * json.loads(fast)["mean_tpot_ms"]
    code, _, err = run(capsys, *args, "--gpus-file", str(gpus), "--gpu", "H100-quarter")
    assert code == 2 and "H100-quarter" in err
