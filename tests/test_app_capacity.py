"""The Capacity page under AppTest: the search runs on the button, its answer and Pareto charts are those of
`servesim.plan.plan` asked the same question, rejections say why, and a changed question asks for a new search."""

from __future__ import annotations

import pytest
from app_testing import figures, metrics, ok, page, trace

from servesim.app import inputs
from servesim.plan import plan
from servesim.plan.pareto import cost_frontier, throughput_frontier

QUESTION = dict(model="Llama-3.1-70B", rate=4.0, slo={"ttft_p99_ms": 5000.0, "tpot_p99_ms": 100.0},
                workload="azure-conv", gpus=["H200", "A100-80GB-SXM"], quants=["bf16", "w4a16"], tps=[1],
                base={"num_requests": 80}, budget_usd_per_hour=None, verify=1)


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "store_dir", lambda: tmp_path / "store")


def _ask(at, budget=None):
    at.selectbox(key="capacity.model").set_value(QUESTION["model"])
    at.number_input(key="capacity.target").set_value(QUESTION["rate"])
    at.number_input(key="capacity.ttft").set_value(QUESTION["slo"]["ttft_p99_ms"])
    at.number_input(key="capacity.tpot").set_value(QUESTION["slo"]["tpot_p99_ms"])
    at.multiselect(key="capacity.gpus").set_value(QUESTION["gpus"])
    at.multiselect(key="capacity.quants").set_value(QUESTION["quants"])
    at.multiselect(key="capacity.tps").set_value(QUESTION["tps"])
    at.number_input(key="capacity.num_requests.True").set_value(QUESTION["base"]["num_requests"])
    at.number_input(key="capacity.verify").set_value(QUESTION["verify"])
    at.number_input(key="capacity.jobs").set_value(1)
    if budget is not None:
        at.number_input(key="capacity.budget").set_value(budget)
    ok(at.run())
    at.button(key="capacity.go").click()
    return ok(at.run())


@pytest.fixture(scope="module")
def expected():
    return plan(**QUESTION, jobs=1)


def test_nothing_runs_before_the_button():
    at = ok(page("capacity").run())
    assert "12 candidate configurations of Llama-3.1-8B for 20 req/s" in at.caption[0].value
    assert not at.metric and not at.get("plotly_chart")


def test_answer_and_frontiers_are_the_planners(expected):
    at = _ask(ok(page("capacity").run()))
    best = expected.cheapest(1).iloc[0]
    shown = metrics(at)
    assert best["label"].endswith("w4a16 tp1") and at.subheader[0].value == f"Cheapest: {best['label']}"
    assert shown["$ per hour"] == f"{best['usd_per_hour']:,.2f}"
    assert shown["Capacity per replica (req/s)"] == f"{best['capacity_rps']:,.2f}"
    assert shown["Replicas × GPUs"] == f"{int(best['replicas'])} × 1"
    figs = figures(at)
    tf = throughput_frontier(expected.probes)
    frontier = trace(figs["Throughput vs interactivity"], "Pareto frontier")
    assert sorted(frontier["x"]) == pytest.approx(sorted(tf.loc[tf.on_frontier, "per_user"]))
    cf = cost_frontier(expected.probes, 4.0, "p99_ttft_ms")
    points = trace(figs["Cost to serve 4 req/s vs latency"], best["label"])
    assert sorted(points["y"]) == pytest.approx(sorted(cf.loc[cf.label == best["label"], "latency_ms"]))
    # bf16 70B (141 GB of weights) fits on neither GPU at TP 1: rejected for memory, with the planner's reason.
    rejected = at.dataframe[-1].value
    assert set(rejected["label"]) >= {"H200 bf16 tp1", "A100-80GB-SXM bf16 tp1"}
    assert set(rejected.loc[rejected.label.str.contains("bf16"), "reject_kind"]) == {"memory"}
    assert "probes in" in at.caption[1].value and "roofline" in at.caption[1].value

    at.number_input(key="capacity.target").set_value(5.0)
    ok(at.run())
    assert "The question changed" in at.info[0].value and not at.metric


def test_a_budget_below_every_candidate_rejects_them_all():
    at = _ask(ok(page("capacity").run()), budget=0.5)
    assert "No configuration serves the target" in at.warning[0].value
    rejected = at.dataframe[-1].value
    assert set(rejected.loc[~rejected.label.str.contains("bf16"), "reject_kind"]) == {"budget"}


@pytest.mark.parametrize("field,value,words", [("pd", "2-1", "field 'pd'"), ("ep", "2", "field 'ep'")])
def test_pd_and_ep_reach_the_planner_which_refuses_bad_ones_before_running(field, value, words):
    at = ok(page("capacity").run())
    at.text_input(key=f"capacity.{field}").set_value(value)  # Llama-3.1-8B: no experts for ep 2
    ok(at.run())
    at.button(key="capacity.go").click()
    at = ok(at.run())
    assert words in at.error[0].value and not at.metric
