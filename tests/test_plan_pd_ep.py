"""``servesim plan`` over prefill/decode units and expert-parallel degrees: candidates, ranking against
colocated serving, refusals, the ratio walk of ``--pd auto``, and EP rows equal to ``servesim simulate``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from servesim.cli.main import main
from servesim.errors import InputError
from servesim.hwmodels.models import MODELS
from servesim.plan import plan
from servesim.plan.candidates import RatioWalk, Space, ep_degrees, label, parse_pd

# DistServe's motivating setup (docs/disaggregation.md): a 13B model on A100s, 512-token prompts and 64
# output tokens, Poisson arrivals, continuous batching as vLLM had it in 2023 (a prefill pauses every decode).
DISTSERVE = {"arrival": "poisson", "batching": "continuous", "max_num_batched_tokens": 4096, "max_model_len": 4096,
             "repeat": True}


def fixed_trace(tmp_path, prompt: int, output: int, n: int = 50) -> str:
    trace = tmp_path / f"fixed-{prompt}-{output}.csv"
    trace.write_text("input_tokens,output_tokens\n" + f"{prompt},{output}\n" * n)
    return str(trace)


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_disaggregation_wins_under_a_strict_tpot_slo(tmp_path):
    # P90 TPOT 40 ms: on one colocated GPU every prefill pauses the decodes, so the TPOT limit binds at a few
    # req/s; two prefill GPUs feeding one decode GPU serve several times that on three GPUs.
    r = plan("Llama-2-13B", 20.0, "ttft_p90_ms=400,tpot_p90_ms=40", workload=fixed_trace(tmp_path, 512, 64),
             gpus=["A100-80GB-SXM"], quants=["bf16"], tps=[1], pd="2:1", kv_links=["nvlink"],
             base={**DISTSERVE, "num_requests": 300}, rel_tol=0.05, verify=1, jobs=1)
    cfg = r.configs.set_index("label")
    assert list(cfg.index) == ["A100-80GB-SXM bf16 2P1D tp1 nvlink", "A100-80GB-SXM bf16 tp1"]  # cheapest first
    unit, colo = cfg.iloc[0], cfg.iloc[1]
    assert (unit.status, colo.status) == ("ok", "ok")
    assert unit.pd == "2:1" and colo.pd == "" and unit.gpus_per_replica == 3 and colo.gpus_per_replica == 1
    assert (unit.prefill_tp, unit.decode_tp, unit.prefill_gpu, unit.kv_link) == (1, 1, "A100-80GB-SXM", "nvlink")
    per_gpu = unit.capacity_rps / 3 / colo.capacity_rps
    assert 1.5 < per_gpu < 3.0  # the paper: 2.1x; docs/disaggregation.md: 2.03x on 2,000 requests
    assert "p90_tpot_ms" in colo.limited_by
    assert unit.usd_per_hour < colo.usd_per_hour and unit.gpus_total < colo.gpus_total
    assert unit.verified and unit.replicas == math.ceil(20.0 / unit.capacity_rps)
    # each pool's figures at capacity, and the KV transfers'
    assert 0 < unit.prefill_busy_fraction_at_capacity <= 1 and 0 < unit.decode_busy_fraction_at_capacity <= 1
    assert unit.p99_kv_transfer_ms_at_capacity == pytest.approx(1.76, rel=0.05)  # 512 x 800 KiB over NVLink
    assert math.isnan(colo.decode_busy_fraction_at_capacity)


def test_a_pd_probe_equals_servesim_simulate_of_the_same_unit(capsys, tmp_path):
    trace = fixed_trace(tmp_path, 512, 64)
    r = plan("Llama-2-13B", 20.0, "ttft_p90_ms=400,tpot_p90_ms=40", workload=trace, gpus=["A100-80GB-SXM"],
             quants=["bf16"], tps=[1], pd="2:1", kv_links=["nvlink"], base={**DISTSERVE, "num_requests": 300},
             rel_tol=0.25, verify=0, jobs=1)
    at = r.probes[r.probes.label.str.contains("2P1D")].iloc[-1]
    code, stdout, err = run(capsys, "simulate", "--model", "Llama-2-13B", "--gpu", "A100-80GB-SXM", "--pd", "2:1",
                            "--kv-link", "nvlink", "--trace", trace, "--arrival", "poisson", "--rate",
                            repr(float(at.rate)), "--repeat", "--batching", "continuous", "--max-num-batched-tokens",
                            "4096", "--max-model-len", "4096", "--num-requests", "300", "--json")
    assert code in (0, None), err
    sim = json.loads(stdout)
    assert sim["meta"]["config_hash"] == at.config_hash
    for key in ("p90_ttft_ms", "p90_tpot_ms", "output_throughput"):
        assert sim[key] == pytest.approx(at[key], rel=1e-12), key
    assert sim["pd"]["prefill"]["busy_fraction"] == pytest.approx(at.prefill_busy_fraction, rel=1e-12)
    assert sim["pd"]["kv_transfer"]["p99_kv_transfer_ms"] == pytest.approx(at.p99_kv_transfer_ms, rel=1e-12)
    assert sim["meta"]["usd_per_hour_per_gpu"] * sim["meta"]["gpus_total"] == pytest.approx(at.usd_per_hour)


def test_colocated_wins_where_one_gpu_serves_the_rate(tmp_path):
    # The same setup at 3 req/s: a P/D unit still serves more per GPU, but the smallest unit has two GPUs
    # and one colocated GPU already holds the SLOs, so colocated is the cheapest.
    r = plan("Llama-2-13B", 3.0, "ttft_p90_ms=400,tpot_p90_ms=40", workload=fixed_trace(tmp_path, 512, 64),
             gpus=["A100-80GB-SXM"], quants=["bf16"], tps=[1], pd="1:1,2:1", kv_links=["nvlink"],
             base={**DISTSERVE, "num_requests": 300}, rel_tol=0.05, verify=1, jobs=1)
    ok = r.cheapest().set_index("pd")
    assert list(ok.index) == ["", "1:1", "2:1"]  # cheapest first: 1, 2 and 3 GPUs, one replica each
    assert list(ok.gpus_total) == [1, 2, 3] and (ok.replicas == 1).all()
    assert ok.loc["", "verified"] and ok.loc["", "usd_per_hour"] == pytest.approx(1.8)
    per_gpu = ok.capacity_rps / ok.gpus_per_replica
    assert per_gpu["2:1"] > per_gpu["1:1"] > per_gpu[""]


def test_ratio_walk_climbs_to_the_balance_and_tries_the_mediant():
    # Capacity min(10 x, 25 y) per unit of x + y one-GPU replicas: 1:1 5.0, 2:1 6.67, 1:2 3.33, 3:1 6.25, and
    # the mediant of 2:1 and 3:1, 5:2, is balanced (50 = 50) at 7.14 per GPU.
    walk, value = RatioWalk(max_gpus=8), {}
    template = {"gpu": "H100-SXM", "quant": "bf16", "tp": 1, "kv_link": "ib"}
    first = walk.add(template)
    assert first == (1, 1) and walk.groups[0].ladder[0] == (1, 7) and walk.groups[0].ladder[-1] == (7, 1)
    walk.start(0, first, 0)
    ratios, order = {0: first}, []
    while True:
        for i, (x, y) in ratios.items():
            value[i] = min(10 * x, 25 * y) / (x + y)
        step = walk.next(value.get)
        if not step:
            break
        order.append(sorted((p["prefill_replicas"], p["decode_replicas"]) for _, p in step))
        for _, p in step:
            i = len(ratios)
            ratios[i] = (p["prefill_replicas"], p["decode_replicas"])
            walk.start(0, ratios[i], i)
    assert order == [[(1, 2), (2, 1)], [(3, 1)], [(5, 2)]]
    # a unit that does not fit, or a pool configuration that serves at no ratio, goes no further
    assert RatioWalk(max_gpus=4).add({**template, "tp": 4}) is None
    walk = RatioWalk(max_gpus=8)
    walk.start(0, walk.add(template), 0)
    assert walk.next(lambda i: -math.inf) == [] and walk.next(lambda i: None) == []


def test_auto_finds_the_distserve_ratio_and_beats_colocated(tmp_path):
    r = plan("Llama-2-13B", 20.0, "ttft_p90_ms=400,tpot_p90_ms=40", workload=fixed_trace(tmp_path, 512, 64),
             gpus=["A100-80GB-SXM"], quants=["bf16"], tps=[1], pd="auto", pd_max_gpus=4, kv_links=["nvlink"],
             base={**DISTSERVE, "num_requests": 300}, rel_tol=0.05, verify=0, jobs=1)
    cfg = r.configs
    tried = set(cfg.pd)
    assert {"", "1:1", "2:1", "1:2", "3:1"} <= tried and "1:3" not in tried  # 1:2 lost to 1:1: not walked past
    best = cfg.iloc[0]
    assert best.pd in ("2:1", "3:1") and best.usd_per_hour < cfg.set_index("pd").loc["", "usd_per_hour"]


def test_pd_labels_and_points_pair_or_cross_the_pools():
    s = Space("Llama-3.1-70B", ["H100-SXM", "H200"], ["bf16"], [4, 8], pd="1:2")
    pts = s.points([{}])
    assert len(pts) == 4 + 4  # colocated gpu x tp, then units with both pools alike
    assert [label(p) for p in pts[4:]] == ["H100-SXM bf16 1P2D tp4 ib", "H100-SXM bf16 1P2D tp8 ib",
                                           "H200 bf16 1P2D tp4 ib", "H200 bf16 1P2D tp8 ib"]
    s = Space("Llama-3.1-70B", ["H200"], ["w4a16"], [4], pd="2:1", prefill_gpus=["H100-SXM"], prefill_tps=[2],
              kv_links=["ib", "roce"])
    units = s.points([{}])[1:]
    assert [label(p) for p in units] == ["H100-SXM/H200 w4a16 2P1D tp2/tp4 ib", "H100-SXM/H200 w4a16 2P1D tp2/tp4 roce"]
    assert units[0] == {"gpu": "H200", "quant": "w4a16", "tp": 4, "prefill_replicas": 2, "decode_replicas": 1,
                        "kv_link": "ib", "prefill_gpu": "H100-SXM", "prefill_tp": 2}
    with pytest.raises(InputError) as exc:
        Space("Llama-3.1-8B", ["H200"], ["bf16"], [1], prefill_tps=[2])
    assert exc.value.field == "prefill_tps" and "give pd too" in exc.value.problem
    for bad in ("2-1", "0:1", "auto,1:1"):
        with pytest.raises(InputError) as exc:
            parse_pd(bad)
        assert exc.value.field == "pd"
    assert parse_pd("2:1, 1:3,2:1") == [(2, 1), (1, 3)] and parse_pd(None) == "off"


def test_pd_units_of_an_moe_model_pair_each_pools_ep_with_its_tp():
    s = Space("Mixtral-8x7B", ["H100-SXM"], ["bf16"], [2], eps="auto", pd="1:1", prefill_tps=[4])
    units = [label(p) for p in s.points([{}]) if p.get("prefill_replicas")]
    # prefill tp4 takes ep 1, 2 and 4, decode tp2 ep 1 and 2
    assert units == [f"H100-SXM bf16 1P1D tp4/tp2 {ep}ib" for ep in
                     ("", "ep1/ep2 ", "ep2/ep1 ", "ep2 ", "ep4/ep1 ", "ep4/ep2 ")]


def test_ep_degrees_reuse_the_parallelism_check():
    mixtral, qwen = MODELS["Mixtral-8x7B"], MODELS["Qwen3-30B-A3B"]
    assert ep_degrees(mixtral, [1, 2, 4, 8], "auto") == {1: [1], 2: [1, 2], 4: [1, 2, 4], 8: [1, 2, 4, 8]}
    assert ep_degrees(mixtral, [2, 4], [1, 4]) == {2: [1], 4: [1, 4]}  # ep divides tp
    assert ep_degrees(MODELS["Llama-3.1-8B"], [1, 2], "auto") == {1: [1], 2: [1]}
    for model, tps, eps, words in (
        (mixtral, [2, 4], [3], "ep=3 does not divide the 8 experts of Mixtral-8x7B"),
        (MODELS["Llama-3.1-8B"], [2], [2], "has no experts to spread"),
        (qwen, [1, 2], [4], "ep=4 divides none of the TP degrees 1, 2"),
        (mixtral, [2], [0], "positive integer"),
    ):
        with pytest.raises(InputError) as exc:
            ep_degrees(model, tps, eps)
        assert exc.value.field == "ep" and words in exc.value.problem, exc.value.problem


def test_invalid_ep_is_one_line_exit_2(capsys, tmp_path):
    for argv, words in ((["--model", "Mixtral-8x7B", "--ep", "3"], "field 'ep': ep=3 does not divide the 8 experts"),
                        (["--model", "Llama-3.1-8B", "--ep", "2"], "field 'ep': ep=2: Llama-3.1-8B has no experts"),
                        (["--model", "Mixtral-8x7B", "--ep", "two"], "field 'ep'"),
                        (["--model", "Llama-3.1-8B", "--pd", "2-1"], "field 'pd'"),
                        (["--model", "Llama-3.1-8B", "--decode-tp", "2"], "field 'decode_tps'")):
        code, out, err = run(capsys, "plan", *argv, "--rate", "5", "--slo", "ttft_p99_ms=500", "-o", tmp_path / "p")
        assert code == 2 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "p").exists()


def test_ep_candidates_equal_servesim_simulate_of_the_same_config(capsys, tmp_path):
    out = tmp_path / "plan"
    code, stdout, err = run(capsys, "plan", "--model", "Qwen3-30B-A3B", "--rate", "8", "--slo",
                            "ttft_p99_ms=1500,tpot_p99_ms=60", "--gpus", "H100-SXM", "--quant", "bf16", "--tp", "2",
                            "--ep", "auto", "--num-requests", "60", "--rel-tol", "0.1", "--verify", "0", "-j", "1",
                            "-o", out)
    assert code == 0, err
    assert "H100-SXM bf16 tp2 ep2" in stdout
    configs = pd.read_parquet(out / "configs.parquet").set_index("label")
    assert sorted(configs.ep) == [1, 2] and (configs.status == "ok").all()
    row = configs.loc["H100-SXM bf16 tp2 ep2"]
    probes = pd.read_parquet(out / "probes.parquet")
    at = probes[(probes.label == "H100-SXM bf16 tp2 ep2") & (probes.rate == row.capacity_rps)].iloc[0]
    code, stdout, err = run(capsys, "simulate", "--model", "Qwen3-30B-A3B", "--gpu", "H100-SXM", "--tp", "2", "--ep",
                            "2", "--rate", repr(float(at.rate)), "--num-requests", "60", "--json")
    assert code in (0, None), err
    sim = json.loads(stdout)
    assert sim["meta"]["config_hash"] == at.config_hash
    for key in ("p99_ttft_ms", "p99_tpot_ms", "output_throughput", "completed"):
        assert sim[key] == pytest.approx(at[key], rel=1e-12), key
    assert sim["meta"]["usd_per_hour_per_gpu"] * sim["meta"]["gpus_total"] == pytest.approx(at.usd_per_hour)
    assert row.usd_per_hour == pytest.approx(row.replicas * 2 * sim["meta"]["usd_per_hour_per_gpu"])
    assert row.p99_ttft_ms_at_capacity == pytest.approx(sim["p99_ttft_ms"], rel=1e-12)


def test_pd_plans_need_a_limit_that_sees_the_decode_pool_and_warn_of_burst_windows():
    from servesim.plan.capacity import _burst_warning
    from servesim.sim.config import Scenario

    with pytest.raises(InputError) as exc:
        plan("Llama-3.1-8B", 5.0, "ttft_p99_ms=500", gpus=["H100-SXM"], quants=["bf16"], tps=[1], pd="1:1")
    assert exc.value.field == "slo" and "add a tpot, itl or e2el limit" in exc.value.problem
    unit = {"prefill_replicas": 2, "decode_replicas": 2, "max_num_seqs": 64}
    assert _burst_warning(Scenario(**unit, num_requests=256)) == ""  # twice the decode pool's 2 x 64 seats
    assert "255 requests per probe against 128 decode seats per unit" in _burst_warning(
        Scenario(**unit, num_requests=255))
    assert _burst_warning(Scenario(num_requests=10)) == ""  # colocated: TTFT sees the queue
