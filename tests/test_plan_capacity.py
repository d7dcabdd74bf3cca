"""The planner against a capacity computed by hand: a constant cost model, one request at a time (D/D/1).

Every step takes C seconds whatever the batch. A request of P prompt tokens and O output tokens is one
prefill step (which emits the first token) and O - 1 decode steps: S = O C of service, TTFT = C alone,
TPOT = C always. With max_num_seqs = 1 and arrivals 1/λ apart, below λ = 1/S nobody waits; above it
request i (0-based) waits i (S - 1/λ), so TTFT_i = C + i (S - 1/λ) and, over N requests, numpy's p99 is
C + 0.99 (N - 1) (S - 1/λ). The highest rate with p99 TTFT <= L is λ* = 1 / (S - (L - C) / (0.99 (N - 1))).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.plan import plan
from servesim.sim import deployment

C, P, O, N, L = 0.01, 100, 10, 100, 0.3
S = O * C
LAMBDA_STAR = 1.0 / (S - (L - C) / (0.99 * (N - 1)))


class ConstantCost:
    """Every step C seconds, whatever the batch."""

    profile_id = "constant-10ms"

    def __init__(self, placement, *args, **kwargs) -> None:
        self.placement = placement

    def step_time_s(self, shape) -> float:
        return C

    def decode_run_s(self, shape, n: int) -> np.ndarray:
        return np.full(n, C)

    def pp_transfer_s(self, tokens: int) -> float:
        return 0.0


@pytest.fixture
def constant_cost(monkeypatch, tmp_path):
    monkeypatch.setattr(deployment, "CostModel", ConstantCost)
    trace = tmp_path / "fixed.csv"
    trace.write_text("input_tokens,output_tokens\n" + f"{P},{O}\n" * N)
    return {"trace": str(trace), "arrival": "constant", "max_num_seqs": 1, "usd_per_gpu_hour": 2.0}


def test_search_finds_the_hand_computed_capacity(constant_cost):
    # Above 1/S = 10: a window of N requests absorbs a little overload, and served/offered = 1/(S λ*) = 0.97
    # stays above the simulator's saturation line (0.95), so the TTFT limit alone decides.
    assert 10.3 < LAMBDA_STAR < 10.31
    target = 30.0
    r = plan("Llama-3.1-8B", target, {"ttft_p99_ms": L * 1000}, workload=constant_cost.pop("trace"),
             gpus=["H100-SXM"], quants=["bf16"], tps=[1], base=constant_cost, rel_tol=0.005, verify=1, jobs=1)
    row = r.configs.iloc[0]
    assert row.status == "ok"
    assert row.capacity_rps <= LAMBDA_STAR < row.capacity_upper_rps
    assert row.capacity_upper_rps / row.capacity_rps - 1 <= 0.005
    assert row.replicas == math.ceil(target / LAMBDA_STAR) == 3
    assert row.usd_per_hour == pytest.approx(3 * 2.0)
    assert row.profile_id == "constant-10ms"
    assert set(r.probes.profile_id) == {"constant-10ms"}
    # At capacity the p99 TTFT is what the formula gives at that rate.
    lam = row.capacity_rps
    assert row.p99_ttft_ms_at_capacity == pytest.approx(1000 * (C + 0.99 * (N - 1) * (S - 1 / lam)), rel=1e-9)
    # Three replicas, round robin at 30 req/s: each sees 10 req/s < 1/S, so nobody waits: TTFT = C.
    assert row.verified
    assert row.margin_p99_ttft_ms == pytest.approx(1 - C / L, rel=1e-9)


def test_rejections_say_which_slo_and_the_budget(constant_cost):
    trace = constant_cost.pop("trace")
    r = plan("Llama-3.1-8B", 30.0, "ttft_p99_ms=300,tpot_p99_ms=5", workload=trace, gpus=["H100-SXM"],
             quants=["bf16"], tps=[1], base=constant_cost, verify=0, jobs=1)
    row = r.configs.iloc[0]
    assert (row.status, row.reject_kind) == ("rejected", "slo")
    assert "p99_tpot_ms 10 > 5" in row.reason and "lowest rate tried" in row.reason
    r = plan("Llama-3.1-8B", 30.0, "ttft_p99_ms=300", workload=trace, gpus=["H100-SXM"], quants=["bf16"],
             tps=[1, 2], base=constant_cost, budget_usd_per_hour=3.5, verify=0, jobs=1)
    by_tp = r.configs.set_index("tp")
    # tp1 is searched and needs 3 replicas at $2; tp2's one replica already costs 2 x $2, so it is never searched.
    assert by_tp.loc[1, "reject_kind"] == "budget" and "3 replicas cost $6.00/h" in by_tp.loc[1, "reason"]
    assert by_tp.loc[1, "probes"] > 0
    assert by_tp.loc[2, "reject_kind"] == "budget" and "one replica costs $4.00/h" in by_tp.loc[2, "reason"]
    assert by_tp.loc[2, "probes"] == 0
    assert r.cheapest().empty


def test_memory_rejection_names_the_planners_numbers():
    r = plan("Llama-3.1-70B", 5.0, "ttft_p99_ms=2000", gpus=["H100-SXM", "A100-80GB-SXM"], quants=["bf16"],
             tps=[1], verify=0, jobs=1)
    assert list(r.configs.reject_kind) == ["memory", "memory"]
    assert all("141.1 GB of weights" in reason for reason in r.configs.reason)
    assert r.probes.empty  # nothing was simulated


def test_tp_that_does_not_divide_the_heads_is_a_config_rejection():
    r = plan("Llama-3.1-8B", 5.0, "ttft_p99_ms=2000", gpus=["H100-SXM"], quants=["bf16"], tps=[3], verify=0, jobs=1)
    assert r.configs.reject_kind.iloc[0] == "config" and "tp=3" in r.configs.reason.iloc[0]


class FakeRunner:
    """A deployment passes the SLO from ``needs`` replicas on; records what it was asked to run."""

    def __init__(self, needs: int) -> None:
        self.needs, self.asked = needs, []

    def run(self, scenarios):
        from servesim.plan.execute import Outcome

        self.asked += [s.replicas for s in scenarios]
        return [Outcome({"status": "ok", "rejected": 0, "rate": s.rate, "replicas": s.replicas,
                         "p99_ttft_ms": 100.0 if s.replicas >= self.needs else 900.0}, 0.0, 0.0, False)
                for s in scenarios]


def _candidate(replicas: int):
    from servesim.plan.capacity import Candidate
    from servesim.sim.config import Scenario

    c = Candidate(0, Scenario(num_requests=100), "H100-SXM bf16 tp1", status="ok")
    c.result.update(replicas=replicas, gpus_per_replica=1, usd_per_hour_per_gpu=3.0, usd_per_hour=3.0 * replicas,
                    usd_per_million_output_tokens=1.0, capacity_rps=10.0)
    return c


def test_verification_adds_replicas_until_the_deployment_holds_and_respects_the_budget():
    from servesim.plan.capacity import _verify_cheapest
    from servesim.plan.search import Limits

    lim = Limits.parse("ttft_p99_ms=500")
    c, runner = _candidate(2), FakeRunner(needs=4)
    rows = _verify_cheapest([c], 20.0, lim, 1, runner, None)
    assert runner.asked == [2, 3, 4] and [r["passed"] for r in rows] == [False, False, True]
    assert c.result["replicas"] == 4 and c.result["usd_per_hour"] == 12.0 and c.result["verified"]
    assert c.result["margin_p99_ttft_ms"] == pytest.approx(0.8)
    assert c.result["usd_per_million_output_tokens"] == pytest.approx(2.0) and c.result["headroom"] == 1.0
    c = _candidate(2)
    _verify_cheapest([c], 20.0, lim, 1, FakeRunner(needs=4), 10.0)
    assert c.status == "rejected" and c.reject_kind == "budget" and "$12.00/h" in c.reason
    c = _candidate(2)
    _verify_cheapest([c], 20.0, lim, 1, FakeRunner(needs=99), None)
    assert c.reject_kind == "slo" and "5 replicas at 20 req/s still fail: p99_ttft_ms 900 > 500" in c.reason
