"""Prefill/decode disaggregation: closed forms under a constant cost model, KV bytes, agreement with colocated
serving, memory held from a transfer's start, exact fast-forward, and the scenario and CLI edges."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from servesim.cli.main import main
from servesim.errors import ConfigError
from servesim.hwmodels.models import MODELS
from servesim.sim import workload as wl
from servesim.sim.config import Scenario, make_scenario
from servesim.sim.disagg import PDSimulation, build_pd
from servesim.sim.simulator import simulate


class ConstantCost:
    """Every step with a prefill chunk takes ``prefill_s``, every pure-decode step ``decode_s``."""

    profile_id = "constant"

    def __init__(self, prefill_s: float, decode_s: float) -> None:
        self.prefill_s, self.decode_s = prefill_s, decode_s

    def step_time_s(self, shape) -> float:
        return self.prefill_s if shape.prefill_tokens else self.decode_s

    def decode_run_s(self, shape, n: int) -> np.ndarray:
        return np.full(n, self.decode_s)

    def pp_transfer_s(self, tokens: int) -> float:
        return 0.0


def requests_at(times, prompt, output) -> wl.Workload:
    n = len(times)
    df = pd.DataFrame({"arrival_s": np.asarray(times, float), "input_tokens": np.full(n, prompt),
                       "output_tokens": np.full(n, output)})
    return wl.Workload("hand", df, source="test")


def run_constant(scenario: Scenario, w: wl.Workload, prefill_s=0.1, decode_s=0.02, fast_forward=True):
    pd_ = build_pd(scenario)
    pd_ = replace(pd_, prefill=replace(pd_.prefill, cost=ConstantCost(prefill_s, decode_s)),
                  decode=replace(pd_.decode, cost=ConstantCost(prefill_s, decode_s)))
    sim = PDSimulation(pd_, w, seed=0, fast_forward=fast_forward)
    sim.run()
    return pd_, sim, sim.request_table().set_index("request_id")


@pytest.mark.parametrize("fast_forward", [True, False])
def test_ttft_and_tpot_by_hand_under_a_constant_cost(fast_forward):
    # 1P1D, Llama-3.1-8B over InfiniBand. Two requests of 1000 prompt tokens arrive together: one prefill
    # step of 0.1 s computes both; their KV (131,072 B/token x 1000) leaves one after the other on the
    # prefill replica's lane; each then decodes 4 more tokens in steps of 0.02 s on the decode replica.
    s = Scenario(prefill_replicas=1, decode_replicas=1)
    w = requests_at([0.0, 0.0], 1000, 5)
    pd_, sim, r = run_constant(s, w, fast_forward=fast_forward)
    transfer = 30e-6 + 131_072 * 1000 / (50e9 * 0.8)  # latency + bytes / (400 Gb/s x efficiency 0.8)
    assert pd_.kv_transfer(1000) == (131_072_000, pytest.approx(transfer, rel=1e-12))
    assert (r.first_token_s - r.arrival_s).tolist() == pytest.approx([0.1, 0.1])  # TTFT: the prefill alone
    ready0, ready1 = 0.1 + transfer, 0.1 + 2 * transfer  # the second waits for the lane
    assert r.kv_ready_s.tolist() == pytest.approx([ready0, ready1])
    # request 0 decodes from ready0; request 1 arrives during its first step and joins the second
    assert r.finish_s[0] == pytest.approx(ready0 + 4 * 0.02)
    assert r.finish_s[1] == pytest.approx(ready0 + 0.02 + 4 * 0.02)
    tpot = (r.finish_s - r.first_token_s) / 4
    assert tpot.tolist() == pytest.approx([(transfer + 0.08) / 4, (transfer + 0.10) / 4])
    assert r.kv_transfer_s.tolist() == pytest.approx([transfer, transfer])
    assert (r.replica.tolist(), r.prefill_replica.tolist()) == ([1, 1], [0, 0])


def test_kv_transfer_bytes_are_kv_bytes_per_token_times_prompt():
    for model, kv_dtype in (("Llama-3.1-8B", "bf16"), ("Llama-3.1-8B", "fp8"), ("DeepSeek-V2-Lite", "bf16")):
        s = Scenario(model=model, kv_dtype=kv_dtype, prefill_replicas=1, decode_replicas=2, trace="sharegpt",
                     num_requests=40, arrival="poisson", rate=20.0)
        req = simulate(s).requests
        per_token = MODELS[model].kv_bytes_per_token(kv_dtype)
        np.testing.assert_array_equal(req.kv_transfer_bytes, per_token * req.input_tokens)
    assert MODELS["DeepSeek-V2-Lite"].kv_bytes_per_token() == 27 * 576 * 2  # MLA sends its latent only


def test_transfer_time_shares_the_bytes_over_the_gpus():
    base = dict(prefill_replicas=1, decode_replicas=1, model="Llama-3.1-70B", kv_link="nvlink")
    one = build_pd(Scenario(**base, tp=4))
    per_gpu = 327_680 // 4 * 100  # each of 4 decode GPUs receives 2 of the 8 KV heads
    assert one.kv_transfer(100)[1] == pytest.approx(10e-6 + per_gpu / (450e9 * 0.8))
    wide = build_pd(Scenario(**base, prefill_tp=2, decode_tp=8, gpu="H200"))
    # decode GPUs hold one KV head each (8 x 8 heads' share); the 2 prefill GPUs send all 8 shares
    assert wide.kv_transfer(100)[1] == pytest.approx(10e-6 + 327_680 * 100 / 2 / (450e9 * 0.8))


def test_colocated_and_1p1d_agree_when_the_transfer_is_free():
    # Requests far apart: each runs alone, so nothing interferes in either deployment; a free link makes
    # the decode replica start exactly where the colocated replica would.
    w = wl.synthesize(30, wl.Constant(0.1), wl.Lengths(wl.Fixed(900), wl.Fixed(120)), np.random.default_rng(0))
    colo = simulate(Scenario(), w)
    pd_ = simulate(Scenario(prefill_replicas=1, decode_replicas=1, kv_link_gbps=float("inf"),
                            kv_link_latency_us=0), w)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "generated_tokens", "ideal_e2el_s"):
        np.testing.assert_array_equal(colo.requests[col], pd_.requests[col], err_msg=col)
    np.testing.assert_array_equal(np.sort(colo.itl_s), np.sort(pd_.itl_s))
    for key in ("mean_ttft_ms", "p99_tpot_ms", "mean_itl_ms", "request_throughput"):
        assert colo.summary[key] == pd_.summary[key], key


def test_disaggregation_removes_prefill_interference_from_tpot():
    # vLLM v0 batching (a prefill step pauses every decode), two GPUs either way, prompts of 3000 tokens
    w = wl.synthesize(300, wl.Poisson(6.0), wl.Lengths(wl.Fixed(3000), wl.Fixed(200)), np.random.default_rng(1))
    v0 = dict(batching="continuous", max_num_batched_tokens=8192, max_model_len=8192)
    colo = simulate(Scenario(replicas=2, router="least_outstanding", **v0), w).summary
    split = simulate(Scenario(prefill_replicas=1, decode_replicas=1, **v0), w).summary
    # decodes no longer wait behind prefills: a 65 ms prefill step was the longest gap between two tokens
    assert split["p99_itl_ms"] < 0.5 * colo["p99_itl_ms"] and split["p99_tpot_ms"] < 0.85 * colo["p99_tpot_ms"]
    assert split["completed"] == colo["completed"] == 300


@pytest.mark.parametrize("extra", [
    {},
    {"kv_overlap": True, "kv_link": "roce", "decode_tp": 2},
    {"prefill_replicas": 2, "decode_replicas": 3, "decode_router": "least_kv", "prefill_router": "power_of_two"},
    {"num_gpu_blocks": 600, "kv_link_gbps": 2.0},  # the decode pool's memory runs short: transfers wait
    {"batching": "continuous", "max_num_batched_tokens": 8192, "max_model_len": 8192},
])
def test_fast_forward_is_exact_under_pd(extra):
    w = wl.synthesize(250, wl.Gamma(5.0, cv=2.0), wl.Lengths(wl.Fixed(900), wl.Fixed(250)),
                      np.random.default_rng(3))
    s = Scenario(**{"prefill_replicas": 1, "decode_replicas": 2, **extra})
    a, b = simulate(s, w), simulate(s.model_copy(update={"fast_forward": False}), w)
    for col in ("first_token_s", "finish_s", "kv_ready_s", "num_preemptions", "replica"):
        np.testing.assert_array_equal(a.requests[col], b.requests[col], err_msg=col)
    assert len(a.timeline) < len(b.timeline) and a.timeline.steps.sum() == len(b.timeline)
    assert a.summary["completed"] == 250


def test_decode_memory_is_held_from_the_transfer_start():
    # A slow link (1 GB/s). Request 0 (100 prompt tokens) decodes from 0.023 s; request 1's prompt of 1000
    # tokens is prefilled by 0.06 s and crosses until 0.191 s. From 0.06 s the decode replica steps request 0
    # alone with request 1's 63 blocks (1000 / 16) taken; before, without them.
    s = Scenario(prefill_replicas=1, decode_replicas=1, kv_link_gbps=1.0, kv_link_efficiency=1.0,
                 kv_link_latency_us=0)
    w = requests_at([0.0, 0.05], 1000, 400)
    t = w.table.copy()
    t["input_tokens"][0], t["output_tokens"][0] = 100, 2000
    w = replace(w, table=t)
    both = run_constant(s, w, prefill_s=0.01, decode_s=0.001, fast_forward=False)
    alone = run_constant(s, requests_at([0.0], 100, 2000), prefill_s=0.01, decode_s=0.001, fast_forward=False)
    r = both[2]
    start1 = r.kv_ready_s[1] - r.kv_transfer_s[1]
    assert r.kv_ready_s[0] == pytest.approx(0.01 + 100 * 131_072 / 1e9)
    assert start1 == pytest.approx(0.06) and r.kv_transfer_s[1] == pytest.approx(0.131072)

    def decode_rows(sim):
        t = sim.timeline.frame()
        return t[t.replica == 1].set_index("start_s")

    with_1, without = decode_rows(both[1]), decode_rows(alone[1])
    window = with_1.index[(with_1.index < r.kv_ready_s[1])]
    end = with_1.loc[window, "end_s"].to_numpy()  # a row's KV count is taken at its end
    extra = (with_1.loc[window, "kv_blocks_used"] - without.loc[window, "kv_blocks_used"]).to_numpy()
    assert (end < start1).sum() > 30 and (end > start1).sum() > 100
    assert set(extra[end > start1]) == {63}  # taken from the transfer's start ...
    assert set(extra[end < start1]) == {0}  # ... not before
    assert r.finish_s[1] > r.kv_ready_s[1]


def test_requests_that_cannot_fit_are_refused_by_the_pool_that_cannot_hold_them():
    w = requests_at([0.0, 0.0, 0.0], 1000, 20)
    t = w.table.copy()
    t["input_tokens"][1] = 40_000  # longer than max_model_len
    w = replace(w, table=t)
    s = Scenario(prefill_replicas=1, decode_replicas=1, max_model_len=8192, decode_max_num_seqs=4)
    res = simulate(s, w)
    req = res.requests.set_index("request_id")
    assert req.rejected_reason[1].startswith("prompt+output") and req.rejected_reason[0] == ""
    assert res.summary["completed"] == 2 and res.summary["rejected"] == 1


def test_pools_have_their_own_gpus_and_price():
    s = Scenario(prefill_replicas=2, decode_replicas=1, prefill_gpu="H100-SXM", prefill_tp=2,
                 decode_gpu="A100-80GB-SXM", num_requests=50, rate=5.0)
    res = simulate(s)
    pools = res.summary["pd"]
    assert (pools["prefill"]["gpus"], pools["decode"]["gpus"], res.meta["gpus_total"]) == (4, 1, 5)
    assert res.meta["usd_per_hour_per_gpu"] == pytest.approx((4 * 3.00 + 1 * 1.80) / 5)
    assert pools["decode"]["gpu"] == "A100-80GB-SXM" and pools["prefill"]["busy_fraction"] < 1


def test_pd_fields_are_checked_and_named():
    with pytest.raises(ConfigError, match="field 'prefill_tp': a P/D field"):
        make_scenario({"prefill_tp": 2})
    with pytest.raises(ConfigError, match="field 'decode_replicas': P/D needs both"):
        make_scenario({"prefill_replicas": 2})
    units = build_pd(Scenario(prefill_replicas=1, decode_replicas=2, replicas=3))  # three 1P2D units
    assert (units.prefill.replicas, units.decode.replicas) == (3, 6)
    with pytest.raises(ConfigError, match="field 'kv_link': unknown KV link 'infiniband'"):
        make_scenario({"prefill_replicas": 1, "decode_replicas": 1, "kv_link": "infiniband"})
    with pytest.raises(ConfigError, match="field 'decode_router': unknown router"):
        make_scenario({"prefill_replicas": 1, "decode_replicas": 1, "decode_router": "random"})
    assert make_scenario({"prefill_replicas": 1, "decode_replicas": 1, "prefill_gpu": "h100"}).prefill_gpu == "H100-SXM"
    with pytest.raises(ConfigError, match=r"field 'prefill_tp': prefill pool: tp=3"):
        build_pd(Scenario(prefill_replicas=1, decode_replicas=1, prefill_tp=3))
    with pytest.raises(ConfigError, match=r"field 'decode_gpu': unknown GPU"):
        make_scenario({"prefill_replicas": 1, "decode_replicas": 1, "decode_gpu": "Z100"})
    with pytest.raises(ConfigError, match=r"field 'decode_ep': decode pool: ep=3"):
        build_pd(Scenario(model="Qwen3-30B-A3B", prefill_replicas=1, decode_replicas=1, tp=4, decode_ep=3))


def test_cli_pd_flag_writes_transfer_columns(capsys, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--pd", "2:3", "--num-requests", "60", "--rate", "6", "--decode-tp", "2",
              "--output-dir", str(out)])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "prefill/decode pools" in text and "KV transfers over ib" in text
    req = pd.read_parquet(out / "requests.parquet")
    assert {"prefill_replica", "kv_transfer_bytes", "kv_transfer_s", "kv_ready_s"} <= set(req.columns)
    assert (req.prefill_replica < 2).all() and (req.replica >= 2).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["scenario"]["prefill_replicas"] == 2 and summary["pd"]["decode"]["gpus"] == 6
    for argv, needle in ((["--pd", "2-6"], "field 'pd'"), (["--pd", "2:6", "--prefill-replicas", "3"], "disagrees")):
        with pytest.raises(SystemExit) as exc:
            main(["simulate", *argv, "--num-requests", "5"])
        assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_plan_counts_one_pd_unit_as_a_replica():
    from servesim.plan import plan

    r = plan("Llama-3.1-8B", 20.0, "ttft_p99_ms=1000,tpot_p99_ms=40", workload="sharegpt", gpus=["H100-SXM"],
             quants=["bf16"], tps=[1], base={"prefill_replicas": 1, "decode_replicas": 2, "num_requests": 150,
                                             "arrival": "poisson"}, verify=1, jobs=1)
    row = r.configs.iloc[0]
    assert row.status == "ok" and row.gpus_per_replica == 3  # 1 prefill + 2 decode GPUs per unit
    assert row.gpus_total == 3 * row.replicas and row.usd_per_hour == pytest.approx(3.0 * row.gpus_total)
