"""External benchmark results (vLLM bench serve, GuideLLM, AIPerf) read into servesim's terms.

Fixtures (tests/fixtures/external/, written by make_fixtures.py there, which says which version's schema each
follows) are small runs laid out as each tool documents its files, their aggregates computed the way each tool
computes them. The tests recompute the aggregates from the loaded rows with servesim's own vLLM-definition
statistics (servesim.sim.metrics.latency_stats) and check them against the file where the tool defines the
metric as vLLM does, and against the tool's own definition where it does not.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servesim.errors import InputError
from servesim.sim.config import Scenario
from servesim.sim.simulator import simulate
from servesim.validate.external import (
    REQUEST_COLUMNS,
    detect_tool,
    external_summary,
    external_workload,
    load_external,
    load_external_all,
)

FIX = Path(__file__).parent / "fixtures" / "external"
VLLM = FIX / "vllm" / "bench_serve_detailed.json"
VLLM_LEGACY = FIX / "vllm" / "benchmark_serving_legacy.json"
GUIDELLM = FIX / "guidellm" / "benchmarks_v07.json"
GUIDELLM_03 = FIX / "guidellm" / "benchmarks_v03.json"
AIPERF = FIX / "aiperf" / "profile_export.jsonl"
AIPERF_AGG = FIX / "aiperf" / "profile_export_aiperf.json"
ALL = {VLLM: "vllm", VLLM_LEGACY: "vllm", GUIDELLM: "guidellm", GUIDELLM_03: "guidellm", AIPERF: "aiperf",
       AIPERF_AGG: "aiperf"}


def raw(path: Path):
    return json.loads(path.read_text())


def write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def completed(run):
    df = run.requests
    return df[(df["rejected_reason"] == "") & df["measured"]]


def recomputed(run, keys) -> dict[str, float]:
    """external_summary (vLLM's definitions, servesim's code) for the keys the file reports."""
    again = external_summary(run)
    return {k: again[k] for k in keys if k in again}


def inverse_cdf(values, q: float) -> float:
    """GuideLLM's percentile: the first sorted value whose cumulative share reaches q (no interpolation)."""
    v = np.sort(np.asarray(values))
    return float(v[min(int(np.searchsorted(np.arange(1, len(v) + 1) / len(v), q - 1e-12)), len(v) - 1)])


def check_contract(run) -> None:
    """What every loader promises about `requests`, whatever the input."""
    df = run.requests
    assert list(df.columns) == list(REQUEST_COLUMNS)
    for col, dtype in REQUEST_COLUMNS.items():
        assert str(df[col].dtype) == dtype, col
    assert sorted(df["request_id"]) == list(range(len(df)))
    replay = (df["rejected_reason"] == "") & (df["input_tokens"] > 0) & (df["output_tokens"] > 0)
    assert df.loc[replay, "request_id"].tolist() == list(range(replay.sum()))  # as external_workload numbers them
    arr = df["arrival_s"].dropna().to_numpy()
    assert (np.diff(arr) >= 0).all() and (arr >= 0).all()
    failed = df["rejected_reason"] != ""
    assert df.loc[failed, ["first_token_s", "finish_s", "ttft_s", "e2el_s"]].isna().all().all()
    ok = df[~failed]
    assert (ok["e2el_s"] >= 0).all()
    assert (ok["ttft_s"].dropna() >= 0).all()
    both = ok.dropna(subset=["ttft_s", "e2el_s"])
    assert (both["ttft_s"] <= both["e2el_s"] + 1e-6 * np.maximum(1, both["e2el_s"])).all()
    timed = ok.dropna(subset=["arrival_s", "first_token_s"])
    assert (timed["first_token_s"] >= timed["arrival_s"] - 1e-9).all()
    assert (timed["finish_s"] >= timed["first_token_s"] - 1e-6).all()
    assert (df["input_tokens"] >= 0).all() and (df["output_tokens"] >= 0).all()
    assert all(g is None or (isinstance(g, list) and all(x >= 0 for x in g)) for g in df["itl_s"])
    assert isinstance(run.summary, dict) and all(isinstance(v, float) for v in run.summary.values())
    assert run.alignment and all(isinstance(s, str) and s for s in run.alignment)
    assert run.meta["loop"] in ("open", "closed") and run.meta["send_times"] in ("measured", "reconstructed",
                                                                                  "unknown")


# -- detection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,tool", ALL.items(), ids=lambda x: getattr(x, "name", x))
def test_tool_is_told_from_the_content(path, tool, tmp_path):
    assert detect_tool(path) == tool
    renamed = shutil.copy(path, tmp_path / "results.txt")  # no telling suffix
    assert detect_tool(renamed) == tool
    run = load_external_all(renamed)[0]
    assert run.tool == tool
    check_contract(run)


def test_a_directory_holding_a_default_file_name(tmp_path):
    shutil.copy(AIPERF, tmp_path / "profile_export.jsonl")
    shutil.copy(AIPERF_AGG, tmp_path / "profile_export_aiperf.json")
    run = load_external(tmp_path)
    assert run.tool == "aiperf" and run.summary and len(run.requests) == 6
    with pytest.raises(InputError, match="directory without a results file"):
        load_external(tmp_path / "..")


def test_unknown_tool_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown results tool 'vlm'; closest: vllm"):
        load_external(VLLM, tool="vlm")
    with pytest.raises(InputError, match="not a result file of vLLM bench serve, GuideLLM or AIPerf"):
        load_external(write(tmp_path / "x.json", {"foo": 1}))
    csv = tmp_path / "trace.csv"
    csv.write_text("arrival_s,input_tokens,output_tokens\n0,10,10\n")
    with pytest.raises(InputError, match="trace.csv"):
        load_external(csv)
    with pytest.raises(InputError, match="a GuideLLM report is an object"):
        load_external(VLLM, tool="guidellm")  # told the wrong tool: that reader's own complaint


# -- vLLM -----------------------------------------------------------------------------------------------------


def test_vllm_rows_are_the_files_arrays_in_send_order():
    run, doc = load_external(VLLM), raw(VLLM)
    df = run.requests
    order = np.argsort(doc["start_times"], kind="stable")
    assert df["tool_request_id"].tolist() == [str(i) for i in order]
    assert df["arrival_s"].tolist() == pytest.approx(list(np.array(doc["start_times"])[order]
                                                          - min(doc["start_times"])), abs=1e-12)
    assert df["input_tokens"].tolist() == list(np.array(doc["input_lens"])[order])
    assert df["output_tokens"].tolist() == list(np.array(doc["output_lens"])[order])
    ok = df["rejected_reason"] == ""
    assert df.loc[ok, "e2el_s"].tolist() == pytest.approx([doc["latencies"][i] for i in order if not doc["errors"][i]])
    assert df.loc[ok, "first_token_s"].tolist() == pytest.approx((df["arrival_s"] + df["ttft_s"])[ok].tolist())
    assert df.loc[ok, "itl_s"].tolist() == [doc["itls"][i] for i in order if not doc["errors"][i]]
    # the failed request keeps its tokens (0) and its error's last line
    bad = df[~ok].iloc[0]
    assert bad["rejected_reason"] == "aiohttp.client_exceptions.ServerDisconnectedError: Server disconnected"
    assert bad["output_tokens"] == 0 and bad["itl_s"] is None
    assert run.meta["model"] == "meta-llama/Llama-3.1-8B-Instruct" and run.meta["rate_per_s"] == 4.0
    assert run.meta["send_times"] == "measured" and run.meta["loop"] == "open"


def test_vllm_aggregates_recomputed_from_the_rows_agree_with_the_file():
    run = load_external(VLLM)
    rows = completed(run)
    latency_keys = [k for k in run.summary if k.endswith("_ms")]
    assert len(latency_keys) == 4 * 6  # ttft, tpot, itl, e2el x mean, median, std, p50, p90, p99
    again = recomputed(run, latency_keys)
    assert again.keys() == set(latency_keys)
    for key, value in again.items():
        assert value == pytest.approx(run.summary[key], rel=1e-9), key
    assert run.summary["completed"] == len(rows) == external_summary(run)["completed"]
    assert run.summary["total_output_tokens"] == rows["output_tokens"].sum()
    assert run.summary["request_throughput"] == pytest.approx(len(rows) / run.summary["duration"], rel=1e-12)
    # vLLM's duration times its dispatch loop; first send to last finish is a little shorter
    assert 0 < run.summary["duration"] - external_summary(run)["duration"] < 0.01


def test_vllm_before_start_times_closed_loop_send_times_are_reconstructed():
    run = load_external(VLLM_LEGACY)
    true_sends = json.loads((FIX / "vllm" / "benchmark_serving_legacy.sends.json").read_text())
    assert run.meta["send_times"] == "reconstructed" and run.meta["loop"] == "closed"
    assert run.meta["concurrency"] == 2 and math.isinf(run.meta["rate_per_s"])
    assert sorted(run.requests["arrival_s"]) == pytest.approx(sorted(true_sends), abs=1e-12)
    # e2e from ttft + sum(itls), as vLLM measured it: the file's means agree
    again = recomputed(run, [k for k in run.summary if k.endswith("_ms")])
    assert len(again) == 3 * 4
    for key, value in again.items():
        assert value == pytest.approx(run.summary[key], rel=1e-9), key
    w = external_workload(run)
    assert w.closed_loop is not None and w.closed_loop.users == 2 and not w.has_arrivals
    assert any("reconstructed" in s and "semaphore" in s for s in run.alignment)


def test_vllm_before_start_times_at_a_finite_rate_has_no_send_times(tmp_path):
    doc = raw(VLLM_LEGACY) | {"request_rate": 4.0, "max_concurrency": None}
    run = load_external(write(tmp_path / "r.json", doc))
    df = run.requests
    assert run.meta["send_times"] == "unknown"
    assert df["arrival_s"].isna().all() and df["first_token_s"].isna().all()
    assert df["ttft_s"].tolist() == pytest.approx(doc["ttfts"])  # the latencies survive
    assert recomputed(run, ["mean_tpot_ms"])["mean_tpot_ms"] == pytest.approx(run.summary["mean_tpot_ms"], rel=1e-9)
    assert external_summary(run)["duration"] == run.summary["duration"]  # no send times: the tool's duration
    w = external_workload(run)
    assert not w.has_arrivals and w.closed_loop is None and "with_arrivals" in " ".join(w.notes)
    doc["request_rate"] = "inf"  # all sent at once: every arrival is 0
    run = load_external(write(tmp_path / "r.json", doc))
    assert run.meta["send_times"] == "reconstructed" and (run.requests["arrival_s"] == 0).all()


def test_vllm_oldest_files_without_errors_tell_failures_by_no_token(tmp_path):
    doc = raw(VLLM)
    for key in ("errors", "start_times", "latencies", "queue_times"):
        del doc[key]
    doc["request_rate"] = "inf"
    run = load_external(write(tmp_path / "r.json", doc))
    assert (run.requests["rejected_reason"] != "").sum() == 1


# -- GuideLLM -------------------------------------------------------------------------------------------------


def test_guidellm_sweep_needs_a_benchmark_index():
    with pytest.raises(InputError, match=r"holds 2 benchmarks \(0: constant@2.0, 1: concurrent@2\)"):
        load_external(GUIDELLM)
    with pytest.raises(InputError, match="no benchmark 2"):
        load_external(GUIDELLM, benchmark=2)
    runs = load_external_all(GUIDELLM)
    assert [r.meta["strategy"] for r in runs] == ["constant", "concurrent"]
    assert [r.meta["loop"] for r in runs] == ["open", "closed"] and runs[1].meta["concurrency"] == 2
    assert external_workload(runs[1]).name == "guidellm:benchmarks_v07.json#1"


def test_guidellm_rows_follow_info_timings():
    run, doc = load_external(GUIDELLM, benchmark=0), raw(GUIDELLM)
    bench = doc["benchmarks"][0]
    reqs = bench["requests"]["successful"] + bench["requests"]["errored"] + bench["requests"]["incomplete"]
    by_id = {r["request_id"]: r for r in reqs}
    t0 = min(r["info"]["timings"]["request_start"] for r in reqs)
    for _, row in run.requests.iterrows():
        t = by_id[row["tool_request_id"]]["info"]["timings"]
        assert row["arrival_s"] == pytest.approx(t["request_start"] - t0, abs=1e-6)
        if row["rejected_reason"] == "":
            assert row["first_token_s"] == pytest.approx(t["first_token_iteration"] - t0, abs=1e-6)
            assert row["finish_s"] == pytest.approx(t["last_token_iteration"] - t0, abs=1e-6)  # not request_end
            assert row["output_tokens"] == by_id[row["tool_request_id"]]["output_tokens"]
    reasons = run.requests.set_index("tool_request_id")["rejected_reason"]
    assert reasons["req-0005"] == "HTTP 500: Internal Server Error"
    assert reasons["req-0006"] == "incomplete: Request was cancelled"
    assert not run.requests.set_index("tool_request_id")["measured"]["req-0000"]  # the warmup request
    assert run.meta["tool_version"] == "0.7.3" and run.meta["model"] == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("path,bench", [(GUIDELLM, 0), (GUIDELLM, 1), (GUIDELLM_03, 0)])
def test_guidellm_aggregates_against_the_rows(path, bench):
    run = load_external_all(path)[bench]
    rows, s = completed(run), run.summary
    raw_bench = raw(path)["benchmarks"][bench]
    assert s["completed"] == len(rows)  # the warmup request is out, as in GuideLLM's metrics
    ttft_ms = rows["ttft_s"].to_numpy() * 1000
    # TTFT: mean and (population) std are vLLM's; percentiles are GuideLLM's inverse-CDF order statistics
    assert s["mean_ttft_ms"] == pytest.approx(ttft_ms.mean(), rel=1e-9)
    assert s["std_ttft_ms"] == pytest.approx(ttft_ms.std(), rel=1e-9)
    for q in (50, 90, 99):
        assert s[f"p{q}_ttft_ms"] == pytest.approx(inverse_cdf(ttft_ms, q / 100), rel=1e-9)
    # ITL: GuideLLM's mean weights each request by output_tokens - 1 (vLLM's mean ITL at one token per chunk)
    decode = (rows["e2el_s"] - rows["ttft_s"]).sum()
    assert s["mean_itl_ms"] == pytest.approx(1000 * decode / (rows["output_tokens"] - 1).sum(), rel=1e-9)
    # TPOT, vLLM's definition, is GuideLLM's per-request inter_token_latency_ms
    tpot = ((rows["e2el_s"] - rows["ttft_s"]) / (rows["output_tokens"] - 1)).to_numpy() * 1000
    own = {r["request_id"]: r["inter_token_latency_ms"] for r in raw_bench["requests"]["successful"]}
    assert list(tpot) == pytest.approx([own[i] for i in rows["tool_request_id"]], rel=1e-9)
    assert not any(k.endswith("_tpot_ms") for k in s)  # GuideLLM's own TPOT includes the first token: not mapped
    # E2E: GuideLLM's request_latency runs to request_end, after the last token: a little longer than vLLM's
    tail_ms = s["mean_e2el_ms"] - rows["e2el_s"].mean() * 1000
    assert 0 <= tail_ms < 1.0
    if run.meta["measure_window_s"]:
        assert s["request_throughput"] == pytest.approx(len(rows) / run.meta["measure_window_s"], rel=1e-9)


def test_guidellm_yaml_report_reads_like_its_json(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw(GUIDELLM)))
    for a, b in zip(load_external_all(path), load_external_all(GUIDELLM), strict=True):
        assert a.requests.equals(b.requests) and a.summary == b.summary


def test_guidellm_03_synchronous_is_one_closed_loop_user():
    run = load_external(GUIDELLM_03)
    assert run.meta["schema"].startswith("guidellm <= 0.3") and run.meta["loop"] == "closed"
    assert run.meta["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    w = external_workload(run)
    assert w.closed_loop.users == 1 and len(w) == 3


# -- AIPerf ---------------------------------------------------------------------------------------------------


def test_aiperf_records_with_their_aggregate_agree():
    run = load_external(AIPERF)
    assert run.meta["aggregate_file"].endswith("profile_export_aiperf.json")
    df = run.requests
    assert df["measured"].tolist() == [False, True, True, True, True, True]  # the warmup record
    assert (df["rejected_reason"] != "").sum() == 1
    rows = completed(run)
    keys = [k for k in run.summary if k.endswith("_ms")]
    assert len(keys) == 4 * 7
    for key, value in recomputed(run, keys).items():  # AIPerf defines all four as vLLM does
        assert value == pytest.approx(run.summary[key], rel=1e-9), key
    assert run.summary["completed"] == len(rows) and run.summary["failed"] == 1
    assert run.summary["total_output_tokens"] == rows["output_tokens"].sum()
    assert load_external(AIPERF_AGG).requests.equals(df)  # either file finds its sibling


def test_aiperf_either_file_alone(tmp_path):
    only_records = shutil.copy(AIPERF, tmp_path / "profile_export.jsonl")
    run = load_external(only_records)
    assert run.summary == {} and len(run.requests) == 6 and run.meta["concurrency"] is None
    only_agg = shutil.copy(AIPERF_AGG, tmp_path / "other_aiperf.json")
    run = load_external(only_agg)
    assert run.requests.empty and run.summary["completed"] == 4 and run.meta["send_times"] == "unknown"
    check_contract(run)
    with pytest.raises(InputError, match="no completed request"):
        external_workload(run)


# -- workloads ------------------------------------------------------------------------------------------------


def test_workloads_replay_as_the_run_was_driven_and_simulate():
    run = load_external(VLLM)
    w = external_workload(run)
    rows = run.requests[run.requests["rejected_reason"] == ""]
    assert w.requests["arrival_s"].tolist() == rows["arrival_s"].tolist()
    assert w.requests["output_tokens"].tolist() == rows["output_tokens"].tolist()
    assert w.name == "vllm:bench_serve_detailed.json" and "1 failed" in " ".join(w.notes)
    result = simulate(Scenario(), w)
    assert len(result.requests) == len(rows) and result.requests["finish_s"].notna().all()
    # a simulated request and its measured row share the id: per-request comparison pairs the right ones
    sim, meas = result.requests.set_index("request_id"), run.requests.set_index("request_id")
    for col in ("input_tokens", "output_tokens", "arrival_s"):
        assert sim[col].tolist() == meas.loc[sim.index, col].tolist(), col
    aiperf = load_external(AIPERF)
    assert external_workload(aiperf).closed_loop.users == 2
    opened = external_workload(aiperf, closed_loop=False)
    assert opened.closed_loop is None and opened.has_arrivals
    assert len(simulate(Scenario(), external_workload(aiperf)).requests) == 5
    with pytest.raises(InputError, match="needs the run's concurrency"):
        external_workload(run, closed_loop=True)


# -- malformed inputs -----------------------------------------------------------------------------------------


def _bad_vllm(tmp_path, change) -> Path:
    doc = raw(VLLM)
    change(doc)
    return write(tmp_path / "bad.json", doc)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(ttfts=d["ttfts"][:-1]), "field 'ttfts': has 5 entries for 6 requests"),
    (lambda d: d["ttfts"].__setitem__(2, -0.1), "field 'ttfts[2]': Input should be greater than or equal to 0"),
    (lambda d: d["ttfts"].__setitem__(1, math.inf), "field 'ttfts[1]': Input should be a finite number"),
    (lambda d: d["output_lens"].__setitem__(0, "16"), "field 'output_lens[0]': must be a number"),
    (lambda d: d["itls"].__setitem__(0, 0.5), "field 'itls[0]': Input should be a valid list"),
    (lambda d: d.pop("ttfts"), "--save-detailed"),
    (lambda d: d.update(completed=9), "field 'completed': says 9 requests completed but 5"),
    (lambda d: d["latencies"].__setitem__(0, 0.001), "field 'latencies[0]': request 0 ends before its first token"),
    (lambda d: d.update(mean_ttft_ms="fast"), "field 'mean_ttft_ms'"),
    (lambda d: (d.pop("latencies"), d["itls"].__setitem__(0, [1e308, 1e308])), "finish time overflows"),
])
def test_malformed_vllm_names_the_field(tmp_path, change, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_external(_bad_vllm(tmp_path, change))
    assert str(err.value).startswith(str(tmp_path / "bad.json")) and "\n" not in str(err.value)


def test_malformed_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_external(tmp_path / "missing.json")
    (tmp_path / "t.json").write_text(VLLM.read_text()[:500])
    with pytest.raises(InputError, match="not valid JSON"):
        load_external(tmp_path / "t.json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(InputError, match="not UTF-8"):
        load_external(tmp_path / "b.json")
    doc = raw(GUIDELLM)
    t = doc["benchmarks"][0]["requests"]["successful"][2]["info"]["timings"]
    t["first_token_iteration"] = t["request_start"] - 1.0
    with pytest.raises(InputError, match=r"benchmarks\[0\]\.requests\.successful\[2\]'.*first token before"):
        load_external(write(tmp_path / "g.json", doc), benchmark=0)
    lines = AIPERF.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["metrics"]["request_latency"]["unit"] = "fortnights"
    (tmp_path / "a.jsonl").write_text("\n".join([lines[0], json.dumps(rec), "{oops"]))
    with pytest.raises(InputError, match=r"line 3 is not valid JSON"):
        load_external(tmp_path / "a.jsonl")
    (tmp_path / "a.jsonl").write_text("\n".join([lines[0], json.dumps(rec)]))
    with pytest.raises(InputError, match=r"line 2\.metrics\.request_latency\.unit'.*unknown time unit"):
        load_external(tmp_path / "a.jsonl")


# Fuzzing these loaders (mutated, truncated and noisy files): tests/test_fuzz_parsers.py.


def test_loading_needs_no_torch():
    code = ("import sys, servesim.validate.external as e; e.load_external_all(sys.argv[1]); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')]")
    proc = subprocess.run([sys.executable, "-c", code, str(VLLM)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
