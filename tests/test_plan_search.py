"""The rate search and the SLO limits, without a simulator: a monotone pass/fail predicate with a known edge."""

from __future__ import annotations

import math

import pytest

from servesim.errors import ConfigError
from servesim.plan.search import Limits, RateSearch


def run(search: RateSearch, threshold: float, m: int = 1) -> RateSearch:
    while rates := search.next_rates(m):
        for r in rates:
            search.record(r, r <= threshold)
    return search


@pytest.mark.parametrize("threshold", [0.013, 0.9, 1.0, 7.3, 123.4, 5000.0])
@pytest.mark.parametrize("m", [1, 3])
def test_brackets_the_edge_to_the_tolerance(threshold, m):
    s = run(RateSearch(start_rps=1.0, rel_tol=0.01), threshold, m)
    assert s.lo <= threshold < s.hi
    assert s.hi / s.lo - 1 <= 0.01


def test_bisection_needs_log_probes():
    s = run(RateSearch(start_rps=1.0, rel_tol=0.02), 37.0)
    # 7 doublings to 64, then bisection of a factor-2 bracket down to 2%: log2(ln 2 / ln 1.02) ~ 5.1 -> 6.
    assert len(s.passed) <= 7 + 6


def test_more_probes_a_round_means_fewer_rounds():
    rounds = {}
    for m in (1, 4):
        s, n = RateSearch(rel_tol=0.01), 0
        while rates := s.next_rates(m):
            n += 1
            for r in rates:
                s.record(r, r <= 41.0)
        rounds[m] = n
    assert rounds[4] < rounds[1] / 1.5


def test_infeasible_and_unbounded():
    s = run(RateSearch(start_rps=1.0, min_rps=0.01), 0.001)
    assert s.lo is None and s.hi == 0.01 and s.done
    s = run(RateSearch(start_rps=1.0, max_rps=100.0), 1e9)
    assert s.lo == 100.0 and s.hi is None and s.done


def test_estimate_remaining_is_an_upper_bound_for_bisection():
    s = RateSearch(rel_tol=0.02)
    for r in (1.0, 2.0, 4.0, 8.0):
        s.record(r, r <= 5.0)
    est = s.estimate_remaining(1)
    assert est == math.ceil(math.log2(math.log(2.0) / math.log(1.02)))
    assert len(run(s, 5.0).passed) - 4 <= est


def test_limits_parse_both_spellings():
    lim = Limits.parse("ttft_p99_ms=500, tpot_p90_ms=40,p50_e2el=9000,queueing_p99_ms=100")
    assert dict(lim.limits_ms) == {"p99_ttft_ms": 500, "p90_tpot_ms": 40, "p50_e2el_ms": 9000,
                                   "p99_queueing_delay_ms": 100}
    assert Limits.parse({"p99_ttft_ms": 1}).limits_ms == {"p99_ttft_ms": 1.0}


@pytest.mark.parametrize("text,needle", [
    ("ttft_p98_ms=5", "unknown SLO"),
    ("ttft_p99_ms=fast", "NAME=MILLISECONDS"),
    ("ttft_p99_ms", "NAME=MILLISECONDS"),
    ("ttft_p99_ms=-3", "positive"),
    ("tpot_p99_ms=50", "TTFT, E2E or queueing"),  # overload would pass
    ("", "at least one"),
])
def test_limits_errors_name_the_field(text, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        Limits.parse(text)
    assert e.value.field == "slo"


def test_failures_say_which_limit():
    lim = Limits.parse("ttft_p99_ms=500,tpot_p99_ms=50")
    assert lim.failures({"p99_ttft_ms": 400.0, "p99_tpot_ms": 50.0, "rejected": 0}) == []
    assert lim.failures({"p99_ttft_ms": 812.34, "p99_tpot_ms": 50.0, "rejected": 2}) == [
        "2 requests rejected", "p99_ttft_ms 812.3 > 500"]
    assert lim.failures({"p99_ttft_ms": float("nan"), "p99_tpot_ms": 1.0}) == ["p99_ttft_ms nan > 500"]
    assert lim.failures({"p99_ttft_ms": 1.0, "p99_tpot_ms": 1.0, "saturated": True, "served_rate": 8.0,
                         "offered_rate": 10.0}) == ["saturated: served 8 of 10 req/s offered"]
