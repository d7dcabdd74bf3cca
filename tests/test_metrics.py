"""Summary metrics: hand-built closed forms, vLLM's definitions, weighted ITL, SLO, timeline, slowdown."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servesim.errors import ConfigError, InputError
from servesim.sim.metrics import (
    SLO,
    latency_stats,
    saturation,
    slowdown_by_size,
    summarize,
    summarize_timeline,
    weighted_percentile,
)

NAN = float("nan")


def make_requests(rows: list[dict]) -> pd.DataFrame:
    """A requests table with the simulator's columns; unspecified fields take served defaults."""
    base = {
        "replica": 0, "input_tokens": 100, "output_tokens": 10, "generated_tokens": 10, "cached_tokens": 0,
        "num_preemptions": 0, "rejected_reason": "", "ideal_e2el_s": 1.0,
    }
    df = pd.DataFrame([{"request_id": i, **base, **r} for i, r in enumerate(rows)])
    return df.astype({"rejected_reason": "string", "request_id": "int64"})


def three_plus_rejected() -> pd.DataFrame:
    """ttft 100/300/200 ms, e2el 500/800/200 ms, tpot 100/50/- ms; one rejected request."""
    return make_requests([
        dict(arrival_s=0.0, first_scheduled_s=0.0, first_token_s=0.1, finish_s=0.5, generated_tokens=5,
             input_tokens=100, cached_tokens=50),
        dict(arrival_s=1.0, first_scheduled_s=1.2, first_token_s=1.3, finish_s=1.8, generated_tokens=11,
             input_tokens=200, num_preemptions=2),
        dict(arrival_s=2.0, first_scheduled_s=2.0, first_token_s=2.2, finish_s=2.2, generated_tokens=1,
             input_tokens=300, cached_tokens=100),
        dict(arrival_s=2.1, first_scheduled_s=NAN, first_token_s=NAN, finish_s=NAN, generated_tokens=0,
             input_tokens=1000, replica=-1, rejected_reason="prompt_too_long"),
    ])


def test_closed_form_latencies_and_throughputs():
    s = summarize(three_plus_rejected(), np.array([]), None, duration_s=2.0)
    assert s["completed"] == 3 and s["rejected"] == 1 and s["duration"] == 2.0
    approx = lambda x: pytest.approx(x, rel=1e-9, abs=1e-9)  # noqa: E731
    assert s["mean_ttft_ms"] == approx(200) and s["median_ttft_ms"] == approx(200)
    assert s["p90_ttft_ms"] == approx(280) and s["p99_ttft_ms"] == approx(298)
    assert s["std_ttft_ms"] == approx(math.sqrt(20000 / 3))
    assert s["mean_e2el_ms"] == approx(500) and s["p90_e2el_ms"] == approx(740)
    # TPOT only over requests with more than one token: (400/4, 500/10)
    assert s["mean_tpot_ms"] == approx(75) and s["std_tpot_ms"] == approx(25)
    assert s["p90_tpot_ms"] == approx(95)
    assert s["request_throughput"] == approx(1.5)
    assert s["output_throughput"] == approx(17 / 2)
    assert s["total_token_throughput"] == approx((600 + 17) / 2)
    assert s["mean_queueing_delay_ms"] == approx(200 / 3) and s["p99_queueing_delay_ms"] == approx(196)
    assert s["total_preemptions"] == 2 and s["preempted_requests"] == 1
    assert s["prefix_cache_hit_rate"] == approx(150 / 600)
    # an empty sample has no statistics: NaN (null in summary.json, "—" in tables), never 0 ms
    assert all(math.isnan(s[f"{k}_itl_ms"]) for k in ("mean", "std", "median", "p50", "p90", "p95", "p99"))
    assert "request_goodput" not in s


def test_vllm_keys_present():
    s = summarize(three_plus_rejected(), np.array([0.01]), np.array([1]), duration_s=2.0)
    for stat in ("mean", "median", "std", "p50", "p90", "p95", "p99"):
        for metric in ("ttft", "tpot", "itl", "e2el"):
            assert isinstance(s[f"{stat}_{metric}_ms"], float)
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "completed", "rejected"):
        assert key in s


def test_slo_joint_goodput_counts_rejected_as_failures():
    slo = SLO(ttft_ms=250, tpot_ms=80)
    s = summarize(three_plus_rejected(), np.array([]), None, 2.0, slo)
    # r0 fails TPOT, r1 fails TTFT, r2 passes (one token: no TPOT), r3 rejected
    assert s["request_goodput"] == pytest.approx(0.5) and s["slo_attainment"] == pytest.approx(0.25)
    assert s["slo"] == {"ttft_ms": 250, "tpot_ms": 80, "e2el_ms": None, "mode": "joint"}
    assert "slo_attainment_ttft" not in s


def test_slo_per_metric_reports_each_limit():
    slo = SLO(ttft_ms=250, tpot_ms=80, mode="per-metric")
    s = summarize(three_plus_rejected(), np.array([]), None, 2.0, slo)
    assert s["slo_attainment"] == pytest.approx(0.25)
    assert s["slo_attainment_ttft"] == pytest.approx(0.5) and s["request_goodput_ttft"] == pytest.approx(1.0)
    assert s["slo_attainment_tpot"] == pytest.approx(0.5)
    assert "slo_attainment_e2el" not in s and s["slo"]["mode"] == "per-metric"
    s = summarize(three_plus_rejected(), np.array([]), None, 2.0, SLO(e2el_ms=600))
    assert s["slo_attainment"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({}, "slo"), ({"ttft_ms": -1}, "slo.ttft_ms"), ({"tpot_ms": math.inf}, "slo.tpot_ms"),
     ({"e2el_ms": "1"}, "slo.e2el_ms"), ({"ttft_ms": 1, "mode": "any"}, "slo.mode")],
)
def test_slo_validation_names_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SLO(**kwargs)
    assert err.value.field == field


def test_cost():
    s = summarize(three_plus_rejected(), np.array([]), None, 2.0, gpus_total=2, usd_per_hour_per_gpu=3.0)
    assert s["cost_usd"] == pytest.approx(2 * 3.0 * 2.0 / 3600)
    assert s["usd_per_million_output_tokens"] == pytest.approx(2 * 3.0 * 2.0 / 3600 / 17 * 1e6)


def vllm_reference(requests: pd.DataFrame, itls: list[float], dur_s: float) -> dict[str, float]:
    """vLLM benchmark_serving.calculate_metrics, restated over plain lists."""
    ttfts, tpots, e2els, out_lens, in_total = [], [], [], [], 0
    for r in requests.itertuples():
        if r.rejected_reason:
            continue
        out_lens.append(r.generated_tokens)
        in_total += r.input_tokens
        if r.generated_tokens > 1:
            tpots.append((r.finish_s - r.first_token_s) / (r.generated_tokens - 1))
        ttfts.append(r.first_token_s - r.arrival_s)
        e2els.append(r.finish_s - r.arrival_s)
    ref = {"request_throughput": len(ttfts) / dur_s, "output_throughput": sum(out_lens) / dur_s,
           "total_token_throughput": (in_total + sum(out_lens)) / dur_s}
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        ref[f"mean_{name}_ms"] = np.mean(xs or 0) * 1000
        ref[f"std_{name}_ms"] = np.std(xs or 0) * 1000
        ref[f"median_{name}_ms"] = np.median(xs or 0) * 1000
        for p in (50, 90, 95, 99):
            ref[f"p{p}_{name}_ms"] = np.percentile(xs or 0, p) * 1000
    return ref


def test_matches_vllm_definitions_on_random_requests():
    rng = np.random.default_rng(2)
    n = 500
    arrival = np.cumsum(rng.exponential(0.1, n))
    ttft = rng.gamma(2.0, 0.05, n)
    gen = rng.integers(1, 200, n)
    finish = arrival + ttft + (gen - 1) * rng.uniform(0.01, 0.03, n)
    rejected = np.where(rng.random(n) < 0.05, "kv", "")
    req = make_requests([
        dict(arrival_s=a, first_scheduled_s=a, first_token_s=a + t, finish_s=f, generated_tokens=g,
             rejected_reason=r)
        for a, t, f, g, r in zip(arrival, ttft, finish, gen, rejected, strict=True)
    ])
    itl_values = rng.uniform(0.01, 0.03, 300)
    itl_weights = rng.integers(0, 6, 300)
    s = summarize(req, itl_values, itl_weights, duration_s=float(finish.max() - arrival[0]))
    ref = vllm_reference(req, list(np.repeat(itl_values, itl_weights)), float(finish.max() - arrival[0]))
    for key, want in ref.items():
        assert s[key] == pytest.approx(want, rel=1e-10), key


def test_weighted_percentile_equals_expanded_sample():
    rng = np.random.default_rng(0)
    values = np.round(rng.exponential(1.0, 400), 2)  # rounding makes ties
    weights = rng.integers(0, 50, 400)
    q = np.linspace(0, 100, 201)
    got = weighted_percentile(values, weights, q)
    np.testing.assert_allclose(got, np.percentile(np.repeat(values, weights), q), rtol=1e-13, atol=0)
    # and the brief's inverted-CDF definition agrees wherever the expanded sample has no interpolation
    inv = np.percentile(values, [0, 100], weights=weights, method="inverted_cdf")
    np.testing.assert_allclose(got[[0, -1]], inv)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 20)), min_size=1, max_size=30)
    .filter(lambda xs: sum(w for _, w in xs) > 0),
    st.floats(0, 100),
)
def test_weighted_percentile_property(pairs, q):
    values = np.array([v for v, _ in pairs])
    weights = np.array([w for _, w in pairs])
    want = np.percentile(np.repeat(values, weights), q)
    assert weighted_percentile(values, weights, q) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_weighted_mean_std_equal_expanded():
    values, weights = np.array([0.010, 0.020, 0.050]), np.array([3, 1, 2])
    expanded = np.repeat(values, weights) * 1000
    s = latency_stats("itl", values, weights)
    assert s["mean_itl_ms"] == pytest.approx(expanded.mean(), rel=1e-12)
    assert s["std_itl_ms"] == pytest.approx(expanded.std(), rel=1e-12)
    assert s["p50_itl_ms"] == pytest.approx(np.median(expanded), rel=1e-12)


def test_nothing_completed_and_zero_duration():
    req = make_requests([dict(arrival_s=0.0, first_scheduled_s=NAN, first_token_s=NAN, finish_s=NAN,
                              generated_tokens=0, rejected_reason="too_long", replica=-1)])
    s = summarize(req, np.array([]), None, 0.0, SLO(ttft_ms=100))
    assert s["completed"] == 0 and s["rejected"] == 1
    assert math.isnan(s["mean_e2el_ms"]) and math.isnan(s["p99_ttft_ms"]) and math.isnan(s["mean_queueing_delay_ms"])
    assert math.isnan(s["request_throughput"]) and s["slo_attainment"] == 0.0
    assert math.isnan(s["prefix_cache_hit_rate"]) and math.isnan(s["usd_per_million_output_tokens"])


def test_missing_column_is_named():
    with pytest.raises(InputError) as err:
        summarize(three_plus_rejected().drop(columns=["cached_tokens"]), np.array([]), None, 1.0)
    assert err.value.column == "cached_tokens"
    # only the slowdown table needs the idle-replica E2E
    no_ideal = three_plus_rejected().drop(columns=["ideal_e2el_s"])
    assert summarize(no_ideal, np.array([]), None, 2.0)["completed"] == 3
    with pytest.raises(InputError) as err:
        slowdown_by_size(no_ideal)
    assert err.value.column == "ideal_e2el_s"


def test_timeline_time_weighted():
    tl = pd.DataFrame({
        "replica": [0, 0, 1], "start_s": [0.0, 1.0, 0.0], "end_s": [1.0, 4.0, 2.0], "steps": [1, 3, 1],
        "batch_size": [2, 4, 1], "prefill_tokens": [100, 0, 50], "decode_tokens": [1, 4, 0],
        "num_running": [2, 4, 1], "num_waiting": [0, 2, 1],
        "kv_blocks_used": [10, 40, 50], "kv_blocks_total": [100, 100, 50],
    })
    t = summarize_timeline(tl)
    assert t["iterations"] == 5 and t["busy_time_s"] == pytest.approx(6.0)
    assert t["mean_batch_size"] == pytest.approx(16 / 6)
    assert t["mean_kv_utilization"] == pytest.approx(3.3 / 6) and t["max_kv_utilization"] == 1.0
    assert t["mean_num_waiting"] == pytest.approx(8 / 6) and t["max_num_waiting"] == 2


def test_slowdown_by_size_bins():
    rows = [dict(arrival_s=0.0, first_scheduled_s=0.0, first_token_s=0.1, finish_s=float(i), input_tokens=i,
                 output_tokens=10, ideal_e2el_s=1.0) for i in range(1, 11)]
    rows[9].update(first_scheduled_s=NAN, first_token_s=NAN, finish_s=NAN, rejected_reason="x")
    t = slowdown_by_size(make_requests(rows), by="input_tokens", bins=2)
    assert t["size_min"].tolist() == [1, 6] and t["size_max"].tolist() == [5, 10]
    assert t["count"].tolist() == [5, 4] and t["rejected"].tolist() == [0, 1]
    assert t["mean_slowdown"].tolist() == pytest.approx([3.0, 7.5])
    assert t["p50_slowdown"].tolist() == pytest.approx([3.0, 7.5])
    assert t["mean_e2el_ms"].tolist() == pytest.approx([3000.0, 7500.0])
    # total = input + output shifts sizes by 10 but not the grouping
    assert slowdown_by_size(make_requests(rows), by="total", bins=2)["size_min"].tolist() == [11, 16]


def test_slowdown_degenerate_inputs():
    same = make_requests([dict(arrival_s=0.0, first_scheduled_s=0.0, first_token_s=0.1, finish_s=2.0)] * 4)
    t = slowdown_by_size(same, by="output_tokens", bins=5)
    assert len(t) == 1 and t["count"].iloc[0] == 4 and t["mean_slowdown"].iloc[0] == pytest.approx(2.0)
    assert slowdown_by_size(same.iloc[:0], bins=3).empty
    with pytest.raises(InputError):
        slowdown_by_size(same, by="latency")


def _run_tables(arrivals, finishes, waiting_rows):
    """Requests arriving and finishing at the given times, and a one-replica timeline of (start, end, waiting)."""
    n = len(arrivals)
    req = make_requests([dict(arrival_s=a, first_scheduled_s=a, first_token_s=a, finish_s=f)
                         for a, f in zip(arrivals, finishes)])
    assert len(req) == n
    tl = pd.DataFrame([dict(replica=0, start_s=s, end_s=e, steps=1, batch_size=1, prefill_tokens=0, decode_tokens=1,
                            num_running=1, num_waiting=w, kv_blocks_used=1, kv_blocks_total=10)
                       for s, e, w in waiting_rows])
    return req, tl


@pytest.mark.parametrize(("finish_lag_s", "waiting", "saturated"), [
    (0.5, 3, True),    # served 10 of 20 req/s and a queue all through: saturated
    (0.5, 0, False),   # the same shortfall with no one waiting: long requests in flight at the end
    (0.0, 3, False),   # a standing queue that is served at the offered rate
])
def test_saturation_needs_a_shortfall_and_a_queue_that_never_drained(finish_lag_s, waiting, saturated):
    arrivals = [i * 0.05 for i in range(21)]  # 20 req/s over 1 s
    finishes = [a + finish_lag_s * (1 + i) / 10 + 0.01 for i, a in enumerate(arrivals)]
    req, tl = _run_tables(arrivals, finishes, [(t / 10, (t + 1) / 10, waiting) for t in range(30)])
    duration = max(finishes) - arrivals[0]
    s = saturation(req, tl, duration)
    assert s["saturated"] is saturated
    assert s["offered_rate"] == pytest.approx(20.0) and s["served_rate"] == pytest.approx(21 / duration)
    assert s["queue_busy_fraction"] == (1.0 if waiting else 0.0)
    assert s["waiting_at_last_arrival"] == waiting
