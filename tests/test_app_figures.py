"""The dashboard's plotly figures carry the numbers they are built from (servesim.app.figures)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servesim.app import analysis, figures


def test_cdf_is_sorted_ends_at_one_and_drops_nans():
    fig = figures.cdf({"a": [3.0, 1.0, np.nan, 2.0], "b": [5.0]}, "TTFT CDF", limit=2.5)
    a, b = fig.data
    np.testing.assert_array_equal(a.x, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(a.y, [1 / 3, 2 / 3, 1.0])
    assert list(b.y) == [1.0]
    assert [s.x0 for s in fig.layout.shapes] == [2.5]  # the SLO as a vertical line
    assert not figures.cdf({"a": [1.0]}, "x").layout.shapes


def test_latency_over_time_has_p50_and_p99_per_metric_and_slo_lines():
    binned = pd.DataFrame({"t_s": [1.0, 2.0], "requests": [3, 4], "p50_ttft_ms": [10.0, 20.0],
                           "p99_ttft_ms": [30.0, 40.0], "p50_e2el_ms": [100.0, 200.0], "p99_e2el_ms": [300.0, 400.0]})
    fig = figures.latency_over_time(binned, slo_ttft_ms=35.0, slo_e2el_ms=None)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"p50 TTFT", "p99 TTFT", "p50 E2E", "p99 E2E"}
    assert list(by_name["p99 E2E"].y) == [300.0, 400.0]
    assert [s.y0 for s in fig.layout.shapes] == [35.0]


def test_timelines_show_batch_kv_percent_and_queue():
    binned = pd.DataFrame({"t_s": [0.5], "batch_size": [7.0], "num_running": [7.0], "num_waiting": [2.0],
                           "kv_used_frac": [0.25], "tokens_per_s": [100.0]})
    by_name = {t.name: t for t in figures.timelines(binned).data}
    assert list(by_name["KV used %"].y) == [25.0]
    assert list(by_name["waiting"].y) == [2.0] and list(by_name["batch size"].y) == [7.0]


def test_step_breakdown_stacks_one_bar_per_operator():
    rows = pd.DataFrame({"step": ["p", "p", "d"], "operator": ["qkv", "attn", "qkv"], "ms": [1.0, 2.0, 0.5],
                         "bound": ["compute", "compute", "memory"]})
    fig = figures.step_breakdown(rows)
    assert fig.layout.barmode == "stack"
    qkv = next(t for t in fig.data if t.name == "qkv")
    assert list(qkv.y) == ["p", "d"] and list(qkv.x) == [1.0, 0.5]


def test_memory_bar_sums_to_the_parts():
    rows = pd.DataFrame({"part": ["weights", "KV cache"], "GB": [16.0, 50.0]})
    fig = figures.memory(rows, 80.0)
    assert sum(t.x[0] for t in fig.data) == 66.0 and "80.0 GB" in fig.layout.title.text


def test_metric_vs_rate_draws_each_variant_sorted_by_rate_with_the_slo():
    table = pd.DataFrame({"variant": ["fcfs", "fcfs", "sjf"], "rate": [20.0, 10.0, 10.0],
                          "p50_ttft_ms": [2.0, 1.0, 1.5], "p99_ttft_ms": [20.0, 10.0, 12.0]})
    fig = figures.metric_vs_rate(table, "ttft", limit_ms=15.0)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["fcfs p99"].x) == [10.0, 20.0] and list(by_name["fcfs p99"].y) == [10.0, 20.0]
    assert by_name["fcfs p50"].line.dash == "dot" and by_name["sjf p99"].line.color != by_name["fcfs p99"].line.color
    assert list(by_name["SLO 15 ms"].y) == [15.0, 15.0] and list(by_name["SLO 15 ms"].x) == [10.0, 20.0]
    assert fig.layout.yaxis.type == "log" and not fig.layout.annotations


def test_slowdown_groups_variants_over_the_same_size_bins():
    table = pd.DataFrame({"variant": ["fcfs", "fcfs", "sjf", "sjf"], "size_min": [1, 100] * 2,
                          "size_max": [99, 1000] * 2, "count": [5, 5, 5, 5], "p50_slowdown": [3.0, 1.5, 1.2, 2.5]})
    fig = figures.slowdown(table)
    assert [t.name for t in fig.data] == ["fcfs", "sjf"]
    assert list(fig.data[1].x) == ["1–99", "100–1,000"] and list(fig.data[1].y) == [1.2, 2.5]


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_operator_sweep_stacks_operators_on_a_log_axis(kind):
    rows = pd.DataFrame({"size": [1, 1, 8, 8], "operator": ["a", "b", "a", "b"], "ms": [1.0, 2.0, 3.0, 4.0],
                         "bound": ["memory"] * 4, "total_ms": [3.0, 3.0, 7.0, 7.0]})
    fig = figures.operator_sweep(rows, kind)
    assert fig.layout.xaxis.type == "log" and {t.stackgroup for t in fig.data} == {"ops"}
    assert list(fig.data[1].y) == [2.0, 4.0]


def test_empty_inputs_give_empty_tables():
    empty = pd.DataFrame(columns=["replica", "start_s", "end_s", "steps", "batch_size", "prefill_tokens",
                                  "decode_tokens", "num_running", "num_waiting", "kv_blocks_used", "kv_blocks_total"])
    assert analysis.binned_timeline(empty).empty
    assert len(figures.timelines(analysis.binned_timeline(empty)).data) == 4


def test_validation_errors_are_percent_per_statistic_with_bounds():
    metrics = pd.DataFrame({"metric": ["ttft", "ttft", "tpot", "output_throughput"], "stat": ["mean", "p99", "p99", ""],
                            "predicted": [10.0, 20.0, 5.0, 100.0], "measured": [10.0, 19.0, 5.5, 90.0],
                            "error": [0.0, 20 / 19 - 1, 5 / 5.5 - 1, 100 / 90 - 1]})
    fig = figures.validation_errors(metrics, bound=0.03)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"TTFT", "TPOT"}  # throughput rows have no statistic
    assert list(by_name["TTFT"].x) == ["mean", "p99"] and list(by_name["TTFT"].y) == pytest.approx([0.0, 100 / 19])
    assert sorted(s.y0 for s in fig.layout.shapes) == [-3.0, 3.0]


def test_predicted_vs_measured_has_the_diagonal():
    it = pd.DataFrame({"step_s": [0.01, 0.02], "predicted_s": [0.011, 0.018], "prefill_tokens": [0, 512],
                       "decode_seqs": [8, 0]})
    pts, diag = figures.predicted_vs_measured(it).data
    assert list(pts.x) == pytest.approx([10.0, 20.0]) and list(pts.y) == pytest.approx([11.0, 18.0])
    assert list(diag.x) == [0, 20.0] and list(diag.y) == [0, 20.0]
