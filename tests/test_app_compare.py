"""The Compare page under AppTest: latency-vs-rate curves and slowdown bars are the simulated numbers of each
variant at each rate, SLO lines are drawn, and bad inputs are messages."""

from __future__ import annotations

import pytest
from app_testing import figures, ok, page, trace

from servesim.app import analysis
from servesim.sim.config import make_scenario
from servesim.sim.simulator import simulate

REQUESTS = 150
RATES = (10.0, 40.0)


def _run(**changes):
    return simulate(make_scenario({"num_requests": REQUESTS, "slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0, **changes}))


@pytest.fixture(scope="module")
def compare():
    at = ok(page("compare").run())
    at.text_input(key="compare.rates").set_value(", ".join(f"{r:g}" for r in RATES))
    at.multiselect(key="compare.values.policy").set_value(["fcfs", "sjf"])
    at.number_input(key="compare.num_requests.True").set_value(REQUESTS)
    return ok(at.run())


def test_latency_vs_rate_is_each_policys_simulation(compare):
    figs = figures(compare)
    for metric in ("TTFT", "TPOT", "E2E"):
        assert f"{metric} vs offered rate" in figs
    ttft = figs["TTFT vs offered rate"]
    for policy in ("fcfs", "sjf"):
        expected = [_run(policy=policy, rate=r).summary for r in RATES]
        p99 = trace(ttft, f"{policy} p99")
        assert list(p99["x"]) == list(RATES)
        assert list(p99["y"]) == pytest.approx([s["p99_ttft_ms"] for s in expected])
        assert list(trace(figs["E2E vs offered rate"], f"{policy} p50")["y"]) == \
            pytest.approx([s["p50_e2el_ms"] for s in expected])
    assert list(trace(ttft, "SLO 500 ms")["y"]) == [500.0, 500.0]
    assert list(trace(figs["TPOT vs offered rate"], "SLO 50 ms")["y"]) == [50.0, 50.0]
    assert not [t for t in figs["E2E vs offered rate"]["data"] if t["name"].startswith("SLO")]  # no E2E limit


def test_slowdown_by_size_at_the_chosen_rate(compare):
    at_rate = {p: _run(policy=p, rate=RATES[-1]) for p in ("fcfs", "sjf")}
    expected = analysis.slowdown_table(at_rate)
    fig = figures(compare)["Slowdown by request size (p50)"]
    for policy in ("fcfs", "sjf"):
        rows = expected[expected.variant == policy]
        assert list(trace(fig, policy)["y"]) == pytest.approx(list(rows["p50_slowdown"]))
    # At 40 req/s (past what one H100 serves) SJF serves the shortest fifth of the requests faster than FCFS.
    short = expected[expected["bin"] == 0].set_index("variant")["mean_slowdown"]
    assert short["sjf"] < short["fcfs"]
    compare.select_slider(key="compare.slowdown_rate").set_value(RATES[0])
    ok(compare.run())
    low = analysis.slowdown_table({p: _run(policy=p, rate=RATES[0]) for p in ("fcfs", "sjf")})
    fig = figures(compare)["Slowdown by request size (p50)"]
    assert list(trace(fig, "fcfs")["y"]) == pytest.approx(list(low[low.variant == "fcfs"]["p50_slowdown"]))


def test_compare_by_tp_labels_and_failures():
    at = ok(page("compare").run())
    at.selectbox(key="compare.by").set_value("tp")
    at.run()
    at.multiselect(key="compare.values.tp").set_value([1, 8])
    at.text_input(key="compare.rates").set_value("20")
    at.number_input(key="compare.num_requests.True").set_value(60)
    ok(at.run())
    fig = figures(at)["TTFT vs offered rate"]
    assert {t["name"] for t in fig["data"]} == {"tp=1 p50", "tp=1 p99", "tp=8 p50", "tp=8 p99", "SLO 500 ms"}
    s = _run(tp=8, rate=20.0, num_requests=60).summary
    assert list(trace(fig, "tp=8 p99")["y"]) == pytest.approx([s["p99_ttft_ms"]])
    at.selectbox(key="compare.model").set_value("Llama-3.1-70B")
    ok(at.run())
    assert [w.value for w in at.warning] == [w.value for w in at.warning if w.value.startswith("tp=1 cannot run:")]
    assert len(at.warning) == 1 and "needs" in at.warning[0].value
    assert {t["name"] for t in figures(at)["TTFT vs offered rate"]["data"]} == {"tp=8 p50", "tp=8 p99", "SLO 500 ms"}


@pytest.mark.parametrize("rates, needle", [("ten", "rates must be numbers"), ("5, -1", "give one or more rates > 0")])
def test_bad_rates_are_a_message(rates, needle):
    at = ok(page("compare").run())
    at.text_input(key="compare.rates").set_value(rates)
    ok(at.run())
    assert needle in at.error[0].value and not at.get("plotly_chart")
